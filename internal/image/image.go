// Package image is the format registry: it knows every disk image format
// vdisk reads (raw, qcow2, ...), probes files for them by magic, and opens,
// creates, describes and checks images by format name.
//
// Formats live in sub-packages (image/raw, image/qcow2) and register
// themselves from init; import vdisk/internal/image/all to get every one.
// Probing never guesses raw while another format matches, an explicit
// format always wins, and an image opened as raw is never reinterpreted.
//
// Everything here is safe for concurrent use; the registry is written only
// from init functions.
package image

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"

	"vdisk/internal/blockdev"
)

// ProbeSize is how many bytes of a file Probe reads and hands to each
// format's Probe function: enough to reach the ISO 9660 volume descriptor
// ("CD001" at byte 32769).
const ProbeSize = 64 << 10

// ProbeTailSize is how many bytes at the end of a file Probe hands to each
// format's ProbeTail function (the footer of a fixed VHD).
const ProbeTailSize = 512

// DefaultMaxChainDepth bounds a backing chain when OpenOptions leaves
// MaxChainDepth zero.
const DefaultMaxChainDepth = 16

// Raw is the name of the raw format, the fallback of probing.
const Raw = "raw"

// Format is one image format.
type Format struct {
	// Name is the format's name as users type it (--format qcow2).
	Name string
	// Probe reports whether header, the first ProbeSize bytes of a file
	// (fewer if the file is shorter), looks like this format. nil never
	// matches (raw).
	Probe func(header []byte) bool
	// ProbeTail reports whether tail, the last ProbeTailSize bytes of a
	// file of size bytes, marks this format (a trailer, not a header). It
	// is asked only when no format's Probe matched; nil never matches.
	ProbeTail func(tail []byte, size int64) bool
	// ReadOnly says the format never writes (iso): its file is opened
	// read-only whatever OpenOptions.ReadOnly says.
	ReadOnly bool

	// OpenFile opens the image whose file is f. On success the Device
	// owns f (closing it closes f); on error the caller closes f. Files
	// the image names are opened through opt.Names only.
	OpenFile func(f File, opt OpenOptions) (blockdev.Device, error)
	// CreateFile writes a new image into f, an empty file, and syncs it;
	// it does not close f. Files it names are opened or made through
	// opt.Names only.
	CreateFile func(f File, opt CreateOptions) error
	// StreamFile is Stream into an empty file f (not closed).
	StreamFile func(f File, src blockdev.Device, opt CreateOptions) (handled bool, err error)
	// InfoFile reads the facts of the image in f without opening any
	// file it names.
	InfoFile func(f File) (*Facts, error)
	// CheckFile checks the image in f (repairing opens it read-write).
	CheckFile func(f File, opt CheckOptions) (*CheckResult, error)
}

// Inspector is a Device, opened by a format, that reports the facts Info
// reads from a file (qcow2.Image implements it).
type Inspector interface {
	Facts() *Facts
}

// Snapshotter is an opened image with internal snapshots (qcow2.Image):
// what vdisk snapshot drives. Names match a snapshot's id first, then its
// name.
type Snapshotter interface {
	Snapshots() ([]Snapshot, error)
	CreateSnapshot(name string) (Snapshot, error)
	ApplySnapshot(name string) error
	DeleteSnapshot(name string) error
}

