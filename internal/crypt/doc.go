// Package crypt encrypts the sectors of an inner blockdev.Device: the
// userspace counterpart of dm-crypt, so that LUKS volumes (package
// crypt/luks) work where device-mapper does not and over any format or
// backend.
//
// A Device built by New presents the plaintext view of a payload that starts
// at a byte offset of the inner device. Every encryption sector (512 or 4096
// bytes) is encrypted independently with one of the ciphers NewCipher knows:
// AES-XTS with plain64 IVs (the LUKS default, 256- and 512-bit keys) and
// AES-CBC with ESSIV:SHA256 or plain64 IVs (older LUKS1 volumes). IVs count
// 512-byte sectors from the start of the payload plus an IV offset, as
// dm-crypt does without iv_large_sectors, so volumes are interchangeable with
// cryptsetup.
//
// # Example
//
//	c, err := crypt.NewCipher("aes-xts-plain64", key)
//	if err != nil { ... }
//	d, err := crypt.New(inner, crypt.Config{Cipher: c, SectorSize: 4096, Offset: 16 << 20})
//	if err != nil { ... }
//	defer d.Close() // closes inner too
//
// # Threat model
//
// What this package protects: the confidentiality of data at rest. Someone
// who obtains the inner storage (a stolen disk image, a backup, an object
// store bucket) but not the key learns nothing about the plaintext of a
// sector beyond what follows from the points below.
//
// What it does not protect:
//
//   - Integrity and authenticity. XTS and CBC are unauthenticated: whoever
//     can write the inner storage can replace a sector with random bytes
//     (the reader sees garbage, undetected), restore an older copy of a
//     sector (replay), or, with CBC, flip chosen bits of the following
//     16-byte block at the cost of garbling one block. Nothing is detected.
//   - Traffic analysis. An observer who sees the inner storage over time
//     learns which sectors change and when; equal plaintexts written to the
//     same sector at different times give equal ciphertexts (the encryption
//     is deterministic per sector).
//   - Discards. With Config.AllowDiscards a Trim reaches the inner device,
//     which may release the storage or zero it: the inner storage then shows
//     which ranges are unused, which can reveal the filesystem type, its
//     layout and how full it is. Without AllowDiscards (the default, as in
//     cryptsetup) a Device is not a blockdev.Trimmer.
//   - Allocation. Which ranges of the inner storage were never written
//     (holes of a sparse file, unallocated clusters of an image) stays
//     visible to whoever holds it, as with dm-crypt. The Device itself never
//     reports a range as zero or a hole (it is not a blockdev.Extenter).
//   - A live system. Keys are in process memory while a Device is open.
//     Config keys are copied and the copies are zeroed by Close, but the
//     expanded AES key schedules live inside crypto/aes, which Go gives no
//     way to wipe; a core dump or swap may contain them.
//
// # Zero sectors
//
// A sector whose ciphertext on the inner device is all zeroes reads as
// zeroes, not as its decryption (which is what dm-crypt returns). The inner
// device holds zeroes exactly where it was discarded or never written, so a
// discarded range reads back as zeroes, as blockdev.Trimmer promises, and a
// fresh sparse volume reads as zeroes. Real data encrypts to an all-zero
// sector with probability 2^-4096; someone who can write the inner storage
// can zero a sector, and then reads see zeroes instead of garbage, which
// the lack of integrity above already allows. Writes always store the
// encryption, so a volume stays readable by cryptsetup.
package crypt
