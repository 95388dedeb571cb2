package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hostileTimeout bounds one command on a hostile image: it is refused at
// once, and a command still running after this has hung (the test then
// fails instead of waiting for cmdTimeout). It is no speed requirement.
const hostileTimeout = 90 * time.Second

// maxHostileRSS is the peak resident memory a command refusing a hostile
// image may reach.
const maxHostileRSS = 256 << 20

// hostileCase is one image made to attack vdisk, and what its refusal
// must say.
type hostileCase struct {
	name string
	// make builds the image in dir (a directory of its own) and returns
	// its path.
	make func(t *testing.T, e *env, dir string) string
	// want is in the error message.
	want string
	// key is set for an encrypted image: the key file to pass.
	key bool
	// trust, when set, is the directory that --backing-dir must name for
	// the image to open and read through (the opt-in).
	trust func(dir string) string
}

// qcow2Backing makes a qcow2 image in dir that names backing (with
// format, or with none recorded when format is "").
func qcow2Backing(t *testing.T, dir, backing, format string) string {
	t.Helper()
	img := filepath.Join(dir, "hostile.qcow2")
	f := format
	if f == "" {
		f = "raw"
	}
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", f, img, "1M")
	if format == "" {
		// qemu-img refuses to make an image without a backing format
		// since 6.1; older ones did, and such images are about. Turn the
		// backing format extension into an unknown one, which readers
		// skip.
		b := readFile(t, img)
		i := bytes.Index(b[:4096], []byte{0xe2, 0x79, 0x2a, 0xca})
		if i < 0 {
			t.Fatal("no backing format extension in the qcow2 header")
		}
		binary.BigEndian.PutUint32(b[i:], 0x7664736b)
		writeFileAt(t, img, b[i:i+4], int64(i))
	}
	return img
}

