package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConvertRoundTrip converts a qemu-img-written qcow2 to raw and back to
// qcow2 with vdisk, and has qemu-img check and compare every step.
func TestConvertRoundTrip(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "64M")
	runTool(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 4k", "-c", "write -z 20M 2M",
		"-c", "write -P 0x33 63M 1M", src)

	raw := filepath.Join(dir, "out.raw")
	code, out, errs := run(t, "convert", src, raw)
	if code != 0 || !strings.Contains(out, "converted") {
		t.Fatalf("convert to raw: code %d, out %q, err %q", code, out, errs)
	}
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, raw)
	var st syscallStat
	if err := statBlocks(raw, &st); err != nil {
		t.Fatal(err)
	}
	if st.allocated > 8<<20 {
		t.Errorf("raw output allocates %d bytes for 3 MiB of data: not sparse", st.allocated)
	}

	back := filepath.Join(dir, "back.qcow2")
	if code, _, errs := run(t, "convert", "-O", "qcow2", "-p", raw, back); code != 0 {
		t.Fatalf("convert to qcow2: %s", errs)
	}
	runTool(t, "qemu-img", "check", "-f", "qcow2", back)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, back)

	full := filepath.Join(dir, "full.raw")
	if code, _, errs := run(t, "convert", "--sparse=false", src, full); code != 0 {
		t.Fatalf("convert --sparse=false: %s", errs)
	}
	if err := statBlocks(full, &st); err != nil {
		t.Fatal(err)
	}
	if st.allocated < 64<<20 {
		t.Errorf("--sparse=false output allocates only %d bytes", st.allocated)
	}
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, full)
}

func TestConvertErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a.img")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	exists := filepath.Join(dir, "b.img")
	if err := os.WriteFile(exists, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"destination exists", []string{"convert", src, exists}, "exists"},
		{"missing source", []string{"convert", filepath.Join(dir, "nope"), filepath.Join(dir, "c.img")}, "nope"},
		{"unknown output format", []string{"convert", "-O", "floppy", src, filepath.Join(dir, "d.img")}, "floppy"},
		{"bad workers", []string{"convert", "-W", "0", src, filepath.Join(dir, "e.img")}, "-W"},
		{"size mismatch with -n", []string{"convert", "-n", src, exists}, "destination"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := run(t, tc.args...)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("code %d, stderr %q; want %q", code, errs, tc.want)
			}
		})
	}
	if b, _ := os.ReadFile(exists); string(b) != "keep me" {
		t.Fatalf("an existing destination was changed: %q", b)
	}
	for _, n := range []string{"c.img", "d.img", "e.img"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("a failed convert left %s behind", n)
		}
	}
}

// TestConvertCompressed: convert -c writes a qcow2 (zlib by default, zstd
// on request) or a streamOptimized VMDK that qemu-img finds consistent,
// compressed and equal to the source, and is refused for other formats.
func TestConvertCompressed(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	text := []byte(strings.Repeat("compressible text for convert -c; ", 1<<16))
	if err := os.WriteFile(src, text, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(src, 32<<20+1024); err != nil { // a short last cluster
		t.Fatal(err)
	}
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 20M 1M", src)
	for _, tc := range []struct {
		name, format string
		args         []string
		want         string // in qemu-img info
	}{
		{"qcow2-zlib", "qcow2", nil, "compression type: zlib"},
		{"qcow2-zstd", "qcow2", []string{"-o", "compression_type=zstd"}, "compression type: zstd"},
		{"vmdk", "vmdk", nil, "create type: streamOptimized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out."+tc.format)
			args := append([]string{"convert", "-c", "-O", tc.format}, tc.args...)
			if code, _, errs := run(t, append(args, src, out)...); code != 0 {
				t.Fatalf("convert -c: %s", errs)
			}
			if tc.format == "qcow2" {
				if rep := runTool(t, "qemu-img", "check", out); !strings.Contains(rep, "compressed clusters") {
					t.Errorf("qemu-img check finds no compressed clusters:\n%s", rep)
				}
			}
			if info := runTool(t, "qemu-img", "info", out); !strings.Contains(info, tc.want) {
				t.Errorf("qemu-img info lacks %q:\n%s", tc.want, info)
			}
			runTool(t, "qemu-img", "compare", "-f", "raw", "-F", tc.format, src, out)
			fi, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() > 3<<20 {
				t.Errorf("compressed image is %d bytes for 2.3 MiB of text and 1 MiB of one byte", fi.Size())
			}
		})
	}
	if code, _, errs := run(t, "convert", "-c", "-O", "vdi", src, filepath.Join(dir, "x.vdi")); code == 0 || !strings.Contains(errs, "cannot store compressed") {
		t.Errorf("convert -c -O vdi: code %d, %q", code, errs)
	}
}
