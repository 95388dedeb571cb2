package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format, to ask which have a LayerStatus
	"vdisk/internal/image/imagetest"
	"vdisk/internal/nbd/nbdtest"
	"vdisk/internal/storage/objstore/s3/s3test"
)

// mapCase is one image for TestMap: made by qemu tools in dir, it
// returns the image to map; args are map's further arguments (both
// tools take them). base, when set, is a format whose image is the
// bottom of the chain: the case needs that format's LayerStatus.
type mapCase struct {
	name string
	make func(t *testing.T, dir string) string
	args []string
	base string
}

// qimg and qio run the system qemu-img and qemu-io, failing t.
func qimg(t *testing.T, args ...string)            { t.Helper(); sh(t, "qemu-img", args...) }
func qio(t *testing.T, img string, cmds ...string) { t.Helper(); qioF(t, "", img, cmds...) }

// qioF runs qemu-io's commands cmds on img in format ("" probes).
func qioF(t *testing.T, format, img string, cmds ...string) {
	t.Helper()
	var args []string
	if format != "" {
		args = append(args, "-f", format)
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	sh(t, "qemu-io", append(args, img)...)
}

// qcow2Img makes dir/name, a qcow2 image of size with options opts
// (backing file and format included) and qemu-io's commands cmds.
func qcow2Img(t *testing.T, dir, name, size, opts string, cmds ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	qimg(t, append(args, p, size)...)
	if len(cmds) > 0 {
		qio(t, p, cmds...)
	}
	return p
}

// baseImg makes dir/name in format (qemu's name) with data written.
func baseImg(t *testing.T, dir, name, format, size string, cmds ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	qimg(t, "create", "-q", "-f", format, p, size)
	if len(cmds) > 0 {
		qioF(t, format, p, cmds...)
	}
	return p
}

var mapCases = []mapCase{
	{name: "raw sparse", make: func(t *testing.T, dir string) string {
		return baseImg(t, dir, "r.raw", "raw", "4M", "write -P 1 1M 64k", "write -P 2 3M 4k", "write -z 2M 64k")
	}},
	{name: "raw empty", make: func(t *testing.T, dir string) string {
		return baseImg(t, dir, "e.raw", "raw", "1M")
	}},
	{name: "qcow2 kinds", make: func(t *testing.T, dir string) string {
		return qcow2Img(t, dir, "k.qcow2", "8M", "",
			"write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 128k 192k", // compressed twice, then data
			"write -z 512k 64k",                     // zero, no storage
			"write -P 4 1M 128k", "write -z 1M 64k", // zero keeping its storage
			"write -P 5 2M 64k", "discard 2M 64k", // discarded
			"write -P 6 7M 1M")
	}},
	{name: "qcow2 v2", make: func(t *testing.T, dir string) string {
		return qcow2Img(t, dir, "v2.qcow2", "4M", "compat=0.10", "write -P 1 64k 64k", "write -z 1M 64k")
	}},
	{name: "qcow2 metadata preallocation", make: func(t *testing.T, dir string) string {
		return qcow2Img(t, dir, "pm.qcow2", "8M", "preallocation=metadata", "write -P 1 1M 64k", "write -P 2 4M 4k")
	}},
	{name: "qcow2 falloc preallocation", make: func(t *testing.T, dir string) string {
		return qcow2Img(t, dir, "pf.qcow2", "4M", "preallocation=falloc", "write -P 1 1M 64k")
	}},
	{name: "qcow2 extended l2", make: func(t *testing.T, dir string) string {
		return qcow2Img(t, dir, "x.qcow2", "4M", "extended_l2=on",
			"write -P 1 0 2k", "write -P 2 6k 4k", "write -z 64k 8k", "write -P 3 128k 64k", "write -z 136k 2k",
			"write -c -P 4 1M 64k")
	}},
	{name: "qcow2 extended l2 over backing", make: func(t *testing.T, dir string) string {
		qcow2Img(t, dir, "xb.qcow2", "4M", "", "write -P 9 0 1M")
		return qcow2Img(t, dir, "xo.qcow2", "4M", "extended_l2=on,backing_file=xb.qcow2,backing_fmt=qcow2",
			"write -P 1 2k 2k", "write -z 16k 4k", "write -P 2 1M 8k")
	}},
	{name: "qcow2 internal snapshot", make: func(t *testing.T, dir string) string {
		p := qcow2Img(t, dir, "s.qcow2", "4M", "", "write -P 1 0 256k", "write -P 2 1M 64k")
		qimg(t, "snapshot", "-c", "s1", p)
		qio(t, p, "write -P 3 64k 64k", "discard 1M 64k", "write -P 4 2M 64k")
		return p
	}},
	{name: "qcow2 larger than backing", make: func(t *testing.T, dir string) string {
		qcow2Img(t, dir, "sb.qcow2", "1M", "", "write -P 1 0 1M")
		return qcow2Img(t, dir, "lo.qcow2", "4M", "backing_file=sb.qcow2,backing_fmt=qcow2", "write -P 2 64k 64k", "write -P 3 3M 64k")
	}},
	{name: "qcow2 over raw shorter", make: func(t *testing.T, dir string) string {
		baseImg(t, dir, "rb.raw", "raw", "1536k", "write -P 1 0 64k", "write -P 2 1M 64k")
		return qcow2Img(t, dir, "ro.qcow2", "4M", "backing_file=rb.raw,backing_fmt=raw", "write -P 3 1M 4k")
	}},
	{name: "chain of three qcow2", make: chain3("qcow2")},
	{name: "chain raw base", make: chain3("raw")},
	{name: "chain start and length", make: chain3("qcow2"), args: []string{"--start-offset", "100k", "--max-length", "2M"}},
	{name: "start past the end", make: chain3("qcow2"), args: []string{"--start-offset", "64M"}},
	{name: "zero length", make: chain3("raw"), args: []string{"--max-length", "0"}},
	{name: "luks", make: func(t *testing.T, dir string) string {
		// cryptsetup with a fixed iteration count, not qemu-img create -f
		// luks: qemu calibrates its PBKDF by CPU time and fails now and
		// then with "Unable to get accurate CPU usage".
		imagetest.NeedTool(t, "cryptsetup")
		p := filepath.Join(dir, "l.luks")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 4<<20); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("cryptsetup", "luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations", "1000",
			"--key-file", "-", p)
		cmd.Stdin = strings.NewReader("pw")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup luksFormat: %v\n%s", err, out)
		}
		sh(t, "qemu-io", "--object", "secret,id=s0,data=pw", "--image-opts", "-c", "write -P 1 64k 64k",
			"driver=luks,key-secret=s0,file.filename="+p)
		return p
	}, args: []string{"-f", "raw"}},
	{name: "iso", make: func(t *testing.T, dir string) string {
		imagetest.NeedTool(t, "genisoimage")
		src := filepath.Join(dir, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte(strings.Repeat("vdisk map\n", 5000)), 0o644); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "c.iso")
		sh(t, "genisoimage", "-quiet", "-o", p, src)
		return p
	}},
	{name: "qcow2 over iso", make: func(t *testing.T, dir string) string {
		imagetest.NeedTool(t, "genisoimage")
		src := filepath.Join(dir, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		sh(t, "genisoimage", "-quiet", "-o", filepath.Join(dir, "b.iso"), src)
		return qcow2Img(t, dir, "oi.qcow2", "1M", "backing_file=b.iso,backing_fmt=raw", "write -P 3 0 4k")
	}},
	{name: "qcow2 over vhdx", base: "vhdx", make: overBase("vhdx")},
	{name: "qcow2 over vmdk", base: "vmdk", make: overBase("vmdk")},
	{name: "qcow2 over vdi", base: "vdi", make: overBase("vdi")},
	{name: "qcow2 over vhd", base: "vpc", make: overBase("vpc")},
}

