package qcow2_test

import (
	"fmt"
	"os"
	"path/filepath"

	"vdisk/internal/image"
	_ "vdisk/internal/image/qcow2"
)

// Create an image, write into it, read it back and check it: through the
// image registry, which hands the format an image.File.
func Example() {
	dir, _ := os.MkdirTemp("", "qcow2-example")
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "disk.qcow2")
	if err := image.Create(p, image.CreateOptions{Format: "qcow2", Size: 64 << 20}); err != nil {
		fmt.Println(err)
		return
	}
	img, err := image.Open(p, image.OpenOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := img.WriteAt([]byte("hello, qcow2"), 1<<20); err != nil {
		fmt.Println(err)
	}
	buf := make([]byte, 12)
	img.ReadAt(buf, 1<<20)
	if err := img.Close(); err != nil {
		fmt.Println(err)
	}
	res, _ := image.Check(p, "qcow2", image.CheckOptions{})
	fmt.Printf("%s, clean: %v, %d allocated cluster(s)\n", buf, res.Clean(), res.AllocatedClusters)
	// Output: hello, qcow2, clean: true, 1 allocated cluster(s)
}
