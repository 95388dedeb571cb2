package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt"
	"vdisk/internal/image"
	"vdisk/internal/storage/objstore/s3"
)

// This file composes the two stacks that put a qcow2 overlay above an
// image the stack opened itself:
//
//   - Options.Snapshot (qemu-nbd -s): the image, opened read-only, under a
//     throw-away overlay in an unlinked temporary file. Writes land in the
//     overlay, reads see them, the image is never written, and the overlay
//     goes with the last descriptor of its file: close, SIGTERM, kill -9
//     alike. Above a LUKS volume the overlay holds decrypted data, so its
//     file is encrypted with a random key that lives only in memory.
//   - Options.Base: a qcow2 overlay file the user keeps, over a base of any
//     format vdisk reads (local or s3://), made when missing.
//
// In both the base is an opened Device handed to qcow2
// (image.OpenOptions.Backing): it went through the whole stack (LUKS,
// object store, its own backing chain under the trust policy), which a
// backing file name qcow2 opened itself could not.

// snapshotPrefix starts the name of an overlay file while it has one: only
// where the file system refuses O_TMPFILE, between create and unlink.
const snapshotPrefix = ".vdisk-snapshot-"

// Test hooks: noTmpfile makes createOverlayFile take the create-and-unlink
// path; overlayMade, when set, hears of every overlay file made.
var (
	noTmpfile   bool
	overlayMade func(*os.File)
)

// SnapshotDir is the directory of throw-away overlays when dir is "":
// $TMPDIR, else /tmp.
func SnapshotDir(dir string) string {
	if dir == "" {
		return os.TempDir()
	}
	return dir
}

// createOverlayFile makes an unlinked file in dir: O_TMPFILE, which never
// has a name, where the file system allows it; else a new name that is
// removed at once (SweepSnapshots clears what a crash between the two
// leaves).
func createOverlayFile(dir string) (*os.File, error) {
	dir = SnapshotDir(dir)
	if !noTmpfile {
		fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return os.NewFile(uintptr(fd), filepath.Join(dir, "(unlinked snapshot overlay)")), nil
		}
		// EOPNOTSUPP or EISDIR (a file system or kernel without
		// O_TMPFILE) fall back; anything else is the directory's fault.
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("snapshot overlay in %s: %w", dir, err)
		}
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	name := filepath.Join(dir, snapshotPrefix+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapshot overlay in %s: %w", dir, err)
	}
	if err := os.Remove(name); err != nil {
		f.Close()
		os.Remove(name)
		return nil, fmt.Errorf("snapshot overlay in %s: unlink: %w", dir, err)
	}
	return f, nil
}

// SweepSnapshots removes from dir ("": SnapshotDir's default) the overlay
// files that processes now gone left behind, named because they were
// killed between creating and unlinking one (only where the file system
// refuses O_TMPFILE). It returns the names it removed.
func SweepSnapshots(dir string) ([]string, error) {
	dir = SnapshotDir(dir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), snapshotPrefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		pid, err := strconv.Atoi(rest[:max(strings.IndexByte(rest, '-'), 0)])
		if err != nil || pid <= 0 || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // not ours, or its process lives
		}
		name := filepath.Join(dir, e.Name())
		if err := os.Remove(name); err == nil {
			gone = append(gone, name)
		}
	}
	return gone, nil
}

// overlayFile is an image.File over an unlinked temporary file. Sync does
// nothing: the file dies with the process, so durability buys nothing.
type overlayFile struct{ f *os.File }

var _ image.Puncher = overlayFile{}