func writeFileAt(t *testing.T, name string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// secret is a file outside every image directory that no image may show.
func secret(t *testing.T, e *env) string {
	t.Helper()
	dir := filepath.Join(e.base, "secret")
	os.MkdirAll(dir, 0o700)
	p := filepath.Join(dir, "shadow")
	if err := os.WriteFile(p, bytes.Repeat([]byte("SECRET!\n"), 1<<17), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func secretDir(e *env) func(string) string {
	return func(string) string { return filepath.Join(e.base, "secret") }
}

// qemuImage makes an image of format with qemu-img in dir.
func qemuImage(t *testing.T, dir, format, name string, opts ...string) string {
	t.Helper()
	img := filepath.Join(dir, name)
	args := append([]string{"create", "-q", "-f", format}, opts...)
	sh(t, "qemu-img", append(args, img, "1M")...)
	return img
}

// vhdChecksum is the one's complement of the byte sum of b, its checksum
// field (at at) counted as zero.
func vhdChecksum(b []byte, at int) uint32 {
	var s uint32
	for i, c := range b {
		if i < at || i >= at+4 {
			s += uint32(c)
		}
	}
	return ^s
}

// patchFile reads name, lets fix change it, and writes it back.
func patchFile(t *testing.T, name string, fix func(b []byte)) {
	t.Helper()
	b := readFile(t, name)
	fix(b)
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// grow makes name 1 MiB long (sparse), keeping its contents.
func grow(t *testing.T, name string) {
	t.Helper()
	if err := os.Truncate(name, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// vhdxGUID is the on-disk (mixed-endian) form of a GUID.
func vhdxGUID(s string) []byte {
	s = strings.ReplaceAll(s, "-", "")
	var g [16]byte
	for i := range 16 {
		v, _ := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		g[i] = byte(v)
	}
	return []byte{g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]}
}

// luksKey is the passphrase of the hostile LUKS images.
const luksKey = "hostile-key"

// luksImage makes a cheap LUKS volume with vdisk and returns it.
func luksImage(t *testing.T, e *env, dir, typ string, pbkdf ...string) string {
	t.Helper()
	img := filepath.Join(dir, typ+".img")
	args := append([]string{"create", "--encrypt", typ, "--key-file", keyFile(t, dir), "--size", "4M", img}, pbkdf...)
	e.must(args...)
	return img
}

func keyFile(t *testing.T, dir string) string {
	p := filepath.Join(dir, "key")
	if err := os.WriteFile(p, []byte(luksKey), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// luks2SetJSON replaces old by new in the JSON areas of both LUKS2
// headers and fixes their checksums.
func luks2SetJSON(t *testing.T, img, old, new string) {
	t.Helper()
	patchFile(t, img, func(b []byte) {
		hdr := int(binary.BigEndian.Uint64(b[8:]))
		for _, at := range []int{0, hdr} {
			h := b[at : at+hdr]
			js := h[4096:]
			end := bytes.IndexByte(js, 0)
			j := bytes.Replace(js[:end], []byte(old), []byte(new), 1)
			if bytes.Equal(j, js[:end]) {
				t.Fatalf("%q not in the LUKS2 JSON", old)
			}
			clear(js)
			copy(js, j)
			clear(h[448 : 448+64])
			sum := sha256.Sum256(h)
			copy(h[448:], sum[:])
		}
	})
}

// hostileCases is the one table of hostile images.
func hostileCases(e *env) []hostileCase {
	return []hostileCase{
		{name: "backing absolute path outside", want: "outside", trust: secretDir(e),
			make: func(t *testing.T, e *env, dir string) string { return qcow2Backing(t, dir, secret(t, e), "raw") }},
		{name: "backing absolute path, no format", want: "outside",
			make: func(t *testing.T, e *env, dir string) string { return qcow2Backing(t, dir, secret(t, e), "") }},
		{name: "backing ../ traversal", want: "outside", trust: secretDir(e),
			make: func(t *testing.T, e *env, dir string) string {
				return qcow2Backing(t, dir, strings.Repeat("../", 12)+strings.TrimPrefix(secret(t, e), "/"), "raw")
			}},
		{name: "backing /etc/shadow", want: "outside",
			make: func(t *testing.T, e *env, dir string) string { return qcow2Backing(t, dir, "/etc/shadow", "") }},
		{name: "backing symlink out of the directory", want: "outside", trust: secretDir(e),
			make: func(t *testing.T, e *env, dir string) string {
				if err := os.Symlink(secret(t, e), filepath.Join(dir, "base.raw")); err != nil {
					t.Fatal(err)
				}
				return qcow2Backing(t, dir, "base.raw", "raw")
			}},
		{name: "backing FIFO", want: "FIFO",
			make: func(t *testing.T, e *env, dir string) string {
				if err := syscall.Mkfifo(filepath.Join(dir, "base.raw"), 0o600); err != nil {
					t.Fatal(err)
				}
				return qcow2Backing(t, dir, "base.raw", "raw")
			}},
		{name: "backing block device", want: "block device",
			make: func(t *testing.T, e *env, dir string) string {
				if err := syscall.Mknod(filepath.Join(dir, "base.raw"), syscall.S_IFBLK|0o600, 7<<8); err != nil {
					t.Fatal(err)
				}
				return qcow2Backing(t, dir, "base.raw", "raw")
			}},
		{name: "backing json:", want: "json:",
			make: func(t *testing.T, e *env, dir string) string {
				return qcow2Backing(t, dir, `json:{"file.driver":"file","file.filename":"/etc/shadow"}`, "raw")
			}},
		{name: "backing raw file without format", want: "--backing-format",
			make: func(t *testing.T, e *env, dir string) string {
				if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o600); err != nil {
					t.Fatal(err)
				}
				return qcow2Backing(t, dir, "base.raw", "")
			}},
		{name: "vmdk extent outside", want: "outside", trust: secretDir(e),
			make: func(t *testing.T, e *env, dir string) string {
				img := filepath.Join(dir, "hostile.vmdk")
				desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"+
					"# Extent description\nRW 2048 FLAT \"%s\" 0\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n", secret(t, e))
				if err := os.WriteFile(img, []byte(desc), 0o600); err != nil {
					t.Fatal(err)
				}
				return img
			}},
		{name: "vmdk parent outside", want: "outside",
			make: func(t *testing.T, e *env, dir string) string {
				img := filepath.Join(dir, "hostile.vmdk")
				sh(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", img, "1M")
				d := readFile(t, img)
				d = bytes.Replace(d, []byte("parentCID=ffffffff"), []byte("parentCID=12345678"), 1)
				d = bytes.Replace(d, []byte("createType="), []byte("parentFileNameHint=\"/etc/passwd\"\ncreateType="), 1)
				if err := os.WriteFile(img, d, 0o600); err != nil {
					t.Fatal(err)
				}
				return img
			}},
		{name: "vhd table for terabytes", want: "table",
			make: func(t *testing.T, e *env, dir string) string {
				img := qemuImage(t, dir, "vpc", "hostile.vhd", "-o", "subformat=dynamic")
				patchFile(t, img, func(b []byte) {
					h := b[512 : 512+1024]
					binary.BigEndian.PutUint32(h[28:], 0xff000000)
					binary.BigEndian.PutUint32(h[36:], vhdChecksum(h, 36))
				})
				return img
			}},
		{name: "vdi block map for terabytes", want: "block",
			make: func(t *testing.T, e *env, dir string) string {
				img := qemuImage(t, dir, "vdi", "hostile.vdi")
				patchFile(t, img, func(b []byte) { binary.LittleEndian.PutUint32(b[0x180:], 0x3fffffff) })
				grow(t, img)
				return img
			}},
		{name: "vhdx BAT for terabytes", want: "BAT",
			make: func(t *testing.T, e *env, dir string) string {
				img := qemuImage(t, dir, "vhdx", "hostile.vhdx")
				patchFile(t, img, func(b []byte) {
					rt := b[192<<10:]
					meta := -1
					for i := range int(binary.LittleEndian.Uint32(rt[8:])) {
						ent := rt[16+32*i:]
						if bytes.Equal(ent[:16], vhdxGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")) {
							meta = int(binary.LittleEndian.Uint64(ent[16:]))
						}
					}
					if meta < 0 {
						t.Fatal("no metadata region")
					}
					m := b[meta:]
					for i := range int(binary.LittleEndian.Uint16(m[10:])) {
						ent := m[32+32*i:]
						if bytes.Equal(ent[:16], vhdxGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")) {
							binary.LittleEndian.PutUint64(m[binary.LittleEndian.Uint32(ent[16:]):], 64<<40)
							return
						}
					}
					t.Fatal("no virtual disk size item")
				})
				return img
			}},
		{name: "vmdk grain directory for terabytes", want: "grain",
			make: func(t *testing.T, e *env, dir string) string {
				img := qemuImage(t, dir, "vmdk", "hostile.vmdk")
				patchFile(t, img, func(b []byte) {
					binary.LittleEndian.PutUint64(b[12:], 1<<35) // capacity: 16 TiB in sectors
					binary.LittleEndian.PutUint64(b[20:], 8)     // 4 KiB grains
					binary.LittleEndian.PutUint32(b[44:], 512)   // grain table entries
					binary.LittleEndian.PutUint64(b[28:], 0)     // no embedded descriptor
					binary.LittleEndian.PutUint64(b[36:], 0)     // of no size
					binary.LittleEndian.PutUint64(b[64:], 1<<20) // overhead
				})
				grow(t, img)
				return img
			}},
		{name: "luks2 argon2 4 GiB", want: "memory", key: true,
			make: func(t *testing.T, e *env, dir string) string {
				img := luksImage(t, e, dir, "luks2", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32")
				luks2SetJSON(t, img, `"memory":32`, `"memory":4194304`)
				return img
			}},
		{name: "luks1 2^32 iterations", want: "iterations", key: true,
			make: func(t *testing.T, e *env, dir string) string {
				img := luksImage(t, e, dir, "luks1", "--pbkdf-force-iterations", "1000")
				patchFile(t, img, func(b []byte) { binary.BigEndian.PutUint32(b[208+4:], 0xffffffff) })
				return img
			}},
	}
}

// daemonRSS returns the daemon's peak resident memory (VmHWM).
func (e *env) daemonRSS() int64 {
	pid := e.daemonPID()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		e.t.Fatalf("daemon status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	e.t.Fatal("no VmHWM in the daemon's status")
	return 0
}

// TestHostileImages feeds every hostile image to vdisk serve, info,
// convert and the daemon's open: each is refused with a message naming
// the problem, no secret byte reaches anyone, memory stays bounded, and
// the daemon serves another client throughout. With --backing-dir naming
// the directory a refused file lies in, the image opens and reads
// through (the opt-in works).
func TestHostileImages(t *testing.T) {
	e := newEnv(t)
	good := filepath.Join(e.dir, "good.img")
	e.open(good, "--size", "4M")
	e.must("close", good)

	// Another client opens, lists and closes a good disk the whole time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, errs, code := e.run("open", good); code != 0 {
				t.Errorf("another client's open during the hostile opens: %s", errs)
				return
			}
			if _, errs, code := e.run("list"); code != 0 {
				t.Errorf("list during the hostile opens: %s", errs)
			}
			if _, errs, code := e.run("close", good); code != 0 {
				t.Errorf("close during the hostile opens: %s", errs)
				return
			}
			rounds++
		}
	}()

	for i, hc := range hostileCases(e) {
		t.Run(hc.name, func(t *testing.T) {
			e := *e
			e.t = t
			dir := filepath.Join(e.dir, fmt.Sprintf("hostile%d", i))
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			img := hc.make(t, &e, dir)
			var key []string
			if hc.key {
				key = []string{"--key-file", filepath.Join(dir, "key")}
			}
			out := filepath.Join(dir, "out.raw")
			for _, args := range [][]string{
				append([]string{"serve", "--unix", filepath.Join(dir, "nbd.sock")}, append(key, img)...),
				append([]string{"info"}, img),
				append([]string{"convert", "-O", "raw"}, append(key, img, out)...),
				append([]string{"open"}, append(key, img)...),
			} {
				if hc.key && args[0] == "info" {
					continue // info reads no keyslot
				}
				start := time.Now()
				var rss int64
				stdout, stderr, code := e.runFor(hostileTimeout, &rss, nil, bin, args...)
				took := time.Since(start) // logged for the record, never asserted
				if code == 0 {
					t.Errorf("vdisk %s: accepted the hostile image: %s", args[0], stdout)
					if args[0] == "open" {
						e.run("close", img)
					}
					continue
				}
				if !strings.Contains(stderr, hc.want) {
					t.Errorf("vdisk %s: error %q does not say %q", args[0], strings.TrimSpace(stderr), hc.want)
				}
				if strings.Contains(stdout+stderr, "SECRET!") {
					t.Errorf("vdisk %s showed the secret file's bytes", args[0])
				}
				if rss > maxHostileRSS {
					t.Errorf("vdisk %s: peak RSS %d MiB", args[0], rss>>20)
				}
				t.Logf("vdisk %s: refused in %s, peak RSS %d MiB: %s", args[0], took.Round(time.Millisecond), rss>>20, strings.TrimSpace(stderr))
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a refused convert left %s behind", out)
			}
			if hc.trust == nil {
				return
			}
			// The opt-in: trusting the directory opens the chain.
			trust := hc.trust(dir)
			e.must("convert", "--backing-dir", trust, "-O", "raw", img, out)
			if got := readFile(t, out); !bytes.Contains(got, []byte("SECRET!")) {
				t.Errorf("with --backing-dir %s the backing data is not read through", trust)
			}
			dev, _ := e.open("--backing-dir", trust, img)
			if got := readFile(t, dev); !bytes.Contains(got, []byte("SECRET!")) {
				t.Errorf("open --backing-dir %s: the backing data is not read through", trust)
			}
			e.must("close", img)
		})
	}
	close(stop)
	wg.Wait()
	if rounds == 0 {
		t.Error("the other client never completed an open, list and close")
	}
	if rss := e.daemonRSS(); rss > maxHostileRSS {
		t.Errorf("daemon peak RSS %d MiB", rss>>20)
	}
	t.Logf("the other client completed %d open/list/close rounds meanwhile", rounds)
}

// TestChainInOneDirectory: chains qemu-img made inside one directory, with
// relative names and recorded formats, open with no flag.
func TestChainInOneDirectory(t *testing.T) {
	e := newEnv(t)
	dir := e.dir
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte("BASEDATA"), 1<<17), 0o600); err != nil {
		t.Fatal(err)
	}
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", filepath.Join(dir, "mid.qcow2"))
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2", filepath.Join(dir, "sub", "top.qcow2"))
	// sub/top names ../mid: outside its own directory, so refused without
	// the opt-in; mid names base beside it.
	e.wantFail(nil, "outside", "convert", "-O", "raw", filepath.Join(dir, "sub", "top.qcow2"), filepath.Join(dir, "x.raw"))
	top := filepath.Join(dir, "top.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	dev, _ := e.open(top)
	if got := readFile(t, dev); !bytes.Equal(got[:1<<20], readFile(t, base)) {
		t.Error("the chain does not read through to the base")
	}
	e.must("close", top)
}

// TestCreatedImagesAre0600: every image vdisk create makes is readable by
// its owner only.
func TestCreatedImagesAre0600(t *testing.T) {
	e := newEnv(t)
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, f := range []string{"raw", "qcow2", "vhd", "vhdx", "vdi", "vmdk"} {
		img := filepath.Join(e.dir, "new."+f)
		e.must("create", "-f", f, "--size", "4M", img)
		if got := strings.TrimSpace(sh(t, "stat", "-c", "%a", img)); got != "600" {
			t.Errorf("%s: mode %s, want 600", f, got)
		}
	}
}
