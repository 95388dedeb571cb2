package e2e

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"vdisk/internal/api"
	"vdisk/internal/image/imagetest"
)

// diskFormat is one writable image format as vdisk and qemu name it.
type diskFormat struct {
	name string // vdisk's name
	qemu string // qemu-img's name
	// check says whether qemu-img check supports the format.
	check bool
	// trim says whether vdisk's format discards (blockdev.Trimmer).
	trim bool
}

// diskFormats are the writable formats the open tests run on (issues 5
// and 6); each is created with its default subformat: qcow2 v3, dynamic
// VHDX, monolithicSparse VMDK, dynamic VDI and dynamic VHD.
var diskFormats = []diskFormat{
	{name: "qcow2", qemu: "qcow2", check: true, trim: true},
	{name: "vhdx", qemu: "vhdx", check: true, trim: true},
	{name: "vmdk", qemu: "vmdk", check: true},
	{name: "vdi", qemu: "vdi", check: true, trim: true},
	{name: "vhd", qemu: "vpc", trim: true},
}

// maxEmptyImage bounds the file size of a new empty 64 MiB dynamic image
// (VHDX's log and metadata regions make it 4 MiB).
const maxEmptyImage = 8 << 20

// openJSON runs vdisk open --json with args and returns the record.
func (e *env) openJSON(args ...string) api.Disk {
	e.t.Helper()
	var d api.Disk
	out := e.must(append([]string{"open", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		e.t.Fatalf("vdisk open --json printed %q: %v", out, err)
	}
	return d
}

// qemuRawFile writes the guest content of img, as qemu-img reads it, to a
// new raw file and returns its name.
func qemuRawFile(t *testing.T, img, format string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(img)+".raw")
	sh(t, "qemu-img", "convert", "-f", format, "-O", "raw", img, out)
	return out
}

// copyDevice copies the whole block device dev into a new file and returns
// its name.
func copyDevice(t *testing.T, dev string) string {
	t.Helper()
	in, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	name := filepath.Join(t.TempDir(), filepath.Base(dev)+".raw")
	out, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return name
}

// readFile returns the contents of name.
func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fileSum returns the hex SHA-256 of a file's contents.
func fileSum(t *testing.T, name string) string {
	t.Helper()
	s := sha256.Sum256(readFile(t, name))
	return hex.EncodeToString(s[:])
}

// TestOpenFormats carries an ext4 file system across close and reopen on
// an image of each writable format that vdisk created: qemu-img then
// finds the image consistent, reads exactly what the device served, and
// the file system in it is clean.
func TestOpenFormats(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	for _, f := range diskFormats {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "disk."+f.name)
			mnt := filepath.Join(e.dir, "mnt")
			e.must("create", "-f", f.name, img, "--size", "64M")
			if st, err := os.Stat(img); err != nil {
				t.Fatal(err)
			} else if st.Size() > maxEmptyImage {
				t.Fatalf("created %s is %d bytes: not a dynamic (sparse) image", f.name, st.Size())
			}
			d := e.openJSON(img)
			if d.Format != f.name || d.Via != api.ViaFUSE || d.ReadOnly || d.Size < 64<<20 {
				t.Fatalf("record %+v, want a writable 64 MiB %s disk via fuse", d, f.name)
			}
			sh(t, "mkfs.ext4", "-q", "-F", d.Device)
			mount(t, d.Device, mnt)
			sums := writeFiles(t, mnt, 3<<20, 1<<20+12345, 4096, 1)
			sh(t, "sync")
			sh(t, "umount", mnt)
			served := copyDevice(t, d.Device)
			e.must("close", img)

			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			// qemu-img reads the closed image exactly as vdisk served it.
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, served)
			sh(t, "e2fsck", "-fn", qemuRawFile(t, img, f.qemu))

			d2 := e.openJSON(img)
			if d2.ID != d.ID || d2.Format != f.name || d2.Size != d.Size {
				t.Fatalf("reopened as %+v, was %+v", d2, d)
			}
			mount(t, d2.Device, mnt)
			checkFiles(t, mnt, sums)
			sh(t, "umount", mnt)
			e.must("close", d2.Device)
		})
	}
}

