package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// vias are the attach paths every data test runs on.
var vias = []string{"loop", "fuse"}

// writeFiles writes files of random bytes under dir and returns their
// SHA-256 by name.
func writeFiles(t *testing.T, dir string, sizes ...int) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for i, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		name := fmt.Sprintf("f%d.bin", i)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		sums[name] = hex.EncodeToString(s[:])
	}
	return sums
}

// checkFiles fails unless the files under dir have the sums.
func checkFiles(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for name, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		if got := hex.EncodeToString(s[:]); got != want {
			t.Errorf("%s: sha256 %s, want %s", name, got, want)
		}
	}
}

func TestFilesystemRoundTrip(t *testing.T) {
	for _, via := range vias {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "disk.img")
			mnt := filepath.Join(e.dir, "mnt")
			dev, id := e.open(img, "--size", "64M", "--via", via)
			sh(t, "mkfs.ext4", "-q", "-F", dev)
			mount(t, dev, mnt)
			sums := writeFiles(t, mnt, 3<<20, 100<<10, 1, 0)
			sh(t, "sync")
			sh(t, "umount", mnt)
			e.must("close", img)
			// Closed: the image file alone holds a clean file system.
			sh(t, "e2fsck", "-fn", img)

			dev2, id2 := e.open(img, "--via", via)
			if id2 != id {
				t.Fatalf("id changed across reopen: %s then %s", id, id2)
			}
			mount(t, dev2, mnt)
			checkFiles(t, mnt, sums)
			sh(t, "umount", mnt)
			sh(t, "e2fsck", "-fn", dev2)
			e.must("close", id2)
		})
	}
}

func TestFioVerify(t *testing.T) {
	if _, err := os.Stat("/usr/bin/fio"); err != nil {
		t.Skip("fio is not installed")
	}
	for _, via := range vias {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			dev, _ := e.open(filepath.Join(e.dir, "fio.img"), "--size", "64M", "--via", via)
			out := sh(t, "fio", "--name=verify", "--filename="+dev, "--direct=1", "--ioengine=libaio",
				"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16M", "--verify=crc32c",
				"--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
			if len(out) == 0 {
				t.Fatal("fio printed nothing")
			}
			e.must("close", dev)
		})
	}
}
