// Package luks reads, creates and unlocks LUKS1 and LUKS2 volumes, the
// on-disk formats of cryptsetup, and opens their data as a crypt Device:
// encrypted disks in userspace, over any format or backend, where
// device-mapper is not available.
//
// References: the LUKS2 On-Disk Format Specification (version 1.1.x) and
// the LUKS1 On-Disk Format Specification (1.2.3), both in cryptsetup's
// documentation; cryptsetup 2.6 is the oracle of the tests.
//
// # What is supported
//
//   - LUKS2: both binary header copies with their checksums (sha256, sha1,
//     sha512), the secondary copy used when the primary is damaged (and
//     both written again on the next change), the JSON metadata parsed with
//     bounds; keyslots of type luks2 with argon2id, argon2i or pbkdf2 and
//     the anti-forensic splitter (luks1 AF, 4000 stripes, sha1/sha256/
//     sha512); pbkdf2 digests; one segment of type crypt with a fixed or
//     dynamic size, any sector size from 512 to 4096 and an iv_tweak.
//     Tokens are kept and listed, never used: unlock with a passphrase.
//   - LUKS1: the phdr, 8 keyslots, pbkdf2 with its hash spec, the AF
//     splitter.
//   - Ciphers: those of crypt.NewCipher (aes-xts-plain64, aes-cbc-essiv:
//     sha256, ...).
//
// Refused by name, with ErrUnsupported: other ciphers, integrity profiles
// (dm-integrity), keyslot types other than luks2 (an interrupted
// reencryption), more than one segment, mandatory requirements, digest
// types other than pbkdf2, detached LUKS1 headers.
//
// # Example
//
//	dev, _ := blockdev.OpenFile("secret.img", blockdev.FileOptions{})
//	v, err := luks.Load(dev)
//	if err != nil { ... }            // ErrNotLUKS, ErrCorrupt, ...
//	d, slot, err := v.Open(pass, luks.OpenOptions{})
//	if errors.Is(err, luks.ErrWrongPassphrase) { ... }
//	if errors.Is(err, luks.ErrLimit) { ... } // a keyslot's KDF asks too much
//	defer d.Close()                  // closes dev too
//
// # Hostile headers
//
// A header is untrusted input. Load bounds what it reads before
// allocating: a LUKS2 header copy is at most 4 MiB (the sizes LUKS2
// allows), its JSON sections are counted while decoded (at most 64 objects
// each, 32 keyslots and tokens, lists of at most 64 strings), keyslots_size
// is at most 128 MiB (as cryptsetup), key sizes at most 512 bytes, AF
// stripes at most 4000 (so key material is at most 2 MB), LUKS1 offsets
// within the device. Unlocking checks each keyslot's KDF against Limits
// (argon2 memory, threads and work, PBKDF2 iterations of the keyslot and of
// the volume key digest) before deriving anything, and that its key
// material and the data segment lie within the device; keyslots are tried
// one at a time, and a context stops unlocking between them:
//
//	d, err := luks.OpenContext(ctx, dev, pass, luks.OpenOptions{Limits: luks.Limits{Argon2MemoryKiB: 4 << 20}})
//	if errors.Is(err, luks.ErrLimit) { ... } // names keyslot, parameter, value, limit
//
// # Secrets
//
// Passphrases are the caller's; it should clear them after use. Volume
// keys, derived keys and decrypted key material are cleared by this
// package as soon as it is done with them. What Go does not let it clear:
// the AES key schedules inside crypto/aes, the passphrase copy crypto/pbkdf2
// makes (it takes a string), argon2's memory, and copies the garbage
// collector may have moved. A wrong passphrase costs exactly the KDFs of
// the keyslots tried (each within Limits), nothing more.
//
// # Concurrency
//
// A Volume is for one goroutine. Changing a header (AddKey, RemoveKey,
// ChangeKey, KillSlot, Format) must not race with another process changing
// it: callers hold the image's lock (blockdev.OpenFile takes a flock, which
// cryptsetup respects too).
package luks
