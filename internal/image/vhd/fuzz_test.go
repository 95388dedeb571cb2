package vhd

import (
	"testing"

	"vdisk/internal/image/imagetest"
)

// FuzzOpen opens arbitrary bytes as a VHD: it must never panic, hang or
// allocate without bound, and what opens must read and describe its
// extents without error. Seeds: testdata/*.vhd and a small image made here.
func FuzzOpen(f *testing.F) {
	imagetest.FuzzFormat(f, Name, "testdata/*.vhd", smallImage(f))
}
