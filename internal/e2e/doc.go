// Package e2e holds the end-to-end tests of vdisk: they build the real
// binary once, run it as a person would (open, mkfs, mount, close, kill
// the daemon) against the real kernel's loop and FUSE drivers, and check
// the results with the real tools (mkfs.ext4, e2fsck, fio, blkdiscard).
// They need root; each test has its own socket and state directory, and
// cleans up (close --all, stop the daemon, unmount) even when it fails.
package e2e
