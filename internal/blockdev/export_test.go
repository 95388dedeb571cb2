//go:build linux

package blockdev

// ForceDirectAlign makes a direct File act as if its file system wanted
// align-byte alignment (any multiple of the real one works), so that tests
// on a 512-byte file system reach the 4096-byte paths too.
func ForceDirectAlign(f *File, align int64) {
	f.align = align
	f.info.LogicalBlockSize = uint32(align)
	f.info.PhysicalBlockSize = max(f.info.PhysicalBlockSize, uint32(align))
}