// qemuImages are the subformats qemu-img creates that TestOpenQemuData
// opens: opts go to qemu-img create -o; readOnly marks the subformats
// vdisk only reads (stream-optimized VMDK: compressed grains).
var qemuImages = []struct {
	format   diskFormat
	opts     string
	readOnly bool
}{
	{format: diskFormats[0]},
	{format: diskFormats[0], opts: "compat=0.10,cluster_size=4k"},
	{format: diskFormats[0], opts: "extended_l2=on,cluster_size=128k"},
	{format: diskFormats[1]},
	{format: diskFormats[1], opts: "subformat=fixed"},
	{format: diskFormats[1], opts: "block_size=1M"},
	{format: diskFormats[2]},
	{format: diskFormats[2], opts: "subformat=monolithicFlat"},
	{format: diskFormats[2], opts: "subformat=twoGbMaxExtentSparse"},
	{format: diskFormats[2], opts: "subformat=twoGbMaxExtentFlat"},
	{format: diskFormats[2], opts: "subformat=streamOptimized", readOnly: true},
	{format: diskFormats[3]},
	{format: diskFormats[3], opts: "static=on"},
	{format: diskFormats[4]},
	{format: diskFormats[4], opts: "subformat=fixed"},
	{format: diskFormats[4], opts: "force_size=on"},
}

// TestOpenQemuData opens images qemu-io wrote at scattered offsets (one of
// them the last sector): the block device reads byte-identical to
// qemu-img convert -O raw. Writes through the device (over data, over
// holes, across a cluster boundary) then leave an image qemu-img check
// passes and qemu-img compare finds equal to the expected content.
func TestOpenQemuData(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, tc := range qemuImages {
		f := tc.format
		t.Run(f.name+"/"+strings.ReplaceAll(cmp.Or(tc.opts, "default"), "=", "-"), func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "data."+f.name)
			// qemu-io writes a stream-optimized VMDK only in order: it
			// gets its data by conversion from a sparse one.
			made := img
			if tc.readOnly {
				made = filepath.Join(e.dir, "sparse."+f.name)
			}
			args := []string{"create", "-q", "-f", f.qemu}
			if tc.opts != "" && !tc.readOnly {
				args = append(args, "-o", tc.opts)
			}
			sh(t, "qemu-img", append(args, made, "64M")...)
			// qemu rounds a VHD's size up to whole CHS cylinders, unless
			// force_size.
			var info struct {
				VirtualSize int64 `json:"virtual-size"`
			}
			if err := json.Unmarshal([]byte(sh(t, "qemu-img", "info", "-f", f.qemu, "--output=json", made)), &info); err != nil {
				t.Fatal(err)
			}
			size := info.VirtualSize
			sh(t, "qemu-io", "-f", f.qemu,
				"-c", "write -P 0x5a 0 64k",
				"-c", "write -P 0xa5 1000k 3m",
				"-c", "write -P 0x11 33m 512",
				"-c", "write -P 0x77 40m 2m",
				"-c", "write -z 40m 64k",
				"-c", "write -P 0xee "+strconv.FormatInt(size-512, 10)+" 512",
				made)
			if made != img {
				sh(t, "qemu-img", "convert", "-f", f.qemu, "-O", f.qemu, "-o", tc.opts, made, img)
			}
			expected := qemuRawFile(t, img, f.qemu)

			var openArgs []string
			if tc.readOnly {
				openArgs = []string{"--read-only"}
			}
			d := e.openJSON(append([]string{img}, openArgs...)...)
			if d.Format != f.name || d.Via != api.ViaFUSE || d.Size != size || d.ReadOnly != tc.readOnly {
				t.Fatalf("record %+v, want a %d-byte %s disk via fuse (read-only %v)", d, size, f.name, tc.readOnly)
			}
			imagetest.MustEqual(t, d.Device, readFile(t, copyDevice(t, d.Device)), readFile(t, expected))
			if tc.readOnly {
				e.must("close", img)
				return
			}
			writes := []patternWrite{
				{off: 1<<20 + 512, n: 4096, b: 0x01},
				{off: 20<<20 - 512, n: 8192, b: 0x02},
				{off: 41 << 20, n: 1 << 20, b: 0x03},
				{off: size - 4096, n: 4096, b: 0x04},
			}
			writePatterns(t, d.Device, expected, writes)
			e.must("close", img)
			if f.check {
				sh(t, "qemu-img", "check", "-q", "-f", f.qemu, img)
			}
			sh(t, "qemu-img", "compare", "-q", "-f", f.qemu, "-F", "raw", img, expected)
		})
	}
}

