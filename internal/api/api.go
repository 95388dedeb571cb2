package api

import "time"

// Version is the API version, the first element of every path.
const Version = "v1"

// Paths of the control API. Disks are addressed by their id.
const (
	// PathVersion answers GET with a VersionInfo: a cheap liveness probe.
	PathVersion = "/v1/version"
	// PathDisks answers GET with a DiskList and POST (an OpenRequest) with
	// the opened Disk.
	PathDisks = "/v1/disks"
	// PathDisk is the prefix of /v1/disks/{id}: GET returns the Disk,
	// DELETE (with ?force=true for a lazy detach) closes it and returns the
	// last record of the Disk.
	PathDisk = "/v1/disks/"
	// PathInspect answers POST (an InspectRequest) with an Image: the facts
	// of an image file, open or not.
	PathInspect = "/v1/inspect"
)

// Attach paths (Disk.Via, OpenRequest.Via).
const (
	// ViaLoop attaches a raw image file straight to a loop device.
	ViaLoop = "loop"
	// ViaFUSE exposes the device stack as one file in a FUSE mount and
	// attaches a loop device to that file.
	ViaFUSE = "fuse"
	// ViaNBD serves the device stack to the kernel's NBD client over
	// socketpairs (several connections): /dev/nbdN. A restarted daemon
	// takes the same device back (NBD_CMD_RECONFIGURE).
	ViaNBD = "nbd"
	// ViaUblk serves the device stack through the ublk driver:
	// /dev/ublkbN. A restarted daemon recovers the same device where the
	// kernel offers user recovery.
	ViaUblk = "ublk"
)

// IsVia reports whether v names an attach path.
func IsVia(v string) bool {
	switch v {
	case ViaLoop, ViaFUSE, ViaNBD, ViaUblk:
		return true
	}
	return false
}

// Disk states (Disk.State).
const (
	// StateOpen is a disk attached and serving.
	StateOpen = "open"
	// StateLocked is a disk the daemon had open before a restart and could
	// not reopen: another process holds the image's lock (or an object
	// store image's writer lease), or the image is encrypted and its
	// passphrase is gone with the old daemon. Opening it again (with the
	// passphrase) unlocks and attaches it; closing it forgets it.
	StateLocked = "locked"
	// StateDegraded is an open disk whose backend is failing: an object
	// store that stays unreachable, so that writes fail. Disk.Error says
	// why. The disk is still attached; it may recover.
	StateDegraded = "degraded"
	// StateMissing is a disk whose image file disappeared while the daemon
	// was down.
	StateMissing = "missing"
	// StateFailed is a disk the daemon could not restore for another
	// reason, given in Disk.Error.
	StateFailed = "failed"
)

// Media types (Disk.MediaType, Image.MediaType).
const (
	// MediaFixed is a fixed disk.
	MediaFixed = "fixed"
	// MediaCDROM is a CD-ROM (ISO images).
	MediaCDROM = "cdrom"
)

// Geometry is a CHS geometry as Windows reports it for fixed disks: 255
// heads, 63 sectors per track of 512 bytes, and as many whole cylinders as
// fit in the size.
type Geometry struct {
	Cylinders       int64 `json:"cylinders"`
	Heads           int   `json:"heads"`
	SectorsPerTrack int   `json:"sectors_per_track"`
	BytesPerSector  int   `json:"bytes_per_sector"`
}

// Image is what vdisk knows about an image file without attaching it.
type Image struct {
	// ID is the id the image has (or would have) as an open disk.
	ID string `json:"id"`
	// File is the image's canonical absolute path.
	File string `json:"file"`
	// Format is the image format ("raw", ...).
	Format string `json:"format"`
	// Size is the virtual size in bytes; Sectors is Size/512.
	Size    int64 `json:"size"`
	Sectors int64 `json:"sectors"`
	// LogicalBlockSize and PhysicalBlockSize are in bytes.
	LogicalBlockSize  uint32 `json:"logical_block_size"`
	PhysicalBlockSize uint32 `json:"physical_block_size"`
	// Geometry is the CHS geometry computed from Size.
	Geometry Geometry `json:"geometry"`
	// Writable reports whether the image file can be opened for writing.
	Writable bool `json:"writable"`
	// MediaType is MediaFixed or MediaCDROM.
	MediaType string `json:"media_type"`
	// UniqueID is the full hex SHA-256 of File: the disk's stable unique id.
	UniqueID string `json:"unique_id"`
	// Allocated is the storage the file uses, in bytes (st_blocks*512).
	Allocated int64 `json:"allocated"`
	// Open reports whether the image is open as a disk.
	Open bool `json:"open"`
	// Encrypted reports that the image holds a LUKS volume. Size is then
	// the decrypted size of an open disk, else the size of the stored
	// volume (header included).
	Encrypted bool `json:"encrypted,omitempty"`
	// Details are the format's own facts (what `qemu-img info` shows), for
	// an image file that is not open and whose format has any.
	Details *FormatDetails `json:"details,omitempty"`
	// Store describes an s3:// image's objects; nil for a local file.
	Store *StoreDetails `json:"store,omitempty"`
}

