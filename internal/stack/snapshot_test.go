package stack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/image/imagetest"
)

// fileSum is the sha256 of the file at path.
func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// emptyDir fails unless dir holds nothing.
func emptyDir(t *testing.T, dir, when string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%s: the snapshot directory holds %s", when, ents[0].Name())
	}
}

// patterned writes a raw image of size bytes whose every 512-byte sector
// says which it is, and returns its bytes.
func patterned(t *testing.T, path string, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	for off := int64(0); off < size; off += 512 {
		copy(b[off:min(off+512, size)], fmt.Sprintf("base sector %d ", off/512))
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotThrowsWritesAway serves a raw and a qcow2 image (and one
// whose size is not a multiple of 512) under a throw-away overlay, with
// O_TMPFILE and with create-and-unlink: reads see the writes, the image's
// bytes never change, and the snapshot directory stays empty.
func TestSnapshotThrowsWritesAway(t *testing.T) {
	for _, tc := range []struct {
		name, format string
		size         int64
		fallback     bool
	}{
		{"raw", "raw", 4 << 20, false},
		{"raw-unlinked", "raw", 4 << 20, true},
		{"odd-size", "raw", 3<<20 + 1000, false},
		{"qcow2", "qcow2", 4 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noTmpfile = tc.fallback
			defer func() { noTmpfile = false }()
			dir, snapDir := t.TempDir(), t.TempDir()
			img := filepath.Join(dir, "base.img")
			ref := patterned(t, img, tc.size)
			if tc.format == "qcow2" {
				raw := img
				img = filepath.Join(dir, "base.qcow2")
				imagetest.NeedTool(t, "qemu-img")
				imagetest.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
			}
			sum := fileSum(t, img)
			d, err := Open(context.Background(), img, Options{Snapshot: true, SnapshotDir: snapDir})
			if err != nil {
				t.Fatal(err)
			}
			if d.Format != tc.format || blockdev.InfoOf(d.Device).ReadOnly {
				t.Fatalf("snapshot of %s: format %s, info %+v", tc.format, d.Format, blockdev.InfoOf(d.Device))
			}
			size := d.Device.Size()
			if size < tc.size || size >= tc.size+512 {
				t.Fatalf("snapshot size %d of a %d-byte image", size, tc.size)
			}
			want := make([]byte, size)
			copy(want, ref)
			imagetest.MustEqual(t, "snapshot before writes", imagetest.ReadAll(t, d.Device), want)
			imagetest.RandomWrites(t, d.Device, want, 1, 200, 200<<10)
			if err := d.Device.Flush(); err != nil {
				t.Fatal(err)
			}
			imagetest.MustEqual(t, "snapshot after writes", imagetest.ReadAll(t, d.Device), want)
			emptyDir(t, snapDir, "while open")
			if fileSum(t, img) != sum {
				t.Fatal("the snapshot wrote its image")
			}
			if err := d.Device.Close(); err != nil {
				t.Fatal(err)
			}
			emptyDir(t, snapDir, "after close")
			if fileSum(t, img) != sum {
				t.Fatal("the snapshot wrote its image")
			}
			// The image is as it was: a second snapshot sees none of it.
			d, err = Open(context.Background(), img, Options{Snapshot: true, SnapshotDir: snapDir})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Device.Close()
			want = make([]byte, size)
			copy(want, ref)
			imagetest.MustEqual(t, "second snapshot", imagetest.ReadAll(t, d.Device), want)
		})
	}
}

// TestSnapshotReadOnlyIsPlain: a read-only snapshot has nothing to throw
// away and opens the image as it is.
func TestSnapshotReadOnlyIsPlain(t *testing.T) {
	img := filepath.Join(t.TempDir(), "a.img")
	patterned(t, img, 1<<20)
	d, err := Open(context.Background(), img, Options{Snapshot: true, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Device.Close()
	if _, err := d.Device.WriteAt([]byte{1}, 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write to a read-only snapshot: %v", err)
	}
}

// TestSnapshotMissingImage: a snapshot does not create its image.
func TestSnapshotMissingImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "none.img")
	if _, err := Open(context.Background(), img, Options{Snapshot: true, Create: true, Size: 1 << 20}); err == nil {
		t.Fatal("a snapshot created its image")
	}
	if _, err := os.Stat(img); err == nil {
		t.Fatal("the image exists")
	}
}

// TestSnapshotLUKSSealed serves a LUKS2 image under a throw-away overlay
// and reads the overlay file while it is open: neither what the client
// wrote nor the decrypted base data that copy-on-write moves into the
// overlay appears in it.
func TestSnapshotLUKSSealed(t *testing.T) {
	dir, snapDir := t.TempDir(), t.TempDir()
	img := filepath.Join(dir, "secret.img")
	enc := EncryptOptions{Type: "luks2", Passphrase: []byte("hunter2"), LUKS: cheapKDF}
	if err := Create(context.Background(), img, CreateOptions{Size: 4 << 20, Encrypt: enc}); err != nil {
		t.Fatal(err)
	}
	baseSecret := []byte("BASE-PLAINTEXT-in-the-volume ")
	d, err := Open(context.Background(), img, Options{Passphrase: pass("hunter2")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Device.WriteAt(bytes.Repeat(baseSecret, 4<<20/len(baseSecret)), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	sum := fileSum(t, img)

	var mu sync.Mutex
	var overlay *os.File
	overlayMade = func(f *os.File) { mu.Lock(); overlay = f; mu.Unlock() }
	defer func() { overlayMade = nil }()
	d, err = Open(context.Background(), img, Options{Snapshot: true, SnapshotDir: snapDir, Passphrase: pass("hunter2")})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Encrypted {
		t.Fatal("snapshot of a LUKS image not reported encrypted")
	}
	want := imagetest.ReadAll(t, d.Device)
	secret := []byte("CLIENT-PLAINTEXT-written-to-the-snapshot ")
	// Aligned and unaligned writes, some of a few bytes into a cluster
	// (the rest of which is copied from the base), some concurrent.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			off := int64(i)*200<<10 + int64(i*37)
			b := bytes.Repeat(secret, 1+i*50)
			if _, err := d.Device.WriteAt(b, off); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range 16 {
		off := int64(i)*200<<10 + int64(i*37)
		copy(want[off:], bytes.Repeat(secret, 1+i*50))
	}
	imagetest.MustEqual(t, "sealed snapshot", imagetest.ReadAll(t, d.Device), want)
	mu.Lock()
	f := overlay
	mu.Unlock()
	if f == nil {
		t.Fatal("no overlay file was made")
	}
	raw, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) < 1<<20 {
		t.Fatalf("the overlay file holds %d bytes: the writes are not in it", len(raw))
	}
	for _, p := range [][]byte{secret[:16], baseSecret[:16], []byte("QFI\xfb")} {
		if bytes.Contains(raw, p) {
			t.Fatalf("the overlay file holds %q in the clear", p)
		}
	}
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	emptyDir(t, snapDir, "after close")
	if fileSum(t, img) != sum {
		t.Fatal("the snapshot wrote its image")
	}
}

// TestSealedFile checks the encrypted overlay file against a plain
// reference: random unaligned writes (concurrent, on shared sectors),
// reads past the end, truncation down and up again.
func TestSealedFile(t *testing.T) {
	tf, err := createOverlayFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := newSealedFile(tf)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ref := make([]byte, 1<<20)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 20 {
				// Each goroutine writes its own bytes of shared sectors:
				// offset ≡ g (mod 4).
				n := 1 + r.IntN(200)
				off := int64(r.IntN(len(ref)-4*n)) &^ 3
				b := make([]byte, 4*n)
				mu.Lock()
				copy(b, ref[off:])
				for i := 0; i < n; i++ {
					b[4*i+g] = byte(r.Uint32())
				}
				mu.Unlock()
				for i := 0; i < n; i++ {
					if _, err := s.WriteAt(b[4*i+g:4*i+g+1], off+int64(4*i+g)); err != nil {
						t.Error(err)
						return
					}
				}
				mu.Lock()
				for i := 0; i < n; i++ {
					ref[off+int64(4*i+g)] = b[4*i+g]
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	size, _ := s.Size()
	got := make([]byte, size)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "sealed file", got, ref[:size])
	if n, err := s.ReadAt(make([]byte, 10), size-3); n != 3 || err != io.EOF {
		t.Fatalf("read across the end: %d, %v", n, err)
	}
	if err := s.Truncate(1000); err != nil {
		t.Fatal(err)
	}
	if err := s.Truncate(9000); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 9000)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 9000)
	copy(want, ref[:1000])
	imagetest.MustEqual(t, "sealed file truncated and grown", got, want)
}

// TestSweepSnapshots removes the named overlays of dead processes only.
func TestSweepSnapshots(t *testing.T) {
	dir := t.TempDir()
	dead := filepath.Join(dir, snapshotPrefix+"2147483646-00")
	alive := filepath.Join(dir, snapshotPrefix+fmt.Sprint(os.Getppid())+"-00")
	other := filepath.Join(dir, "keep.img")
	for _, p := range []string{dead, alive, other} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := SweepSnapshots(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 1 || gone[0] != dead {
		t.Fatalf("swept %v, want %s", gone, dead)
	}
	for _, p := range []string{alive, other} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
}

// qemuInfo is what the overlay tests read of `qemu-img info`.
type qemuInfo struct {
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	VirtualSize     int64  `json:"virtual-size"`
}

// TestOverlay puts a qcow2 overlay over bases of every format qemu-img
// makes: created on the first open with the base recorded (qemu-img info
// and check agree), reopened with its data, the base unchanged, and what
// qemu reads through the overlay and its base is what vdisk wrote.
func TestOverlay(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, format := range []string{"raw", "qcow2", "vhdx", "vmdk", "vdi", "vpc"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			raw := filepath.Join(dir, "src.raw")
			ref := patterned(t, raw, 4<<20)
			base := filepath.Join(dir, "bases", "base."+format)
			if err := os.Mkdir(filepath.Dir(base), 0o700); err != nil {
				t.Fatal(err)
			}
			imagetest.Run(t, "qemu-img", "convert", "-f", "raw", "-O", format, raw, base)
			sum := fileSum(t, base)
			want := imagetest.QemuRaw(t, base, format) // vpc rounds its size up
			copy(want, ref)
			top := filepath.Join(dir, "top.qcow2")
			d, err := Open(context.Background(), top, Options{Base: base})
			if err != nil {
				t.Fatal(err)
			}
			if !d.Created || d.Format != "qcow2" || d.Device.Size() < int64(len(want)) {
				t.Fatalf("overlay: %+v, size %d", d, d.Device.Size())
			}
			imagetest.MustEqual(t, "overlay before writes", imagetest.ReadAll(t, d.Device)[:len(want)], want)
			imagetest.RandomWrites(t, d.Device, want, 3, 50, 100<<10)
			if err := d.Device.Close(); err != nil {
				t.Fatal(err)
			}
			if fileSum(t, base) != sum {
				t.Fatal("the overlay wrote its base")
			}
			var info qemuInfo
			if err := json.Unmarshal([]byte(imagetest.Run(t, "qemu-img", "info", "--output=json", top)), &info); err != nil {
				t.Fatal(err)
			}
			// qemu's format name, vpc for VHD, or qemu could not open it.
			if info.Format != "qcow2" || info.BackingFilename != "bases/base."+format || info.BackingFormat != format {
				t.Fatalf("qemu-img info of the overlay: %+v", info)
			}
			imagetest.Run(t, "qemu-img", "check", top)
			imagetest.MustEqual(t, "qemu reading the overlay", imagetest.QemuRaw(t, top, "qcow2")[:len(want)], want)

			d, err = Open(context.Background(), top, Options{Base: base})
			if err != nil {
				t.Fatal(err)
			}
			if d.Created {
				t.Fatal("the overlay was made again")
			}
			imagetest.MustEqual(t, "overlay reopened", imagetest.ReadAll(t, d.Device)[:len(want)], want)
			if err := d.Device.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOverlayBaseElsewhere: a base outside the overlay's directory is
// recorded by its absolute path and opened because the user named it.
func TestOverlayBaseElsewhere(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	base := filepath.Join(t.TempDir(), "base.img")
	ref := patterned(t, base, 2<<20)
	top := filepath.Join(t.TempDir(), "top.qcow2")
	d, err := Open(context.Background(), top, Options{Base: base, Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.MustEqual(t, "overlay", imagetest.ReadAll(t, d.Device), ref)
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	out := imagetest.Run(t, "qemu-img", "info", "--output=json", top)
	var info qemuInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info.BackingFilename != base || info.BackingFormat != "raw" {
		t.Fatalf("qemu-img info: %+v", info)
	}
	imagetest.Run(t, "qemu-img", "check", top)
}

// TestOverlayRefusesOtherBase: an existing overlay opened over a base it
// does not record (or a file that is no overlay) is refused, and nothing
// is changed.
func TestOverlayRefusesOtherBase(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	patterned(t, a, 1<<20)
	patterned(t, b, 1<<20)
	top := filepath.Join(dir, "top.qcow2")
	d, err := Open(context.Background(), top, Options{Base: a, Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	sum := fileSum(t, top)
	_, err = Open(context.Background(), top, Options{Base: b, Format: "raw"})
	if !errors.Is(err, ErrOverlayMismatch) || !strings.Contains(err.Error(), "rebase") {
		t.Fatalf("overlay of a.img opened over b.img: %v", err)
	}
	if fileSum(t, top) != sum {
		t.Fatal("the refused open changed the overlay")
	}
	// A plain qcow2 with no backing file is no overlay.
	plain := filepath.Join(dir, "plain.qcow2")
	if err := Create(context.Background(), plain, CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), plain, Options{Base: a, Format: "raw"}); !errors.Is(err, ErrOverlayMismatch) {
		t.Fatalf("a qcow2 without backing opened as an overlay: %v", err)
	}
	// A raw file is no overlay either.
	if _, err := Open(context.Background(), b, Options{Base: a, Format: "raw"}); err == nil || !strings.Contains(err.Error(), "raw image") {
		t.Fatalf("a raw file opened as an overlay: %v", err)
	}
}

// TestOverlayRefusesLUKSBase: an overlay would store a LUKS base's
// decrypted data in the clear.
func TestOverlayRefusesLUKSBase(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "secret.img")
	enc := EncryptOptions{Type: "luks2", Passphrase: []byte("hunter2"), LUKS: cheapKDF}
	if err := Create(context.Background(), img, CreateOptions{Size: 1 << 20, Encrypt: enc}); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if _, err := Open(context.Background(), top, Options{Base: img, Passphrase: pass("hunter2")}); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("overlay over a LUKS base: %v", err)
	}
	if _, err := os.Stat(top); err == nil {
		t.Fatal("the refused overlay was made")
	}
}