// patternWrite is n bytes of b at off.
type patternWrite struct {
	off int64
	n   int
	b   byte
}

// writePatterns writes ws to the block device dev (then fsyncs it) and to
// the reference file ref alike.
func writePatterns(t *testing.T, dev, ref string, ws []patternWrite) {
	t.Helper()
	df, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	rf, err := os.OpenFile(ref, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	for _, w := range ws {
		p := bytes.Repeat([]byte{w.b}, w.n)
		if _, err := df.WriteAt(p, w.off); err != nil {
			t.Fatalf("write %s at %d: %v", dev, w.off, err)
		}
		if _, err := rf.WriteAt(p, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := df.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dev, err)
	}
}

// TestOpenISO opens an ISO 9660 image genisoimage made: the disk is a
// read-only CD-ROM with 2048-byte blocks, writes to the device fail, it
// serves the image's bytes unchanged, and its files read back (with
// isoinfo, and through a mount where the kernel has iso9660).
func TestOpenISO(t *testing.T) {
	imagetest.NeedTool(t, "genisoimage")
	imagetest.NeedTool(t, "isoinfo")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{name: "default", args: nil},
		{name: "read-only", args: []string{"--read-only"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			src := filepath.Join(e.dir, "src")
			if err := os.Mkdir(src, 0o700); err != nil {
				t.Fatal(err)
			}
			sums := writeFiles(t, src, 1<<20+7, 5000, 0)
			img := filepath.Join(e.dir, "image.iso")
			sh(t, "genisoimage", "-quiet", "-R", "-J", "-V", "VDISKTEST", "-o", img, src)
			before := fileSum(t, img)

			d := e.openJSON(append([]string{img}, tc.args...)...)
			st, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			if d.Format != "iso" || !d.ReadOnly || d.Writable || d.MediaType != api.MediaCDROM || !d.Removable ||
				d.LogicalBlockSize != 2048 || d.Size != st.Size() {
				t.Fatalf("record %+v, want a read-only %d-byte iso cdrom with 2048-byte blocks", d, st.Size())
			}
			if ro := strings.TrimSpace(sh(t, "blockdev", "--getro", d.Device)); ro != "1" {
				t.Errorf("blockdev --getro %s = %s, want 1", d.Device, ro)
			}
			if err := writeDevice(d.Device); err == nil {
				t.Errorf("writing %s succeeded", d.Device)
			}
			imagetest.MustEqual(t, d.Device, readFile(t, copyDevice(t, d.Device)), readFile(t, img))
			for name, want := range sums {
				b := []byte(sh(t, "isoinfo", "-R", "-i", d.Device, "-x", "/"+name))
				s := sha256.Sum256(b)
				if got := hex.EncodeToString(s[:]); got != want {
					t.Errorf("isoinfo -x /%s: sha256 %s, want %s", name, got, want)
				}
			}
			t.Run("mount", func(t *testing.T) {
				if !kernelHasFS("iso9660") {
					t.Skip("this kernel has no iso9660 file system (not in /proc/filesystems)")
				}
				mnt := filepath.Join(e.dir, "mnt")
				if err := os.MkdirAll(mnt, 0o700); err != nil {
					t.Fatal(err)
				}
				sh(t, "mount", "-t", "iso9660", "-o", "ro", d.Device, mnt)
				t.Cleanup(func() {
					if isMounted(mnt) {
						sh(t, "umount", "-l", mnt)
					}
				})
				checkFiles(t, mnt, sums)
				sh(t, "umount", mnt)
			})
			e.must("close", img)
			if after := fileSum(t, img); after != before {
				t.Fatalf("the ISO changed: sha256 %s, was %s", after, before)
			}
		})
	}
}

