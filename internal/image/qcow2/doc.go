// Package qcow2 reads and writes qcow2 images (versions 2 and 3, as
// docs/interop/qcow2.txt in the qemu repository describes them) as
// blockdev Devices.
//
// An Image serves reads and writes from many goroutines at once. One mutex
// (mu) guards the metadata: the L1 table, the L2 and refcount-block caches,
// the refcount table and the allocator; data is read and written outside it,
// so requests on different clusters proceed in parallel. A guest cluster that
// is being allocated is marked in flight, and other writers of that cluster
// wait for it.
//
// Metadata reaches the file in an order that keeps the image consistent:
// data and refcount increments first, then L2 tables, then the L1 table, and
// only then are freed clusters released. A crash at any point leaves at most
// leaked clusters.
//
// Images qemu-img makes are read whatever their options: versions 2 and 3,
// 512-byte to 2 MiB clusters, 1- to 64-bit refcounts, zero clusters,
// zlib and zstd compressed clusters, extended L2 entries (subclusters),
// internal snapshots (listed by InfoFile, kept intact by writes), persistent
// bitmaps (marked in use before the first write), and backing chains
// (opened by image.OpenBacking through the OpenOptions' Names, with the
// recorded format). Encrypted images and external data files are
// described by InfoFile but refused by OpenFile. An image is an
// image.File, so it may live in a local file or an object store alike.
// Every table offset and size is checked against the file, and the L1
// and refcount tables against what the virtual size and the file need,
// before anything is allocated; errors wrap blockdev.ErrCorrupt and name
// the header field.
//
// An image left dirty by a crash with lazy refcounts has its refcounts
// rebuilt when it is opened for writing. CheckFile verifies an image the way
// qemu-img check does and can repair leaks.
//
// Beyond reading and writing, an Image does what qemu-img does to images:
// internal snapshots (CreateSnapshot, ApplySnapshot, DeleteSnapshot, as
// qemu-img snapshot -c/-a/-d), growing (Resize) and compressed clusters
// (WriteCompressed, for convert -c).
package qcow2