// OpenOptions say how Open opens an image.
type OpenOptions struct {
	// Format is the format's name; "" probes. An explicit format always
	// wins, and raw is never reinterpreted.
	Format string
	// ReadOnly opens without write access; writes fail with
	// blockdev.ErrReadOnly.
	ReadOnly bool
	// NoBacking serves the top layer alone: unallocated ranges read as
	// zeroes instead of coming from the backing file.
	NoBacking bool
	// BackingDir, when set and Names is nil, is a directory tree beside
	// the image's own that the files it names may lie in (the default
	// LocalNames' Dirs).
	BackingDir string
	// Names opens the files the image names (backing files, parents,
	// extents) under the trust policy; nil means LocalNames with no
	// further directories.
	Names Names
	// MaxChainDepth bounds the number of backing files below this image;
	// zero means DefaultMaxChainDepth.
	MaxChainDepth int
	// CacheSize is the metadata cache size in bytes a format may use;
	// zero means the format's default.
	CacheSize int64
	// NoLock skips the advisory lock on the file.
	NoLock bool
	// Cache and AIO say how local files (the image's and those it names)
	// use the page cache and issue their I/O (blockdev.FileOptions).
	Cache blockdev.CacheMode
	AIO   blockdev.AIOMode
	// Chain lists the canonical paths of the images above this one while a
	// backing chain is being opened; formats use it to detect loops.
	// Callers leave it nil.
	Chain []string
	// Log receives warnings (nil discards them).
	Log *slog.Logger

	// Backing, when set, is the opened backing Device of an image whose
	// format has one (qcow2): it is used in place of any backing file the
	// header names, which is then neither opened nor checked (a throw-away
	// overlay names none; an overlay over an image the stack opened, such
	// as an s3:// one, need not be one a file name can reach). On success
	// the image owns it (closes it on Close); on error the caller still
	// does. NoBacking wins over it.
	Backing blockdev.Device
	// BackingOpener, when set, is handed each backing file of the chain that
	// OpenBacking opened under the trust policy, and opens its image
	// (BackingRequest.Open): read-only, as without it, or read-write for
	// the one layer an operation writes into below the top (vdisk commit).
	// It learns which file each layer is, so nothing opens a file twice.
	BackingOpener func(r *BackingRequest) (blockdev.Device, error)
}

// Validate fills defaults and checks the options.
func (o *OpenOptions) Validate() error {
	if o.MaxChainDepth == 0 {
		o.MaxChainDepth = DefaultMaxChainDepth
	}
	if o.MaxChainDepth < 0 {
		return fmt.Errorf("image: max chain depth %d is negative", o.MaxChainDepth)
	}
	if o.CacheSize < 0 {
		return fmt.Errorf("image: cache size %d is negative", o.CacheSize)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// CreateOptions say how Create makes an image.
type CreateOptions struct {
	// Format is the format's name; it is required.
	Format string
	// Size is the virtual size in bytes.
	Size int64
	// BackingFile names the backing image (stored as given; a relative
	// name is relative to the new image's directory).
	BackingFile string
	// BackingFormat is the backing image's format; "" probes it at create
	// time and records the result.
	BackingFormat string
	// ClusterSize is the format's allocation unit; zero means its default.
	ClusterSize int64
	// Options holds format-specific settings (qcow2: compat, refcount_bits,
	// lazy_refcounts, extended_l2).
	Options map[string]string
	// Names opens the backing file (to learn its size or format) and
	// makes further files (VMDK extents) under the trust policy; nil means
	// LocalNames with no further directories.
	Names Names
}

// Validate checks the options.
func (o *CreateOptions) Validate() error {
	if o.Size < 0 {
		return fmt.Errorf("image: size %d is negative", o.Size)
	}
	if o.ClusterSize < 0 {
		return fmt.Errorf("image: cluster size %d is negative", o.ClusterSize)
	}
	return nil
}

var registry = map[string]*Format{}

// Register adds a format. It is called from init functions and panics on a
// duplicate name (programmer error).
func Register(f Format) {
	if f.Name == "" || f.OpenFile == nil {
		panic("image: Register of a format without a name or Open")
	}
	if _, ok := registry[f.Name]; ok {
		panic("image: format " + f.Name + " registered twice")
	}
	registry[f.Name] = &f
}

// aliases are other names users type for a format: qemu's.
var aliases = map[string]string{"vpc": "vhd"}

// Lookup returns the format called name (or by an alias: qemu's "vpc" is
// vhd).
func Lookup(name string) (*Format, error) {
	if a, ok := aliases[name]; ok {
		name = a
	}
	f, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("image: %q: %w (known: %v)", name, ErrUnknownFormat, Formats())
	}
	return f, nil
}

// Formats lists the registered format names, sorted.
func Formats() []string {
	var names []string
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ProbeBytes returns the format whose magic header matches, or Raw when
// none does.
func ProbeBytes(header []byte) string {
	return probe(header, nil, 0)
}

// probe matches the header first, then the tail; Raw when neither does.
func probe(header, tail []byte, size int64) string {
	for _, n := range Formats() {
		f := registry[n]
		if f.Probe != nil && f.Probe(header) {
			return n
		}
	}
	if len(tail) > 0 {
		for _, n := range Formats() {
			f := registry[n]
			if f.ProbeTail != nil && f.ProbeTail(tail, size) {
				return n
			}
		}
	}
	return Raw
}

// Probe reads the start (and the end) of the file at path and returns the
// format it holds; Raw when no format's magic matches.
func Probe(path string) (string, error) {
	f, err := OpenLocal(path, LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		return "", fmt.Errorf("image: probe: %w", err)
	}
	defer f.Close()
	return ProbeFile(f)
}

// ProbeFile reads the start (and the end) of f and returns the format it
// holds; Raw when no format's magic matches.
func ProbeFile(f File) (string, error) {
	size, err := f.Size()
	if err != nil {
		return "", fmt.Errorf("image: probe %s: %w", f.Name(), err)
	}
	buf := make([]byte, min(size, ProbeSize))
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("image: probe %s: %w", f.Name(), err)
	}
	var tail []byte
	if size >= ProbeTailSize {
		tail = make([]byte, ProbeTailSize)
		if _, err := f.ReadAt(tail, size-ProbeTailSize); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("image: probe %s: %w", f.Name(), err)
		}
	}
	return probe(buf, tail, size), nil
}