// writeDevice tries to write one block at the start of dev and flush it.
func writeDevice(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteAt(make([]byte, 2048), 0)
	return errors.Join(werr, f.Sync(), f.Close())
}

// kernelHasFS reports whether the running kernel knows file system fs.
func kernelHasFS(fs string) bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[len(f)-1] == fs {
			return true
		}
	}
	return false
}

// TestOpenBackingChain writes through a qcow2 image vdisk created over a
// qcow2 or raw base with data: the base is untouched, and the top passes
// qemu-img check and holds the base's data with the writes on top.
func TestOpenBackingChain(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	for _, baseFormat := range []string{"qcow2", "raw"} {
		t.Run(baseFormat, func(t *testing.T) {
			e := newEnv(t)
			base := filepath.Join(e.dir, "base."+baseFormat)
			top := filepath.Join(e.dir, "top.qcow2")
			sh(t, "qemu-img", "create", "-q", "-f", baseFormat, base, "64M")
			sh(t, "qemu-io", "-f", baseFormat, "-c", "write -P 0xab 0 4m", "-c", "write -P 0xcd 40m 1m", base)
			baseSum := fileSum(t, base)
			expected := qemuRawFile(t, base, baseFormat)

			// Relative: stored as given, found next to the top image.
			e.must("create", "-f", "qcow2", top, "-b", filepath.Base(base), "-F", baseFormat)
			d := e.openJSON(top)
			if d.Format != "qcow2" || d.Via != api.ViaFUSE || d.Size != 64<<20 {
				t.Fatalf("record %+v, want a 64 MiB qcow2 disk via fuse", d)
			}
			imagetest.MustEqual(t, "the base through the top", readFile(t, copyDevice(t, d.Device)), readFile(t, expected))

			// Inside a base cluster (copy on write of its rest), across the
			// end of the base's data, and where the base has none.
			writePatterns(t, d.Device, expected, []patternWrite{
				{off: 1<<20 + 512, n: 4096, b: 0x01},
				{off: 4<<20 - 8192, n: 128 << 10, b: 0x02},
				{off: 50 << 20, n: 1 << 20, b: 0x03},
			})
			e.must("close", top)

			if got := fileSum(t, base); got != baseSum {
				t.Fatalf("base changed: sha256 %s, was %s", got, baseSum)
			}
			sh(t, "qemu-img", "check", "-q", top)
			sh(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, expected)
		})
	}
}

// TestOpenFormatRaw opens a qcow2 file --format raw: the device serves the
// file's own bytes, never the qcow2 guest data, and is as large as the
// file.
func TestOpenFormatRaw(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	e := newEnv(t)
	img := filepath.Join(e.dir, "disk.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1m", img)
	want := readFile(t, img)

	d := e.openJSON(img, "--format", "raw")
	if d.Format != "raw" || d.Size != int64(len(want)) {
		t.Fatalf("record %+v, want a raw disk of the file's %d bytes", d, len(want))
	}
	imagetest.MustEqual(t, d.Device, readFile(t, copyDevice(t, d.Device)), want)
	e.must("close", img)
	imagetest.MustEqual(t, img, readFile(t, img), want)
}
