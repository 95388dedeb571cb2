package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"vdisk/internal/api"
)

// allocated returns the bytes of storage the file uses.
func allocated(t *testing.T, name string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestDiscardFreesBlocks(t *testing.T) {
	for _, via := range vias {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			img := filepath.Join(e.dir, "trim.img")
			dev, _ := e.open(img, "--size", "64M", "--via", via)
			sh(t, "dd", "if=/dev/urandom", "of="+dev, "bs=1M", "count=32", "oflag=direct", "conv=fsync", "status=none")
			if a := allocated(t, img); a < 32<<20 {
				t.Fatalf("after writing 32 MiB the image uses %d bytes", a)
			}
			sh(t, "blkdiscard", dev)
			if a := allocated(t, img); a > 1<<20 {
				t.Fatalf("after blkdiscard the image still uses %d bytes", a)
			}

			// fstrim on a mounted file system frees a deleted file's blocks.
			mnt := filepath.Join(e.dir, "mnt")
			sh(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev)
			mount(t, dev, mnt)
			writeFiles(t, mnt, 24<<20)
			sh(t, "sync")
			before := allocated(t, img)
			if err := os.Remove(filepath.Join(mnt, "f0.bin")); err != nil {
				t.Fatal(err)
			}
			sh(t, "sync")
			sh(t, "fstrim", mnt)
			after := allocated(t, img)
			if before-after < 20<<20 {
				t.Fatalf("fstrim freed %d bytes (from %d to %d), want about 24 MiB", before-after, before, after)
			}
			sh(t, "umount", mnt)
			e.must("close", img)
		})
	}
}

func TestSeveralDisks(t *testing.T) {
	e := newEnv(t)
	type disk struct{ img, via, dev, id string }
	disks := []*disk{{img: "a.img", via: "loop"}, {img: "b.img", via: "fuse"}, {img: "c.img", via: "loop"}}
	for _, d := range disks {
		d.img = filepath.Join(e.dir, d.img)
		d.dev, d.id = e.open(d.img, "--size", "8M", "--via", d.via)
	}
	// Each device writes its own image only.
	for _, d := range disks {
		f, err := os.OpenFile(d.dev, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("disk "+d.id), 4096); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var l api.DiskList
	if err := json.Unmarshal([]byte(e.must("list", "--json")), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Disks) != 3 {
		t.Fatalf("list has %d disks", len(l.Disks))
	}
	seen := map[string]bool{}
	for i, d := range disks {
		got := l.Disks[i]
		if got.File != d.img || got.Device != d.dev || got.ID != d.id || got.Via != d.via || got.ID != api.DiskID(d.img) {
			t.Errorf("list[%d] = %+v, want %+v", i, got, *d)
		}
		if seen[got.Device] || seen[got.ID] {
			t.Errorf("device or id shared: %+v", got)
		}
		seen[got.Device], seen[got.ID] = true, true
	}
	table := e.must("list")
	if !strings.HasPrefix(table, "ID ") || strings.Count(table, "\n") != 4 {
		t.Fatalf("list table:\n%s", table)
	}
	// info by device answers the same record as list.
	var info api.Disk
	if err := json.Unmarshal([]byte(e.must("info", "--json", disks[1].dev)), &info); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info, l.Disks[1]) {
		t.Fatalf("info %+v, list %+v", info, l.Disks[1])
	}
	e.must("close", "--all")
	for _, d := range disks {
		b := make([]byte, 5+len(d.id))
		f, err := os.Open(d.img)
		if err != nil {
			t.Fatal(err)
		}
		f.ReadAt(b, 4096)
		f.Close()
		if string(b) != "disk "+d.id {
			t.Errorf("%s holds %q", d.img, b)
		}
	}
	// Ids are stable: the same files get the same ids again.
	for _, d := range disks {
		if _, id := e.open(d.img, "--via", d.via); id != d.id {
			t.Errorf("%s reopened with id %s, was %s", d.img, id, d.id)
		}
	}
	e.must("close", "--all")
	if out := e.must("list"); strings.Count(out, "\n") != 1 {
		t.Fatalf("list after close --all:\n%s", out)
	}
}