// resolve returns the format to use for path: the explicit one, or the
// probed one.
func resolve(path, format string) (*Format, error) {
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return nil, err
		}
	}
	return Lookup(format)
}

// Open opens the image at path, a file or block device the user named, as
// a Device. The files it names are opened under opt.Names (by default:
// regular files inside its own directory tree).
func Open(path string, opt OpenOptions) (blockdev.Device, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	lf, f, err := OpenPath(path, opt)
	if err != nil {
		return nil, err
	}
	opt.Format = f.Name
	return OpenFile(lf, opt)
}

// OpenPath opens the file of the image at path, a file or block device the
// user named, for its format: opt.Format, else the one the file holds
// (probed before the file is locked). A format that never writes (iso)
// gets its file read-only under a shared lock whatever opt says, so that
// it opens on read-only media and many may serve one image at once.
func OpenPath(path string, opt OpenOptions) (File, *Format, error) {
	f, err := resolve(path, opt.Format)
	if err != nil {
		return nil, nil, err
	}
	lf, err := OpenLocal(path, LocalOptions{ReadOnly: opt.ReadOnly || f.ReadOnly, NoLock: opt.NoLock, Cache: opt.Cache, AIO: opt.AIO})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", f.Name, err)
	}
	return lf, f, nil
}

// localNames is the default policy for opt: LocalNames with its
// BackingDir.
func localNames(opt OpenOptions) Names {
	n := LocalNames{NoLock: opt.NoLock, Cache: opt.Cache, AIO: opt.AIO}
	if opt.BackingDir != "" {
		n.Dirs = []string{opt.BackingDir}
	}
	return n
}

// OpenFile opens the image whose file is f as a Device (format "" probes
// f). The Device owns f; on error f is closed.
func OpenFile(f File, opt OpenOptions) (blockdev.Device, error) {
	if err := opt.Validate(); err != nil {
		f.Close()
		return nil, err
	}
	if opt.Format == "" {
		var err error
		if opt.Format, err = ProbeFile(f); err != nil {
			f.Close()
			return nil, err
		}
	}
	fm, err := Lookup(opt.Format)
	if err != nil {
		f.Close()
		return nil, err
	}
	opt.Format = fm.Name
	if opt.Names == nil {
		opt.Names = localNames(opt)
	}
	dev, err := fm.OpenFile(f, opt)
	if err != nil {
		f.Close()
		return nil, err
	}
	return dev, nil
}

// Create makes a new image at path, a new file of mode 0600 (its
// directory synced); it fails if path exists, and removes what it made
// when it fails.
func Create(path string, opt CreateOptions) error {
	f, err := creator(opt)
	if err != nil {
		return err
	}
	lf, err := CreateLocal(path)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	if opt.Names == nil {
		opt.Names = LocalNames{}
	}
	made := &madeNames{Names: opt.Names}
	opt.Names = made
	err = CreateIn(lf, opt)
	if cerr := lf.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		for _, p := range made.paths {
			os.Remove(p) // the extents of a VMDK that failed half made
		}
		return err
	}
	return nil
}

// creator is the format that makes images as opt asks.
func creator(opt CreateOptions) (*Format, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	f, err := Lookup(opt.Format)
	if err != nil {
		return nil, err
	}
	if f.CreateFile == nil {
		return nil, fmt.Errorf("image: create %s: %w", f.Name, ErrUnsupported)
	}
	return f, nil
}