// chain3 makes base (qcow2 or raw) <- mid.qcow2 <- top.qcow2.
func chain3(baseFmt string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		base := "base." + baseFmt
		baseImg(t, dir, base, baseFmt, "4M", "write -P 1 0 1M", "write -P 2 3M 512k")
		qcow2Img(t, dir, "mid.qcow2", "4M", "backing_file="+base+",backing_fmt="+baseFmt,
			"write -P 3 512k 128k", "write -z 3M 64k", "write -c -P 4 2M 64k")
		return qcow2Img(t, dir, "top.qcow2", "4M", "backing_file=mid.qcow2,backing_fmt=qcow2",
			"write -P 5 64k 64k", "write -z 2M 32k", "discard 3M 64k")
	}
}

// overBase makes a qcow2 overlay over an image in format (qemu's name).
func overBase(format string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		base := "b." + format
		baseImg(t, dir, base, format, "8M", "write -P 1 0 1M", "write -P 2 5M 64k", "write -z 6M 1M")
		return qcow2Img(t, dir, "o.qcow2", "8M", "backing_file="+base+",backing_fmt="+format, "write -P 3 512k 64k")
	}
}

var compressedField = regexp.MustCompile(`, "compressed": (true|false)`)

// TestMap: vdisk map prints what qemu-img map prints, for images qemu
// made: --output=json equal text to qemu 10's, and to qemu 7.2's without
// "compressed" (7.2 does not print it); the human table equal to both;
// the same exit status.
func TestMap(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		imagetest.NeedTool(t, tool)
	}
	q10 := filepath.Join(nbdtest.Qemu10(t), "qemu-img")
	e := newEnv(t)
	for _, c := range mapCases {
		t.Run(c.name, func(t *testing.T) {
			if c.base != "" && !hasLayerStatus(t, c.base) {
				t.Skipf("vdisk's %s has no LayerStatus yet (it comes from another branch): its runs would map as raw", c.base)
			}
			e := *e
			e.t = t
			dir := t.TempDir()
			img := c.make(t, dir)
			compareMap(t, &e, q10, img, c.args...)
		})
	}
}