func (o overlayFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o overlayFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o overlayFile) Truncate(n int64) error                   { return o.f.Truncate(n) }
func (o overlayFile) Sync() error                              { return nil }
func (o overlayFile) Close() error                             { return o.f.Close() }
func (o overlayFile) Name() string                             { return o.f.Name() }
func (o overlayFile) Size() (int64, error) {
	fi, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
func (o overlayFile) Punch(off, n int64) error {
	return unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// sealedSpan is the address space of a sealedFile's ciphertext: far more
// than an overlay grows to, a multiple of every encryption sector size.
const sealedSpan = 1 << 60

// sealedSector is the encryption sector of a sealed overlay file.
const sealedSector = 4096

// sealedFile is an image.File whose every byte is stored encrypted in an
// overlay file, by its file offset, with AES-XTS (crypt's own cipher and
// sector layer, read-modify-write of partial sectors under its range lock)
// and a random key that exists only in this process's memory. Bytes past
// the length read as zeroes: they are either never-written sectors (all
// zero ciphertext, which crypt reads as zeroes) or zeroed by Truncate.
type sealedFile struct {
	dev  blockdev.Device // crypt's plaintext view of the file
	raw  *os.File
	name string
	mu   sync.Mutex // Truncate against itself
	size atomic.Int64
}

// newSealedFile encrypts f (empty) under a fresh random key.
func newSealedFile(f *os.File) (*sealedFile, error) {
	key := make([]byte, 64) // AES-256-XTS
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	c, err := crypt.NewCipher("aes-xts-plain64", key)
	if err != nil {
		return nil, err
	}
	dev, err := crypt.New(spanDevice{f}, crypt.Config{Cipher: c, SectorSize: sealedSector})
	if err != nil {
		c.Wipe()
		return nil, err
	}
	return &sealedFile{dev: dev, raw: f, name: f.Name() + " (encrypted)"}, nil
}

func (s *sealedFile) ReadAt(p []byte, off int64) (int, error) {
	size := s.size.Load()
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	if _, err := s.dev.ReadAt(p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (s *sealedFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.dev.WriteAt(p, off)
	end := off + int64(n)
	for cur := s.size.Load(); end > cur && !s.size.CompareAndSwap(cur, end); cur = s.size.Load() {
	}
	return n, err
}

func (s *sealedFile) Size() (int64, error) { return s.size.Load(), nil }

// Truncate sets the length; shrinking zeroes the rest of the last sector
// and drops the sectors past it, so that growing again reads zeroes.
func (s *sealedFile) Truncate(n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < 0 {
		return fmt.Errorf("truncate %s to %d bytes", s.name, n)
	}
	if n < s.size.Load() {
		end := (n + sealedSector - 1) / sealedSector * sealedSector
		if end > n {
			if _, err := s.dev.WriteAt(make([]byte, end-n), n); err != nil {
				return err
			}
		}
		if err := s.raw.Truncate(end); err != nil {
			return err
		}
	}
	s.size.Store(n)
	return nil
}

func (s *sealedFile) Sync() error  { return nil }
func (s *sealedFile) Close() error { return s.dev.Close() } // wipes the key, closes the file
func (s *sealedFile) Name() string { return s.name }

// spanDevice is the overlay file as crypt's inner Device: sealedSpan bytes,
// those past the end of the file reading as zeroes.
type spanDevice struct{ f *os.File }

func (d spanDevice) Size() int64 { return sealedSpan }
func (d spanDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}
func (d spanDevice) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }
func (d spanDevice) Flush() error                             { return nil }
func (d spanDevice) Close() error                             { return d.f.Close() }

// throwAway puts a new qcow2 overlay in an unlinked file of dir over base,
// sealed (encrypted with a random key) when seal. The returned Device owns
// base; on error the caller still does.
func throwAway(base blockdev.Device, dir string, seal bool, log *slog.Logger) (blockdev.Device, error) {
	tf, err := createOverlayFile(dir)
	if err != nil {
		return nil, err
	}
	if overlayMade != nil {
		overlayMade(tf)
	}
	var f image.File = overlayFile{tf}
	if seal {
		if f, err = newSealedFile(tf); err != nil {
			tf.Close()
			return nil, fmt.Errorf("snapshot overlay: %w", err)
		}
	}
	size := (base.Size() + 511) &^ 511
	if err := image.CreateIn(f, image.CreateOptions{Format: "qcow2", Size: size}); err != nil {
		f.Close()
		return nil, fmt.Errorf("snapshot overlay: %w", err)
	}
	dev, err := image.OpenFile(f, image.OpenOptions{Format: "qcow2", Backing: base, NoLock: true, Log: log})
	if err != nil {
		return nil, fmt.Errorf("snapshot overlay: %w", err)
	}
	return dev, nil
}

// openSnapshot opens the image name read-only, through the whole stack,
// under a throw-away overlay (Options.Snapshot).
func openSnapshot(ctx context.Context, name string, o Options) (*Disk, error) {
	if o.Create {
		ok, err := exists(ctx, name, o.S3)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s does not exist; a snapshot serves an image that does (its writes are thrown away)", name)
		}
	}
	bo := o
	bo.Snapshot, bo.SnapshotDir, bo.ReadOnly, bo.Create = false, "", true, false
	base, err := Open(ctx, name, bo)
	if err != nil {
		return nil, err
	}
	top, err := throwAway(base.Device, o.SnapshotDir, base.Encrypted, o.Log)
	if err != nil {
		base.Device.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Disk{Device: top, Format: base.Format, Encrypted: base.Encrypted, Degraded: base.Degraded, Stats: base.Stats}, nil
}

// ErrOverlayMismatch is returned when an existing overlay's recorded
// backing file is not the base it is opened over.
var ErrOverlayMismatch = errors.New("the overlay records another backing image")

// openOverlay opens name, a qcow2 overlay over o.Base, made when missing
// (Options.Base).
func openOverlay(ctx context.Context, name string, o Options) (*Disk, error) {
	baseName := o.Base
	if s3.IsURL(name) {
		return nil, fmt.Errorf("%s: an overlay is a local qcow2 file (its base may be s3://)", name)
	}
	top, err := filepath.Abs(name)
	if err != nil {
		return nil, err
	}
	local := !s3.IsURL(baseName)
	if local {
		if baseName, err = filepath.Abs(baseName); err != nil {
			return nil, err
		}
		if !inTree(filepath.Dir(top), baseName) && o.Log != nil {
			o.Log.Info("the base lies outside the overlay's directory; it is trusted because you named it", "overlay", top, "base", baseName)
		}
	}
	// o.Format is the base's: the overlay is qcow2.
	bo := o
	bo.Base, bo.ReadOnly, bo.Create, bo.Size, bo.KeepEncrypted = "", true, false, 0, true
	base, err := Open(ctx, baseName, bo)
	if err != nil {
		return nil, fmt.Errorf("base of %s: %w", name, err)
	}
	if IsLUKS(base.Device) {
		base.Device.Close()
		return nil, fmt.Errorf("%s: the base %s is encrypted (LUKS), and an overlay would store its decrypted data in the clear; --snapshot keeps throw-away writes encrypted", name, baseName)
	}
	d, err := overlayOver(top, baseName, base, o)
	if err != nil {
		base.Device.Close()
		return nil, err
	}
	return d, nil
}

// overlayOver opens (creating it when missing) the overlay top over base,
// opened from baseName. On error the caller closes base.
func overlayOver(top, baseName string, base *Disk, o Options) (*Disk, error) {
	record := baseName
	if !s3.IsURL(baseName) {
		if rel, err := filepath.Rel(filepath.Dir(top), baseName); err == nil && inTree(filepath.Dir(top), baseName) {
			record = rel
		}
	}
	created := false
	_, err := os.Lstat(top)
	switch {
	case errors.Is(err, fs.ErrNotExist) && o.ReadOnly:
		return nil, fmt.Errorf("%s does not exist, and a read-only open cannot create it", top)
	case errors.Is(err, fs.ErrNotExist):
		copt := image.CreateOptions{Format: "qcow2", Size: (base.Device.Size() + 511) &^ 511,
			BackingFile: record, BackingFormat: qemuName(base.Format), Names: givenNames{base.Device}}
		if err := image.Create(top, copt); err != nil {
			return nil, err
		}
		created = true
	case err != nil:
		return nil, err
	default:
		if err := sameBase(top, baseName, base.Format); err != nil {
			return nil, err
		}
	}
	f, _, err := image.OpenPath(top, image.OpenOptions{Format: "qcow2", ReadOnly: o.ReadOnly, NoLock: o.NoLock})
	if err == nil {
		var dev blockdev.Device
		dev, err = image.OpenFile(f, image.OpenOptions{Format: "qcow2", ReadOnly: o.ReadOnly, NoLock: o.NoLock, Backing: base.Device, Log: o.Log})
		if err == nil {
			return &Disk{Device: readOnly(dev, o.ReadOnly), Format: "qcow2", Created: created, Degraded: base.Degraded, Stats: base.Stats}, nil
		}
	}
	if created {
		os.Remove(top)
	}
	return nil, err
}

// sameBase checks that the existing overlay top records baseName (of
// format) as its backing image.
func sameBase(top, baseName, format string) error {
	fm, err := image.Probe(top)
	if err != nil {
		return err
	}
	if fm != "qcow2" {
		return fmt.Errorf("%s is a %s image; an overlay is qcow2", top, fm)
	}
	facts, err := image.Info(top, "qcow2")
	if err != nil {
		return err
	}
	rec := facts.BackingFile
	if rec == "" {
		return fmt.Errorf("%s records no backing image, so it is not an overlay of %s: %w", top, baseName, ErrOverlayMismatch)
	}
	same := rec == baseName
	if !same && !s3.IsURL(baseName) && !s3.IsURL(rec) {
		p := rec
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(top), p)
		}
		a, err1 := os.Stat(p)
		b, err2 := os.Stat(baseName)
		same = err1 == nil && err2 == nil && os.SameFile(a, b)
	}
	if !same {
		return fmt.Errorf("%s is an overlay of %q, not of %s (vdisk rebase, or qemu-img rebase -u, moves it onto another base): %w", top, rec, baseName, ErrOverlayMismatch)
	}
	if fm, err := image.Lookup(facts.BackingFormat); facts.BackingFormat != "" && (err != nil || fm.Name != format) {
		return fmt.Errorf("%s records its base %q as %s, but it holds a %s image: %w", top, rec, facts.BackingFormat, format, ErrOverlayMismatch)
	}
	return nil
}

// qemuName is qemu's name of a format, which the backing format an overlay
// records must be for qemu to open it: "vpc" for VHD.
func qemuName(format string) string {
	if format == "vhd" {
		return "vpc"
	}
	return format
}

// inTree reports whether path lies inside the directory tree dir.
func inTree(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// givenNames answers a new overlay's create, which opens its backing file
// by name, with the base the stack already opened (a name an s3:// base
// has no file for). It makes no files.
type givenNames struct{ dev blockdev.Device }

func (g givenNames) Open(_ image.File, name string, _ bool) (image.File, error) {
	return image.NewDeviceFile(keepOpen{g.dev}, name), nil
}

func (g givenNames) Create(image.File, string) (image.File, error) {
	return nil, errors.New("an overlay makes no other files")
}

// keepOpen is a Device whose Close leaves the device open (its owner closes
// it).
type keepOpen struct{ blockdev.Device }

func (keepOpen) Close() error { return nil }
