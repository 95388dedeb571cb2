package qcow2

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"vdisk/internal/image"
	"vdisk/internal/image/imagetest"
)

// qemuCheckJSON runs qemu-img check --output json.
func qemuCheckJSON(t *testing.T, path string) (res struct {
	Corruptions, Leaks int
	Allocated          int64 `json:"allocated-clusters"`
	Fragmented         int64 `json:"fragmented-clusters"`
	End                int64 `json:"image-end-offset"`
}) {
	t.Helper()
	out, _ := exec.Command("qemu-img", "check", "--output", "json", path).Output()
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("qemu-img check json %q: %v", out, err)
	}
	return res
}

// TestCheckMatchesQemu damages refcounts and copied flags of an image with
// a snapshot at random and compares Check's counts with qemu-img check's.
func TestCheckMatchesQemu(t *testing.T) {
	imagetest.NeedTool(t, "qemu-img")
	imagetest.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.qcow2")
	imagetest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", orig, "1M")
	imagetest.Run(t, "qemu-io", "-c", "write -P 1 0 100k", "-c", "write -P 3 600k 50k", orig)
	imagetest.Run(t, "qemu-img", "snapshot", "-c", "s1", orig)
	imagetest.Run(t, "qemu-io", "-c", "write -P 2 0 20k", "-c", "write -z 300k 8k", orig)
	origRaw := qemuRaw(t, orig)
	snapCopy := filepath.Join(dir, "snap.qcow2")
	imagetest.Run(t, "cp", orig, snapCopy)
	imagetest.Run(t, "qemu-img", "snapshot", "-a", "s1", snapCopy)
	snapRaw := qemuRaw(t, snapCopy)
	base, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	rb := int64(be.Uint64(base[be.Uint64(base[48:]):])) // first refcount block
	l1 := int64(be.Uint64(base[40:]))
	l2 := int64(be.Uint64(base[l1:]) & offsetMask)
	clusters := int64(len(base)) / 4096
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 24 {
		b := append([]byte(nil), base...)
		var what string
		switch i % 3 {
		case 0, 1: // a refcount changed
			cl := r.Int64N(clusters + 4)
			v := uint16(r.IntN(4))
			be.PutUint16(b[rb+cl*2:], v)
			what = fmt.Sprintf("refcount of cluster %d = %d", cl, v)
		case 2: // a copied flag flipped
			j := r.Int64N(30)
			e := be.Uint64(b[l2+j*8:]) ^ flagCopied
			be.PutUint64(b[l2+j*8:], e)
			what = fmt.Sprintf("L2 entry %d = %#x", j, e)
		}
		t.Run(what, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "img.qcow2", b)
			q := qemuCheckJSON(t, p)
			ours, err := checkPath(p, image.CheckOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("vdisk %d/%d qemu %d/%d", ours.Corruptions, ours.Leaks, q.Corruptions, q.Leaks)
			if ours.Corruptions != q.Corruptions || ours.Leaks != q.Leaks {
				t.Errorf("vdisk: %d corruptions, %d leaks; qemu-img: %d, %d\n%v", ours.Corruptions, ours.Leaks, q.Corruptions, q.Leaks, ours.Messages)
			}
			if i == 0 && (ours.AllocatedClusters != q.Allocated || ours.FragmentedClusters != q.Fragmented) {
				t.Errorf("vdisk: %d allocated, %d fragmented; qemu-img: %d, %d", ours.AllocatedClusters, ours.FragmentedClusters, q.Allocated, q.Fragmented)
			}
			// --repair all leaves what qemu-img check calls clean, with
			// the disk and the snapshot as they were.
			fixed, err := checkPath(p, image.CheckOptions{RepairAll: true})
			if err != nil {
				t.Fatalf("repair all: %v", err)
			}
			if fixed.CorruptionsFixed != ours.Corruptions || fixed.LeaksFixed != ours.Leaks {
				t.Errorf("repair all fixed %d corruptions, %d leaks; found %d, %d", fixed.CorruptionsFixed, fixed.LeaksFixed, ours.Corruptions, ours.Leaks)
			}
			qemuCheck(t, p)
			if again, err := checkPath(p, image.CheckOptions{}); err != nil || !again.Clean() {
				t.Fatalf("after repair all: %v %v", again.Messages, err)
			}
			imagetest.MustEqual(t, "disk after repair all", qemuRaw(t, p), origRaw)
			imagetest.Run(t, "qemu-img", "snapshot", "-a", "s1", p)
			imagetest.MustEqual(t, "snapshot after repair all", qemuRaw(t, p), snapRaw)
		})
	}
	q := qemuCheckJSON(t, orig)
	ours, err := checkPath(orig, image.CheckOptions{})
	if err != nil || !ours.Clean() || ours.AllocatedClusters != q.Allocated || ours.FragmentedClusters != q.Fragmented || ours.ImageEndOffset != q.End {
		t.Errorf("clean image: vdisk %+v, qemu-img %+v (%v)", ours, q, err)
	}
}
