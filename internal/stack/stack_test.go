package stack

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt/luks"
	"vdisk/internal/image/imagetest"
)

// cheapKDF keeps the tests' key derivation fast.
var cheapKDF = luks.FormatOptions{PBKDF: luks.PBKDFOptions{Type: "argon2id", Iterations: 4, MemoryKiB: 32 << 10, Parallel: 1}}

func pass(p string) Passphrase {
	return func(string) ([]byte, error) { return []byte(p), nil }
}

func TestOpenCreatesRawAndProbes(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	d, err := Open(context.Background(), img, Options{Create: true, Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Created || d.Format != "raw" || d.Device.Size() != 4<<20 || d.Encrypted {
		t.Fatalf("created disk: %+v size %d", d, d.Device.Size())
	}
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = Open(context.Background(), img, Options{Create: true, Size: 1 << 20, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Device.Close()
	if d.Created || d.Device.Size() != 4<<20 {
		t.Fatalf("reopened: created %v size %d", d.Created, d.Device.Size())
	}
	if _, err := d.Device.WriteAt([]byte{1}, 0); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write to a read-only stack: %v", err)
	}
	if _, err := Open(context.Background(), filepath.Join(dir, "none.img"), Options{Create: true, ReadOnly: true}); err == nil {
		t.Fatal("read-only open created an image")
	}
}

// TestEncryptedRawAndQcow2 creates LUKS2 images as the top layer of raw and
// qcow2, checks cryptsetup accepts the passphrase, and that the data reads
// back only through the right passphrase.
func TestEncryptedRawAndQcow2(t *testing.T) {
	imagetest.NeedTool(t, "cryptsetup")
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "secret."+format)
			enc := EncryptOptions{Type: "luks2", Passphrase: []byte("hunter2"), LUKS: cheapKDF}
			if err := Create(context.Background(), img, CreateOptions{Format: format, Size: 8 << 20, Encrypt: enc}); err != nil {
				t.Fatal(err)
			}
			d, err := Open(context.Background(), img, Options{Passphrase: pass("hunter2")})
			if err != nil {
				t.Fatal(err)
			}
			if !d.Encrypted || d.Format != format || d.Device.Size() != 8<<20 {
				t.Fatalf("opened: %+v, size %d", d, d.Device.Size())
			}
			secret := bytes.Repeat([]byte("plaintext!"), 1000)
			if _, err := d.Device.WriteAt(secret, 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := d.Device.Close(); err != nil {
				t.Fatal(err)
			}

			if format == "raw" {
				raw, _ := os.ReadFile(img)
				if bytes.Contains(raw, []byte("plaintext!")) {
					t.Fatal("plaintext is in the image file")
				}
				cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--type", "luks2", "--key-file", "-", img)
				cmd.Stdin = strings.NewReader("hunter2")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("cryptsetup --test-passphrase: %v %s", err, out)
				}
			} else {
				imagetest.Run(t, "qemu-img", "check", "-f", "qcow2", img)
			}

			if _, err := Open(context.Background(), img, Options{}); !errors.Is(err, ErrNeedPassphrase) {
				t.Fatalf("open without a passphrase: %v", err)
			}
			if _, err := Open(context.Background(), img, Options{Passphrase: pass("wrong")}); !errors.Is(err, luks.ErrWrongPassphrase) {
				t.Fatalf("open with a wrong passphrase: %v", err)
			}
			ct, err := Open(context.Background(), img, Options{KeepEncrypted: true, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if ct.Encrypted || !luks.IsLUKS(ct.Device) {
				t.Fatalf("KeepEncrypted: encrypted %v, LUKS header visible %v", ct.Encrypted, luks.IsLUKS(ct.Device))
			}
			ct.Device.Close()

			d, err = Open(context.Background(), img, Options{Passphrase: pass("hunter2"), ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Device.Close()
			got := make([]byte, len(secret))
			if _, err := d.Device.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("read back through the passphrase: %v, equal %v", err, bytes.Equal(got, secret))
			}
		})
	}
}

// TestFormatLUKS: qemu's "-f luks" is a LUKS volume in a raw file: it
// creates one, opens one, and refuses a raw file without a LUKS header.
func TestFormatLUKS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "v.luks")
	err := Create(ctx, img, CreateOptions{Format: LUKS, Size: 4 << 20,
		Encrypt: EncryptOptions{Passphrase: []byte("pw"), LUKS: cheapKDF}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(ctx, img, Options{Format: LUKS, Passphrase: pass("pw")})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Encrypted || d.Format != "raw" || d.Device.Size() != 4<<20 {
		t.Fatalf("opened -f luks: encrypted %v, format %s, size %d", d.Encrypted, d.Format, d.Device.Size())
	}
	d.Device.Close()
	plain := filepath.Join(dir, "plain.img")
	if err := os.WriteFile(plain, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, plain, Options{Format: LUKS}); err == nil || !strings.Contains(err.Error(), "no LUKS header") {
		t.Fatalf("-f luks on a plain raw file: %v", err)
	}
}

// TestISOOpensReadOnlyShared: an ISO is opened read-only under a shared
// lock whatever the options say, so two disks serve one ISO at once, and
// one whose file cannot be written still opens.
func TestISOOpensReadOnlyShared(t *testing.T) {
	imagetest.NeedTool(t, "genisoimage")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "cd.iso")
	imagetest.Run(t, "genisoimage", "-quiet", "-o", iso, src)
	ctx := context.Background()
	a, err := Open(ctx, iso, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Device.Close()
	b, err := Open(ctx, iso, Options{})
	if err != nil {
		t.Fatalf("a second open of the ISO: %v", err)
	}
	defer b.Device.Close()
	if a.Format != "iso" || b.Format != "iso" {
		t.Fatalf("formats %s, %s", a.Format, b.Format)
	}
	fa, err := Info(ctx, iso, "", S3Options{})
	if err != nil || fa.Format != "iso" {
		t.Fatalf("Info of the open ISO: %+v, %v", fa, err)
	}
}
