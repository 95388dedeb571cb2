package luks

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestQemuLUKS1 round-trips data with qemu's LUKS driver: an image made by
// qemu-img and written by qemu-io reads back identically through our
// Device, and what our Device writes reads back identically through
// qemu-img convert.
func TestQemuLUKS1(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "q.luks")
	pass := "qemu-secret"
	secret := "secret,id=sec0,data=" + pass
	opts := "driver=luks,key-secret=sec0,file.filename=" + img
	// qemu-img's PBKDF calibration fails now and then on a loaded machine
	// ("Unable to get accurate CPU usage"): retry with longer calibration
	// times.
	var msg string
	var err error
	for _, ms := range []string{"10", "100", "500"} {
		if msg, err = runErr("qemu-img", "create", "-f", "luks", "--object", secret, "-o", "key-secret=sec0,iter-time="+ms, img, "8M"); err == nil {
			break
		}
		os.Remove(img)
	}
	if err != nil {
		t.Fatalf("qemu-img create -f luks: %v\n%s", err, msg)
	}
	run(t, "qemu-io", "--object", secret, "--image-opts", opts,
		"-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 4095k 3k", "-c", "write -P 0x11 7M 1M")

	d, err := Open(openFile(t, img), []byte(pass), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 8<<20 {
		t.Fatalf("size %d, qemu made 8 MiB", d.Size())
	}
	want := make([]byte, 8<<20)
	for i := range 1 << 20 {
		want[i] = 0x5a
	}
	for i := 4095 << 10; i < 4098<<10; i++ {
		want[i] = 0xa5
	}
	for i := 7 << 20; i < 8<<20; i++ {
		want[i] = 0x11
	}
	got := make([]byte, 8<<20)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:1<<20], want[:1<<20]) || !bytes.Equal(got[4095<<10:4098<<10], want[4095<<10:4098<<10]) ||
		!bytes.Equal(got[7<<20:], want[7<<20:]) {
		t.Fatal("what qemu-io wrote does not read back through our Device")
	}

	rng := rand.New(rand.NewPCG(3, 4))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	if _, err := d.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("an unaligned write"), 1000); err != nil {
		t.Fatal(err)
	}
	copy(want[1000:], "an unaligned write")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.raw")
	run(t, "qemu-img", "convert", "--object", secret, "--image-opts", opts, "-O", "raw", out)
	conv, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(conv, want) {
		t.Fatal("what our Device wrote does not read back through qemu-img convert")
	}
}
