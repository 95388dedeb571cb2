package qcow2

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// TestQemuSpecialImages covers qcow2 features vdisk only partly supports:
// persistent bitmaps (checked clean, cleared before writing as the spec
// requires), LUKS encryption and external data files (described by Info,
// refused by Open with a message naming them).
func TestQemuSpecialImages(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()

	t.Run("bitmap", func(t *testing.T) {
		p := filepath.Join(dir, "bitmap.qcow2")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "4M")
		imagetest.Run(t, "qemu-img", "bitmap", "--add", p, "b0")
		imagetest.Run(t, "qemu-io", "-c", "write -P 7 0 128k", p)
		if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
			t.Fatalf("check of an image with a bitmap: %v %v", res.Messages, err)
		}
		want := qemuRaw(t, p)
		img := openImage(t, p, image.OpenOptions{})
		imagetest.MustEqual(t, "read", imagetest.ReadAll(t, img), want)
		if _, err := img.WriteAt([]byte("x"), 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		qemuCheck(t, p)
		if out := imagetest.Run(t, "qemu-img", "info", p); !strings.Contains(out, "in-use") {
			t.Fatalf("bitmap not marked in use after an untracked write:\n%s", out)
		}
	})

	t.Run("luks", func(t *testing.T) {
		p := filepath.Join(dir, "luks.qcow2")
		// qemu-img's PBKDF calibration fails now and then on a loaded
		// machine ("Unable to get accurate CPU usage"): retry with longer
		// calibration times.
		var out []byte
		var err error
		for _, ms := range []string{"10", "100", "500"} {
			out, err = exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=pw",
				"-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time="+ms, p, "1M").CombinedOutput()
			if err == nil {
				break
			}
			os.Remove(p)
		}
		if err != nil {
			t.Fatalf("qemu-img create (LUKS): %v\n%s", err, out)
		}
		fa, err := infoPath(p)
		if err != nil || !fa.Encrypted {
			t.Fatalf("info %+v %v", fa, err)
		}
		if _, err := openPath(p, image.OpenOptions{ReadOnly: true}); !errors.Is(err, image.ErrUnsupported) || !strings.Contains(err.Error(), "LUKS") {
			t.Fatalf("open: %v", err)
		}
		if res, err := checkPath(p, image.CheckOptions{}); err != nil || !res.Clean() {
			t.Fatalf("check of a LUKS image: %v %v", res.Messages, err)
		}
	})

	t.Run("data file", func(t *testing.T) {
		p := filepath.Join(dir, "ext.qcow2")
		imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "ext.raw"), p, "1M")
		fa, err := infoPath(p)
		if err != nil || !strings.HasSuffix(fa.DataFile, "ext.raw") {
			t.Fatalf("info %+v %v", fa, err)
		}
		if _, err := openPath(p, image.OpenOptions{ReadOnly: true}); !errors.Is(err, image.ErrUnsupported) || !strings.Contains(err.Error(), "ext.raw") {
			t.Fatalf("open: %v", err)
		}
	})
}
