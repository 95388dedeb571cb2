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