// madeNames remembers the local files a create made through its Names, so
// that a failed create removes them too.
type madeNames struct {
	Names
	mu    sync.Mutex
	paths []string
}

func (m *madeNames) Create(from File, name string) (File, error) {
	f, err := m.Names.Create(from, name)
	if err == nil {
		if _, ok := f.(*LocalFile); ok {
			m.mu.Lock()
			m.paths = append(m.paths, f.Name())
			m.mu.Unlock()
		}
	}
	return f, err
}

// CreateIn writes a new image of opt.Format into f, an empty file, and
// syncs it; it does not close f.
func CreateIn(f File, opt CreateOptions) error {
	fm, err := creator(opt)
	if err != nil {
		return err
	}
	opt.Format = fm.Name
	if n, err := f.Size(); err != nil || n != 0 {
		return fmt.Errorf("image: create %s in %s: not an empty file (%d bytes, %v)", fm.Name, f.Name(), n, err)
	}
	if opt.Names == nil {
		opt.Names = NoNames{Why: "this image cannot name other files"}
	}
	return fm.CreateFile(f, opt)
}

// Stream writes src as a new image in one pass when opt asks for a
// subformat that can only be written that way; handled is false when it
// does not, and the caller creates and copies as usual.
func Stream(path string, src blockdev.Device, opt CreateOptions) (handled bool, err error) {
	if err := opt.Validate(); err != nil {
		return false, err
	}
	f, err := Lookup(opt.Format)
	if err != nil {
		return false, err
	}
	if f.StreamFile != nil {
		lf, err := CreateLocal(path)
		if err != nil {
			return false, fmt.Errorf("%s: %w", f.Name, err)
		}
		handled, err := f.StreamFile(lf, src, opt)
		if cerr := lf.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil || !handled {
			os.Remove(path)
		}
		return handled, err
	}
	return false, nil
}

// StreamIn is Stream into f, an empty file (not closed).
func StreamIn(f File, src blockdev.Device, opt CreateOptions) (handled bool, err error) {
	if err := opt.Validate(); err != nil {
		return false, err
	}
	fm, err := Lookup(opt.Format)
	if err != nil {
		return false, err
	}
	if fm.StreamFile == nil {
		return false, nil
	}
	return fm.StreamFile(f, src, opt)
}

// Info describes the image at path (format "" probes); it opens no file
// the image names.
func Info(path, format string) (*Facts, error) {
	lf, err := OpenLocal(path, LocalOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		return nil, fmt.Errorf("image: info: %w", err)
	}
	defer lf.Close()
	return InfoOf(lf, format)
}

// InfoOf describes the image in f (format "" probes); it does not close f.
func InfoOf(f File, format string) (*Facts, error) {
	fm, err := formatOf(f, format)
	if err != nil {
		return nil, err
	}
	if fm.InfoFile == nil {
		return nil, fmt.Errorf("image: info %s (%s): %w", f.Name(), fm.Name, ErrUnsupported)
	}
	return fm.InfoFile(f)
}

// Check verifies the image at path (format "" probes); repairing takes
// the image's lock, checking shares it.
func Check(path, format string, opt CheckOptions) (*CheckResult, error) {
	lf, err := OpenLocal(path, LocalOptions{ReadOnly: !opt.RepairLeaks && !opt.RepairAll})
	if err != nil {
		return nil, fmt.Errorf("image: check: %w", err)
	}
	res, err := CheckOf(lf, format, opt)
	if cerr := lf.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}

// CheckOf verifies the image in f (format "" probes); it does not close f.
func CheckOf(f File, format string, opt CheckOptions) (*CheckResult, error) {
	fm, err := formatOf(f, format)
	if err != nil {
		return nil, err
	}
	if fm.CheckFile == nil {
		return nil, fmt.Errorf("image: check %s (%s): %w", f.Name(), fm.Name, ErrNoCheck)
	}
	return fm.CheckFile(f, opt)
}

// formatOf is the format named format, or the one f holds when format is
// "".
func formatOf(f File, format string) (*Format, error) {
	if format == "" {
		var err error
		if format, err = ProbeFile(f); err != nil {
			return nil, err
		}
	}
	return Lookup(format)
}