// StoreDetails describe an image in an object store.
type StoreDetails struct {
	// ChunkSize is the size of one chunk object; Chunks counts the chunk
	// objects present (a chunk never written, or trimmed, has none).
	ChunkSize int64 `json:"chunk_size"`
	Chunks    int64 `json:"chunks"`
	// Created is when the image was created.
	Created time.Time `json:"created"`
	// Capacity and FileLength are, for a format's file in the chunks
	// (qcow2), how far it may grow and how long it is now.
	Capacity   int64 `json:"capacity,omitempty"`
	FileLength int64 `json:"file_length,omitempty"`
	// LeaseHolder names the writer that has the image open, if any, and
	// LeaseExpires when its lease runs out unless renewed.
	LeaseHolder  string     `json:"lease_holder,omitempty"`
	LeaseExpires *time.Time `json:"lease_expires,omitempty"`
}

// FormatDetails are the facts of an image format beyond its size.
type FormatDetails struct {
	// ClusterSize is the format's allocation unit in bytes (qcow2
	// clusters, VHD/VHDX/VDI blocks, VMDK grains; 2048 for ISO).
	ClusterSize int64 `json:"cluster_size,omitempty"`
	// Compat is the format version ("1.1" for qcow2 v3).
	Compat string `json:"compat,omitempty"`
	// BackingFile and BackingFormat name the backing (parent) image.
	BackingFile   string `json:"backing_file,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
	// Dirty reports an image left open by a writer (lazy refcounts).
	Dirty           bool   `json:"dirty,omitempty"`
	RefcountBits    int    `json:"refcount_bits,omitempty"`
	LazyRefcounts   bool   `json:"lazy_refcounts,omitempty"`
	ExtendedL2      bool   `json:"extended_l2,omitempty"`
	CompressionType string `json:"compression_type,omitempty"`
	// Snapshots are the image's internal snapshots.
	Snapshots []Snapshot `json:"snapshots,omitempty"`
}

// Snapshot is one internal snapshot of an image.
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Date is when it was taken, in seconds since the epoch.
	Date int64 `json:"date"`
	// VMStateSize is the saved VM state's size (0 for disk-only).
	VMStateSize uint64 `json:"vm_state_size"`
}

// Disk is an open disk: the image facts plus how it reaches the kernel.
type Disk struct {
	// ID is the first 12 hex digits of SHA-256 of File (see DiskID).
	ID string `json:"id"`
	// Device is the block device, e.g. "/dev/loop3"; empty unless the disk
	// is in StateOpen.
	Device string `json:"device"`
	// File is the image's canonical absolute path, or its
	// s3://bucket/prefix URL.
	File string `json:"file"`
	// Format is the image format ("raw", ...).
	Format string `json:"format"`
	// Size is the disk size in bytes; Sectors is Size/512.
	Size    int64 `json:"size"`
	Sectors int64 `json:"sectors"`
	// LogicalBlockSize and PhysicalBlockSize are in bytes.
	LogicalBlockSize  uint32 `json:"logical_block_size"`
	PhysicalBlockSize uint32 `json:"physical_block_size"`
	// Geometry is the CHS geometry computed from Size.
	Geometry Geometry `json:"geometry"`
	// ReadOnly reports whether the disk refuses writes; Writable is its
	// negation, spelled out as the original driver's IOCTL did.
	ReadOnly bool `json:"read_only"`
	Writable bool `json:"writable"`
	// Via is the attach path: ViaLoop, ViaFUSE, ViaNBD or ViaUblk.
	Via string `json:"via"`
	// ViaReason says why Via was chosen: asked for, or what the kernel
	// has, e.g. "ublk: /dev/ublk-control present" or "loop: raw image, no
	// ublk or nbd module on this kernel".
	ViaReason string `json:"via_reason,omitempty"`
	// Major and Minor are the block device's numbers; DevNo is
	// "major:minor".
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
	DevNo string `json:"devno"`
	// Removable is true for removable media (CD-ROM); Hotplug is always
	// true: vdisk disks come and go while the system runs.
	Removable bool `json:"removable"`
	Hotplug   bool `json:"hotplug"`
	// MediaType is MediaFixed or MediaCDROM.
	MediaType string `json:"media_type"`
	// UniqueID is the full hex SHA-256 of File.
	UniqueID string `json:"unique_id"`
	// OpenedAt is when the disk was first opened (kept across daemon
	// restarts).
	OpenedAt time.Time `json:"opened_at"`
	// State is StateOpen, or why a disk the daemon had could not be
	// restored (StateLocked, StateMissing, StateFailed).
	State string `json:"state"`
	// Error explains a State other than StateOpen.
	Error string `json:"error,omitempty"`
	// Encrypted reports that the image holds a LUKS volume the daemon
	// unlocks (or, locked, would unlock with the passphrase).
	Encrypted bool `json:"encrypted,omitempty"`
	// Cache is, for an open s3:// disk, the state of its write-back cache.
	Cache *CacheStats `json:"cache,omitempty"`
	// BackingDirs are the directory trees, beside the image's own, in
	// which the files the image names (backing files, parents, extents)
	// were allowed to lie when it was opened (OpenRequest.BackingDirs).
	BackingDirs []string `json:"backing_dirs,omitempty"`
	// NoBacking reports that only the top layer of the image's backing
	// chain is served (OpenRequest.NoBacking).
	NoBacking bool `json:"no_backing,omitempty"`

	// CacheMode and AIO are the host cache and I/O modes of the disk's
	// image files (OpenRequest.CacheMode, OpenRequest.AIO); empty for an
	// s3:// disk.
	CacheMode string `json:"cache_mode,omitempty"`
	AIO       string `json:"aio,omitempty"`
	// Snapshot, SnapshotDir and Base are as in OpenRequest; BaseFormat is
	// the base's format as the request gave it (its Format: "" probed).
	Snapshot    bool   `json:"snapshot,omitempty"`
	SnapshotDir string `json:"snapshot_dir,omitempty"`
	Base        string `json:"base,omitempty"`
	BaseFormat  string `json:"base_format,omitempty"`
}

// CacheStats describe the write-back cache of a disk in an object store.
type CacheStats struct {
	// DirtyBytes (in DirtyChunks chunks) are written and not yet stored:
	// a close or fsync waits for them.
	DirtyBytes  int64 `json:"dirty_bytes"`
	DirtyChunks int   `json:"dirty_chunks"`
	// CachedBytes are clean data kept in memory.
	CachedBytes int64 `json:"cached_bytes"`
	// StoredChunks counts the image's chunk objects in the store.
	StoredChunks int64 `json:"stored_chunks"`
}

// DiskList is the answer to GET /v1/disks, sorted by File.
type DiskList struct {
	Disks []Disk `json:"disks"`
}

// OpenRequest asks the daemon to open an image as a disk.
type OpenRequest struct {
	// File is the image's canonical absolute path (the client resolves it).
	File string `json:"file"`
	// Create allows creating File, sparse, of Size bytes when it does not
	// exist.
	Create bool `json:"create,omitempty"`
	// Size is the size of a file to create; 0 means DefaultSize.
	Size int64 `json:"size,omitempty"`
	// ReadOnly opens the disk read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Format is the image format; empty means detect.
	Format string `json:"format,omitempty"`
	// Via is the attach path; empty means the best the kernel has: ViaUblk,
	// else ViaNBD, else ViaLoop for raw images and ViaFUSE for the rest.
	Via string `json:"via,omitempty"`
	// Reuse returns the disk already open on File instead of failing with
	// CodeAlreadyOpen.
	Reuse bool `json:"reuse,omitempty"`
	// Passphrase unlocks an encrypted (LUKS) image. It travels only over
	// the daemon's 0600 socket; the daemon never logs or stores it, and
	// clears its copy after use. Without it an encrypted image fails with
	// CodePassphraseRequired, and the client asks and tries again.
	Passphrase []byte `json:"passphrase,omitempty"`
	// AllowDiscards passes trims through the encryption layer (they
	// reveal which blocks are unused).
	AllowDiscards bool `json:"allow_discards,omitempty"`
	// S3 says how to reach the object store of an s3://bucket/prefix
	// File. Credentials are not part of it: they come from the daemon's
	// environment (AWS_ACCESS_KEY_ID, ...).
	S3 *S3Options `json:"s3,omitempty"`
	// BackingDirs are absolute directory trees, beside the image's own
	// directory, in which the files the image names (backing files,
	// parents, VMDK extents) may lie. By default only the image's own
	// directory tree is trusted: a name leading anywhere else is refused
	// (CodeUnsupported). They do not apply to s3:// images, which name no
	// files. The daemon keeps them to reopen the disk after a restart.
	BackingDirs []string `json:"backing_dirs,omitempty"`
	// NoBacking serves the top layer of the image alone, without opening
	// any file it names: what its backing file holds reads as zeroes.
	NoBacking bool `json:"no_backing,omitempty"`

	// CacheMode is how the image files use the host page cache, as
	// qemu-nbd --cache: writeback (empty: the default), none, directsync
	// or unsafe. AIO is how they are read and written: threads (empty:
	// the default) or io_uring. Local files only; the daemon keeps both
	// to reopen the disk after a restart.
	CacheMode string `json:"cache_mode,omitempty"`
	AIO       string `json:"aio,omitempty"`
	// Snapshot throws the disk's writes away: File, which must exist, is
	// opened read-only under a temporary qcow2 overlay in SnapshotDir (an
	// absolute directory; "" is the daemon's $TMPDIR), unlinked from birth
	// and encrypted with a random key above a LUKS volume. The overlay
	// lives as long as the daemon's open: a daemon restarted after a crash
	// drops the disk (its overlay is gone) and frees its device.
	Snapshot    bool   `json:"snapshot,omitempty"`
	SnapshotDir string `json:"snapshot_dir,omitempty"`
	// Base makes File a qcow2 overlay over Base (an absolute path or an
	// s3:// URL; S3 then says how to reach it), created when missing with
	// Base recorded as its backing file. An existing File must record Base
	// (CodeBadRequest otherwise). Format is then the base's format.
	Base string `json:"base,omitempty"`
}

// S3Options say how the daemon reaches the object store behind an s3://
// File. The daemon keeps Endpoint, Region, Profile, CacheDir, CacheSize and LeaseTTL in its state file
// to reopen the disk after a restart.
type S3Options struct {
	// Endpoint is the store's URL; "" means the daemon's
	// $VDISK_S3_ENDPOINT, else its AWS configuration.
	Endpoint string `json:"endpoint,omitempty"`
	// Region is the store's region; "" means the AWS configuration's.
	Region string `json:"region,omitempty"`
	// Profile is the AWS shared-configuration profile with the
	// credentials (the daemon reads the files); "" means the default.
	Profile string `json:"profile,omitempty"`
	// CacheDir keeps clean chunks locally across opens.
	CacheDir string `json:"cache_dir,omitempty"`
	// CacheSize caps the memory of clean cached data (0: the default).
	CacheSize int64 `json:"cache_size,omitempty"`
	// ChunkSize is the object size of an image this open creates (0: the
	// default); it is not remembered.
	ChunkSize int64 `json:"chunk_size,omitempty"`
	// LeaseTTL is how long the disk stays locked after the daemon dies
	// (0: the default).
	LeaseTTL time.Duration `json:"lease_ttl,omitempty"`
	// ForceTakeover takes the writer's lease from a holder that let it
	// expire (this open only; it is not remembered).
	ForceTakeover bool `json:"force_takeover,omitempty"`
	// UnsafeNoFencing writes to a store that ignores conditional PUTs,
	// where a writer that lost its lease could overwrite its successor's
	// chunks (kept in the daemon's state: it is the store's nature).
	UnsafeNoFencing bool `json:"unsafe_no_fencing,omitempty"`
}

// ResizeRequest asks the daemon to grow an open disk (POST
// /v1/disks/{id}/resize) to Size bytes.
type ResizeRequest struct {
	Size int64 `json:"size"`
}

// InspectRequest asks for the facts of an image file.
type InspectRequest struct {
	File   string `json:"file"`
	Format string `json:"format,omitempty"`
	// S3 says how to reach the object store of an s3:// File.
	S3 *S3Options `json:"s3,omitempty"`
	// BackingDirs and NoBacking are as in OpenRequest, for an image that
	// is not open.
	BackingDirs []string `json:"backing_dirs,omitempty"`
	NoBacking   bool     `json:"no_backing,omitempty"`
}

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	API     string `json:"api"`
	Version string `json:"version"`
	PID     int    `json:"pid"`
}

// DefaultSize is the size of an image created without an explicit size:
// 100 MiB, as the original demo.
const DefaultSize = 100 << 20

// Where the daemon lives unless told otherwise.
const (
	// DefaultSocket is the daemon's socket when neither --socket nor
	// $VDISK_SOCKET says otherwise.
	DefaultSocket = "/run/vdisk/vdisk.sock"
	// SocketEnv names the environment variable that overrides
	// DefaultSocket.
	SocketEnv = "VDISK_SOCKET"
	// DefaultStateDir holds the daemon's state file unless --state-dir or
	// $VDISK_STATE_DIR says otherwise.
	DefaultStateDir = "/var/lib/vdisk"
	// StateDirEnv names the environment variable that overrides
	// DefaultStateDir.
	StateDirEnv = "VDISK_STATE_DIR"
)
