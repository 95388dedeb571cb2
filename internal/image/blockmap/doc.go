// Package blockmap is the block-mapped core that image formats whose
// guest disk is cut into fixed-size blocks, each found through a table
// entry, sit on: vhd, vdi, vhdx and vmdk (qcow2, with its refcounts, L2
// cache and snapshots, stays its own).
//
// A Map serves the blockdev.Device (with Trimmer, ZeroWriter, Extenter
// and Describer) over an image.File. The format reads and checks its
// header, loads its table (the on-disk bytes, bounded by the format
// against the virtual size and the file size before anything is
// allocated) and hands both to New with a Codec: how an entry is encoded,
// where a new block goes and what is written with it. The Map keeps the
// table in memory as those bytes (so memory is what the table takes on
// disk), splits every request into per-block pieces in one loop, and
// serves each piece by the block's state:
//
//   - Unallocated: no storage; reads come from the parent layer through
//     image.ReadParent (zeroes without one);
//   - Zero: reads as zeroes whatever the parent holds;
//   - Data: the whole block is in the file at Entry.Off;
//   - Partial: the block has storage at Entry.Off and a sector bitmap
//     (where the Codec's BitmapAt says) tells which sectors are in the
//     file; the others come from the parent.
//
// # Allocation and crash safety
//
// A write to a block without storage allocates it under the Map's one
// mutex: the Codec places it at the end of what is allocated, the file is
// cut there and extended (so the block reads as zeroes whatever a crash
// left behind), and in a layered image the part of a Data block the write
// does not cover is first copied up from the parent. Table entries,
// sector bitmaps and the format's own metadata (Codec.Commit: VHD's
// footer at the new end, VDI's allocated count) reach the file only at
// Flush, in this order: sync the data; write bitmaps, the bytes placed
// with new blocks and Commit; sync; write the changed table units (and
// only those); sync. A crash before a Flush loses unflushed writes and
// leaves at most unreferenced space at the end of the file.
//
// # Errors of partial I/O
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: n < len(p) only
// with an error. A request is served piece by piece in order, and n is
// the length of the prefix of p whose pieces were all fully transferred;
// bytes of p past n may or may not have reached the image (a write) or
// been filled (a read). A range outside the disk, a closed Map or a write
// to a read-only one transfers nothing (n = 0).
//
// # Concurrency
//
// Every method is safe for concurrent use. The mutex guards the table,
// the bitmaps and the allocator; data of Data blocks moves outside it.
// Allocations (with their copy-up) and writes that change a sector bitmap
// run under it, so no reader sees a block before its bytes are there.
//
// # How vhdx and vmdk map onto it
//
// VHDX: the BAT is the table; Codec.Get and Put map payload block blk to
// entry blk + blk/chunkRatio (the sector-bitmap entries interleaved every
// chunk ratio entries are skipped) and decode the 3-bit state: FULLY
// PRESENT is Data, PARTIALLY PRESENT is Partial, ZERO is Zero, NOT
// PRESENT / UNMAPPED / UNDEFINED are Unallocated in a differencing disk
// (read from the parent) and Zero otherwise. Unit is 4096 (the BAT is
// rewritten in 4 KiB sectors). Place puts a 1 MiB-aligned block at the
// end; in a differencing disk it returns Partial and BitmapAt returns the
// block's slice of its chunk's sector-bitmap block (placing that block
// first when the chunk has none, and naming that entry in
// Placement.Also so its BAT sector is written with the block's), with
// LSBFirst bits and SectorSize the logical sector size; the bitmap
// blocks are Reserved spans, which New checks the payload blocks against
// (the format checks them against each other). Commit writes nothing;
// the headers' new write GUIDs before the first change come from
// Config.BeforeWrite.
//
// VMDK: one Map per sparse extent, over that extent's File (Borrowed:
// the image closes the files and the parent), and the image's loop over
// extents hands each piece to its extent's Map; ParentOff is the
// extent's start, so reads from the parent and its extents land where
// the disk has them. Flat and ZERO extents need no map. A sparse
// extent's table is its grain tables side by side in guest order, Unit
// one grain table, and Lazy: a table of 64 TiB of 64 KiB grains is 4 GiB,
// so units are loaded when first needed through the Codec's Loader (which
// checks that their grains lie in the data area), and clean ones dropped
// past maxUnits; New checks no entries then. Get decodes 0 as
// Unallocated, 1 (with the zeroed-grain flag) as Zero and a sector as
// Data (SectorSize is the grain, so no Partial blocks); with a parent
// the extent is Layered and new grains are copied up. Its Codec
// implements Locator, whose TableAt gives a unit's file offsets (the
// grain directory's entry and the redundant directory's), and Place,
// when the grain's table does not exist, puts the new grain table (and
// its copy) at end and the grain after it, recording them in the
// directories that Commit writes. A new table reads as zeroes until
// Flush writes it (everything the core allocates does), so a directory
// that reaches the file first points at a table of unallocated grains.
// Compressed grains (streamOptimized extents, read-only) stay outside
// the core: the format looks their entries up through the Map (Lookup)
// and decompresses them itself.
//
// # Block status
//
// A Map is an image.Layer: LayerStatus says what qemu's block status of
// the format says of a run (so that image.Map equals qemu-img map), by
// the Config's StatusRules. A call describes blocks of one state (data
// blocks while they follow each other in the file) or the sectors of a
// partial block that are all in the file or all not: data at its file
// offset, zero blocks as allocated zeroes, unallocated blocks as the
// parent's runs, or, by the rules, as allocated zeroes of the image's own
// (qemu's vpc and vdi), as zeroes without a parent (vmdk). Recurse
// refines data over holes of a local file as zeroes that stay data
// (qemu's BDRV_BLOCK_RECURSE: a fixed VHD, a static VDI, a flat vmdk
// extent); Compressed data has no offset; Whole reports every run as
// data at no offset (qemu has no block status for vhdx, whose
// differencing disks, which qemu cannot open, report their blocks).
package blockmap
