package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEncryptedImageEndToEnd creates a LUKS2 image with vdisk create,
// checks cryptsetup accepts its passphrase, serves it decrypted to qemu-io,
// serves the ciphertext with --no-decrypt, and converts it to plain raw.
func TestEncryptedImageEndToEnd(t *testing.T) {
	needTools(t, "cryptsetup", "qemu-io", "nbdinfo")
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("correct horse"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "secret.img")
	code, out, errs := run(t, "create", "--encrypt", "luks2", "--key-file", key,
		"--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", img, "--size", "8M")
	if code != 0 || !strings.Contains(out, "encrypted (luks2)") {
		t.Fatalf("create --encrypt: code %d, out %q, err %q", code, out, errs)
	}
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", key, img)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup --test-passphrase: %v %s", err, b)
	}

	uri, stop := serving(t, "--key-file", key, img)
	if got := strings.TrimSpace(runTool(t, "nbdinfo", "--size", uri)); got != "8388608" {
		t.Fatalf("decrypted export size %s, want 8 MiB", got)
	}
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 128k", "-c", "flush", uri)
	if code, errs := stop(); code != 0 {
		t.Fatalf("serve: %d %s", code, errs)
	}
	if raw, _ := os.ReadFile(img); bytes.Contains(raw, bytes.Repeat([]byte{0x42}, 4096)) {
		t.Fatal("plaintext is in the image file")
	}

	if code, _, errs := run(t, "serve", "--unix", filepath.Join(dir, "s"), img); code == 0 || !strings.Contains(errs, "--key-file") {
		t.Fatalf("serve of an encrypted image without a key: code %d, %q", code, errs)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("wrong"), 0o600)
	if code, _, errs := run(t, "serve", "--unix", filepath.Join(dir, "s"), "--key-file", bad, img); code == 0 || !strings.Contains(errs, "passphrase") {
		t.Fatalf("serve with a wrong key: code %d, %q", code, errs)
	}
	cipherURI, _ := serving(t, "--no-decrypt", "--read-only", img)
	if got := strings.TrimSpace(runTool(t, "nbdinfo", "--size", cipherURI)); got != "25165824" {
		t.Fatalf("--no-decrypt export size %s, want 24 MiB (header + data)", got)
	}

	plain := filepath.Join(dir, "plain.raw")
	if code, _, errs := run(t, "convert", "--key-file", key, img, plain); code != 0 {
		t.Fatalf("convert of an encrypted image: %s", errs)
	}
	want := make([]byte, 8<<20)
	copy(want[1<<20:], bytes.Repeat([]byte{0x42}, 128<<10))
	if got, _ := os.ReadFile(plain); !bytes.Equal(got, want) {
		t.Fatal("decrypted copy differs from what qemu-io wrote")
	}
}

// TestResizeEncrypted: vdisk resize of encrypted images (raw and qcow2,
// made by vdisk, and a LUKS1 volume cryptsetup made) changes the decrypted
// disk by the size asked, without the passphrase; the data stays, and
// cryptsetup still opens the volume and sees the new size.
func TestResizeEncrypted(t *testing.T) {
	needTools(t, "cryptsetup", "qemu-io", "nbdinfo", "qemu-img")
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("resize me"), 0o600); err != nil {
		t.Fatal(err)
	}
	luks1 := filepath.Join(dir, "luks1.img")
	if err := os.WriteFile(luks1, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(luks1, 8<<20+2<<20); err != nil { // 2 MiB of LUKS1 header
		t.Fatal(err)
	}
	if b, err := exec.Command("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
		"--key-file", key, luks1).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup luksFormat: %v %s", err, b)
	}
	for _, tc := range []struct {
		name, format string
	}{{"raw", "raw"}, {"qcow2", "qcow2"}, {"cryptsetup-luks1", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			img := luks1
			if tc.format != "" {
				img = filepath.Join(dir, tc.name+".img")
				if code, _, errs := run(t, "create", "-f", tc.format, "--encrypt", "luks2", "--key-file", key,
					"--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", img, "--size", "8M"); code != 0 {
					t.Fatalf("create: %s", errs)
				}
			}
			uri, stop := serving(t, "--key-file", key, img)
			runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5e 7M 1M", "-c", "flush", uri)
			stop()
			if code, out, errs := run(t, "resize", img, "+8M"); code != 0 || !strings.Contains(out, "from 8M to 16M") {
				t.Fatalf("resize +8M: code %d, %q, %q", code, out, errs)
			}
			uri, stop = serving(t, "--key-file", key, img)
			if got := strings.TrimSpace(runTool(t, "nbdinfo", "--size", uri)); got != "16777216" {
				t.Fatalf("decrypted size after +8M: %s", got)
			}
			out := runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5e 7M 1M", "-c", "read -P 0 8M 8M", "-c", "write -P 0x6f 15M 1M", uri)
			if strings.Contains(out, "fail") {
				t.Fatalf("after the resize:\n%s", out)
			}
			stop()
			if tc.format != "qcow2" {
				if b, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", key, img).CombinedOutput(); err != nil {
					t.Fatalf("cryptsetup after the resize: %v %s", err, b)
				}
			} else {
				runTool(t, "qemu-img", "check", img)
			}
		})
	}
}
