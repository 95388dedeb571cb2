package image

// Facts is what `vdisk info` shows about an image; the JSON form is stable.
type Facts struct {
	Filename string `json:"filename"`
	Format   string `json:"format"`
	// VirtualSize is the size of the disk the image holds.
	VirtualSize int64 `json:"virtual-size"`
	// DiskSize is the storage the file really uses (allocated blocks).
	DiskSize    int64  `json:"actual-size"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	BackingFile string `json:"backing-filename,omitempty"`
	// BackingFormat is the format recorded for the backing file.
	BackingFormat string `json:"backing-filename-format,omitempty"`
	Dirty         bool   `json:"dirty-flag"`
	// Compat is the format version ("0.10" or "1.1" for qcow2).
	Compat          string     `json:"compat,omitempty"`
	RefcountBits    int        `json:"refcount-bits,omitempty"`
	LazyRefcounts   bool       `json:"lazy-refcounts,omitempty"`
	ExtendedL2      bool       `json:"extended-l2,omitempty"`
	CompressionType string     `json:"compression-type,omitempty"`
	Encrypted       bool       `json:"encrypted,omitempty"`
	Corrupt         bool       `json:"corrupt,omitempty"`
	DataFile        string     `json:"data-file,omitempty"`
	Snapshots       []Snapshot `json:"snapshots,omitempty"`
}

// Snapshot is one internal snapshot of an image.
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// VMStateSize is the size of the saved VM state, 0 for disk-only.
	VMStateSize uint64 `json:"vm-state-size"`
	// DateSec and DateNsec are when the snapshot was taken.
	DateSec  int64 `json:"date-sec"`
	DateNsec int64 `json:"date-nsec"`
	// VMClockNsec is how long the guest had been running.
	VMClockNsec int64 `json:"vm-clock-nsec"`
	// VirtualSize is the disk size when the snapshot was taken (0 if the
	// image does not record it).
	VirtualSize int64 `json:"virtual-size,omitempty"`
}

// CheckOptions say what Check does.
type CheckOptions struct {
	// RepairLeaks frees clusters that are allocated but unused.
	RepairLeaks bool
	// RepairAll also repairs what qemu-img check -r all does: refcounts
	// that are too low (rebuilt from the references) and wrong COPIED
	// flags. Damaged tables (offsets out of range) are not repairable.
	RepairAll bool
}

// CheckResult is what Check found, shaped like `qemu-img check --output
// json`.
type CheckResult struct {
	Filename string `json:"filename"`
	Format   string `json:"format"`
	// Corruptions counts errors that may lose data; Leaks clusters that
	// are allocated but unused (harmless, wasted space).
	Corruptions int `json:"corruptions"`
	Leaks       int `json:"leaks"`
	// CheckErrors counts metadata that could not even be read.
	CheckErrors int `json:"check-errors"`
	// LeaksFixed and CorruptionsFixed count what a repair fixed.
	LeaksFixed       int `json:"leaks-fixed,omitempty"`
	CorruptionsFixed int `json:"corruptions-fixed,omitempty"`
	// AllocatedClusters, TotalClusters, FragmentedClusters,
	// CompressedClusters describe the guest mapping.
	AllocatedClusters  int64 `json:"allocated-clusters"`
	TotalClusters      int64 `json:"total-clusters"`
	CompressedClusters int64 `json:"compressed-clusters"`
	FragmentedClusters int64 `json:"fragmented-clusters"`
	// ImageEndOffset is where the last used cluster ends.
	ImageEndOffset int64 `json:"image-end-offset"`
	// Messages names each problem, one line each.
	Messages []string `json:"messages,omitempty"`
}

// Clean reports whether nothing is wrong.
func (r *CheckResult) Clean() bool {
	return r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0
}
