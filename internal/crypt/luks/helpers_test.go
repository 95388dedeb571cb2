package luks

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/xts"

	"vdisk/internal/blockdev"
	"vdisk/internal/image/imagetest"
)

// toolTimeout bounds each run of an external tool.
const toolTimeout = 2 * time.Minute

// fastKDF is a cheap argon2id for tests.
var fastKDF = PBKDFOptions{Type: "argon2id", Iterations: 4, MemoryKiB: 32, Parallel: 1}

// fastPBKDF2 is a cheap pbkdf2 for tests.
var fastPBKDF2 = PBKDFOptions{Type: "pbkdf2", Iterations: 1000}

// needTool skips the test when a tool is not installed, and fails it under
// CI=true (imagetest.NeedTool).
func needTool(t *testing.T, name string) {
	t.Helper()
	imagetest.NeedTool(t, name)
}

// run runs a command and returns its stdout, failing the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// tempImage creates a sparse file of size bytes and returns its path.
func tempImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vol.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// keyFile writes a key file and returns its path.
func keyFile(t *testing.T, name string, pass []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, pass, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// openFile opens an image as a Device, closed at the end of the test. It
// takes no flock: the tests run cryptsetup (which locks the image too) while
// it is open, and cryptsetup waits for locks.
func openFile(t *testing.T, path string) blockdev.Device {
	t.Helper()
	f, err := blockdev.OpenFile(path, blockdev.FileOptions{NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// dumpVolumeKey returns the volume key cryptsetup reads with a key file.
func dumpVolumeKey(t *testing.T, img, key string) []byte {
	t.Helper()
	out := run(t, "cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", key, img)
	_, after, ok := strings.Cut(out, "MK dump:")
	if !ok {
		t.Fatalf("no MK dump in\n%s", out)
	}
	var hexs strings.Builder
	for _, line := range strings.Split(after, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		for _, b := range f {
			if len(b) != 2 {
				break
			}
			hexs.WriteString(b)
		}
	}
	k, err := hex.DecodeString(hexs.String())
	if err != nil || len(k) == 0 {
		t.Fatalf("bad MK dump %q: %v", hexs.String(), err)
	}
	return k
}

// refCrypt encrypts (or decrypts) one sector independently of package
// crypt, with x/crypto/xts or crypto/cipher CBC; iv is the 512-byte sector
// number.
func refCrypt(t *testing.T, spec string, key, b []byte, iv uint64, encrypt bool) {
	t.Helper()
	switch spec {
	case "aes-xts-plain64":
		c, err := xts.NewCipher(aes.NewCipher, key)
		if err != nil {
			t.Fatal(err)
		}
		if encrypt {
			c.Encrypt(b, b, iv)
		} else {
			c.Decrypt(b, b, iv)
		}
	case "aes-cbc-essiv:sha256":
		blk, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(key)
		eb, _ := aes.NewCipher(h[:])
		ivb := make([]byte, 16)
		binary.LittleEndian.PutUint64(ivb, iv)
		eb.Encrypt(ivb, ivb)
		if encrypt {
			cipher.NewCBCEncrypter(blk, ivb).CryptBlocks(b, b)
		} else {
			cipher.NewCBCDecrypter(blk, ivb).CryptBlocks(b, b)
		}
	default:
		t.Fatalf("no reference for %s", spec)
	}
}

// memDev is a memory device for tests that need no cryptsetup.
func memDev(size int64) blockdev.Device { return blockdev.NewMem(size) }