// hasLayerStatus reports whether vdisk's format (qemu's name) describes
// its own runs.
func hasLayerStatus(t *testing.T, format string) bool {
	p := filepath.Join(t.TempDir(), "probe."+format)
	qimg(t, "create", "-q", "-f", format, p, "1M")
	dev, err := image.Open(p, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer dev.Close()
	_, ok := dev.(image.Layer)
	return ok
}

// compareMap runs vdisk map and both qemu-imgs on img with args, in JSON
// and as a table, and compares.
func compareMap(t *testing.T, e *env, q10, img string, args ...string) {
	t.Helper()
	run := func(name string, a ...string) (string, string, int) {
		return e.runWith(nil, name, a...)
	}
	for _, output := range []string{"json", "human"} {
		a := append(append([]string{"map", "--output=" + output}, args...), img)
		got, gotErr, gotCode := e.run(a...)
		for _, q := range []string{"qemu-img", q10} {
			want, wantErr, wantCode := run(q, a...)
			g := got
			if output == "json" && q == "qemu-img" {
				g = compressedField.ReplaceAllString(got, "")
			}
			if g != want || gotCode != wantCode {
				t.Errorf("%s map --output=%s %s: vdisk (exit %d):\n%s%s\nqemu-img (exit %d):\n%s%s",
					filepath.Base(q), output, strings.Join(args, " "), gotCode, g, gotErr, wantCode, want, wantErr)
			}
		}
	}
}

// TestMapErrors: a missing image fails both with the same status; so
// does the table of an image with compressed clusters, after the same
// header, and with qemu's words.
func TestMapErrors(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-img")
	q10 := filepath.Join(nbdtest.Qemu10(t), "qemu-img")
	e := newEnv(t)
	dir := t.TempDir()
	c := qcow2Img(t, dir, "c.qcow2", "1M", "", "write -P 1 0 64k", "write -c -P 2 64k 64k")
	for _, a := range [][]string{
		{"map", filepath.Join(dir, "missing.qcow2")},
		{"map", "--output=json", filepath.Join(dir, "missing.qcow2")},
		{"map", c},
	} {
		got, gotErr, gotCode := e.run(a...)
		for _, q := range []string{"qemu-img", q10} {
			want, _, wantCode := e.runWith(nil, q, a...)
			if got != want || gotCode != wantCode || gotCode == 0 {
				t.Errorf("%v: vdisk exit %d %q (%s), %s exit %d %q", a, gotCode, got, gotErr, q, wantCode, want)
			}
		}
		if a[1] == c && !strings.Contains(gotErr, "File contains external, encrypted or compressed clusters.") {
			t.Errorf("%v: %s", a, gotErr)
		}
	}
}

// TestMapS3: a qcow2 image in an object store maps as qemu-img maps the
// file stored in its chunks; a raw one as qemu-img maps it served over
// NBD (its holes and data, at their own offsets).
func TestMapS3(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	srv := s3test.Need(t)
	withS3 := s3Env(srv)
	e := newEnv(t)
	dir := t.TempDir()
	src := qcow2Img(t, dir, "src.qcow2", "8M", "", "write -P 1 0 1M", "write -z 2M 64k", "write -P 2 5M 64k")
	prefix := fmt.Sprintf("e2e-map-%d", time.Now().UnixNano())
	url := "s3://" + srv.Bucket + "/" + prefix
	e.mustWith(withS3, "convert", "-O", "qcow2", src, url)
	stored := storedFile(t, srv, prefix)
	for _, output := range []string{"json", "human"} {
		got := e.mustWith(withS3, "map", "--output="+output, url)
		want := sh(t, "qemu-img", "map", "--output="+output, "-f", "qcow2", stored)
		if output == "json" {
			got = compressedField.ReplaceAllString(got, "")
		} else {
			got = strings.ReplaceAll(got, url, stored)
		}
		if got != want {
			t.Errorf("map --output=%s of %s:\n%s\nqemu-img map of the stored file:\n%s", output, url, got, want)
		}
	}

	rawURL := url + "-raw"
	e.mustWith(withS3, "create", "-f", "raw", "--size", "8M", "--s3-chunk-size", "64K", rawURL)
	uri, stop := serveS3(t, srv, rawURL)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 1 64k 64k", "-c", "write -P 2 1M 128k", "-c", "flush", uri)
	stop()
	got := e.mustWith(withS3, "map", "--output=json", rawURL)
	uri, stop = serveS3(t, srv, "--read-only", rawURL)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	want, err := exec.CommandContext(ctx, "qemu-img", "map", "--output=json", "-f", "raw", uri).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", uri, err)
	}
	if g := compressedField.ReplaceAllString(got, ""); g != string(want) {
		t.Errorf("map --output=json of %s:\n%s\nqemu-img map of its NBD export:\n%s", rawURL, g, want)
	}
	_ = os.Remove(stored)
}
