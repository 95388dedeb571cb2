package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"vdisk/internal/api"
)

// stateVersion is the version of the state file's layout.
const stateVersion = 1

// stateFileName is the state file's name inside the state directory.
const stateFileName = "state.json"

// maxStateSize bounds the state file the daemon is willing to read.
const maxStateSize = 4 << 20

// stateDisk is what the state file remembers of one open disk: enough to
// open it again the same way.
type stateDisk struct {
	ID       string `json:"id"`
	File     string `json:"file"`
	Format   string `json:"format"`
	ReadOnly bool   `json:"read_only"`
	Via      string `json:"via"`
	// ViaReason is why Via was chosen (api.Disk.ViaReason).
	ViaReason string `json:"via_reason,omitempty"`
	Device    string `json:"device"`
	// Index is N of /dev/nbdN (ViaNBD) or the ublk device id of
	// /dev/ublkbN (ViaUblk): the device a restarted daemon takes back.
	Index    *int      `json:"index,omitempty"`
	OpenedAt time.Time `json:"opened_at"`
	// Encrypted marks a LUKS image: a restarted daemon has no passphrase
	// and reports it StateLocked until it is opened again. The passphrase
	// itself is never written here.
	Encrypted bool `json:"encrypted,omitempty"`
	// AllowDiscards passes trims through the encryption layer.
	AllowDiscards bool `json:"allow_discards,omitempty"`
	// S3 is how to reach the object store of an s3:// File (no secrets:
	// credentials come from the daemon's environment). ForceTakeover is
	// never kept.
	S3 *api.S3Options `json:"s3,omitempty"`
	// BackingDirs and NoBacking are the trust the open request gave the
	// files the image names (api.OpenRequest): a restore trusts no more.
	BackingDirs []string `json:"backing_dirs,omitempty"`
	NoBacking   bool     `json:"no_backing,omitempty"`

	// CacheMode and AIO are the cache and I/O modes the open request
	// asked for (api.OpenRequest), kept for a restore.
	CacheMode string `json:"cache_mode,omitempty"`
	AIO       string `json:"aio,omitempty"`
	// Snapshot marks a disk whose writes went to a throw-away overlay
	// (api.OpenRequest.Snapshot): gone with the daemon that had it, so a
	// restart drops the disk. Base is an overlay's base image.
	Snapshot    bool   `json:"snapshot,omitempty"`
	SnapshotDir string `json:"snapshot_dir,omitempty"`
	Base        string `json:"base,omitempty"`
	BaseFormat  string `json:"base_format,omitempty"`
}

// stateDoc is the state file.
type stateDoc struct {
	Version int         `json:"version"`
	Disks   []stateDisk `json:"disks"`
}

// loadState reads the state file in dir. A missing file is an empty state.
func loadState(dir string) ([]stateDisk, error) {
	name := filepath.Join(dir, stateFileName)
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if fi.Size() > maxStateSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than %d", ErrBadState, name, fi.Size(), maxStateSize)
	}
	var doc stateDoc
	dec := json.NewDecoder(f)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadState, name, err)
	}
	if doc.Version != stateVersion {
		return nil, fmt.Errorf("%w: %s has version %d, want %d", ErrBadState, name, doc.Version, stateVersion)
	}
	for i, d := range doc.Disks {
		if d.File == "" || !filepath.IsAbs(d.File) && !api.IsURL(d.File) {
			return nil, fmt.Errorf("%w: %s: disk %d has no absolute file", ErrBadState, name, i)
		}
	}
	return doc.Disks, nil
}

// saveState writes the state file in dir atomically: a temporary file,
// fsync, rename over the old one, fsync of the directory. A crash at any
// point leaves either the old or the new state.
func saveState(dir string, disks []stateDisk) error {
	if disks == nil {
		disks = []stateDisk{}
	}
	b, err := json.MarshalIndent(stateDoc{Version: stateVersion, Disks: disks}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	b = append(b, '\n')
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFileName+".tmp*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write state %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFileName)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write state: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write state: sync %s: %w", dir, err)
	}
	return nil
}
