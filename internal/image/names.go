package image

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"vdisk/internal/blockdev"
)

// Names opens the files an image names (backing files, parents, VMDK
// extents) under one trust policy. Formats never open a path themselves:
// they ask the Names in their OpenOptions or CreateOptions.
type Names interface {
	// Open opens the file that the image file from names as name:
	// read-only, or read-write for an extent of a writable image.
	Open(from File, name string, readOnly bool) (File, error)
	// Create makes a new file that the new image file from names (a
	// VMDK's extents): a plain name beside from.
	Create(from File, name string) (File, error)
}

// BackingDirFlag is the flag that trusts a directory for named files; the
// messages of a refusal name it.
const BackingDirFlag = "--backing-dir"

// LocalNames is the trust policy for images on local filesystems. A named
// file must:
//
//   - be a plain path: json: and other protocol names (nbd:, http:, ...)
//     are refused;
//   - lie, after every symlink is followed, inside the directory tree of
//     the image that names it, or of one of Dirs (the --backing-dir the
//     user trusts); the kernel checks this while it opens the file
//     (openat2 with RESOLVE_BENEATH), so no symlink swapped in between a
//     check and the open can lead outside;
//   - be a regular file: FIFOs, sockets, devices and directories are
//     refused, and the open is O_NONBLOCK so none of them can block it.
//
// qemu follows any path an image names; vdisk is deliberately stricter,
// because it runs as root on images people download.
type LocalNames struct {
	// Dirs are further directory trees named files may lie in.
	Dirs []string
	// NoLock skips the image lock on the files opened.
	NoLock bool
	// Cache and AIO are the cache and I/O modes of the files opened.
	Cache blockdev.CacheMode
	AIO   blockdev.AIOMode
}

// protocolName matches qemu's "protocol:rest" filenames (nbd:, http:,
// file:, json:...), which vdisk never follows.
var protocolName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// CheckName refuses names that are not plain paths: empty ones, json: and
// other protocol names, and names with NUL bytes. what says what the name
// is ("backing file").
func CheckName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty %s name: %w", what, ErrBackingRefused)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%s name %q holds a NUL byte: %w", what, name, ErrBackingRefused)
	case strings.HasPrefix(name, "json:"):
		return fmt.Errorf("%s %q: json: names are never followed: %w", what, name, ErrBackingRefused)
	case protocolName.MatchString(name) && !strings.Contains(name[:strings.IndexByte(name, ':')], "/"):
		return fmt.Errorf("%s %q: protocol names are never followed: %w", what, name, ErrBackingRefused)
	}
	return nil
}

// localDir is the directory of a local image file.
func localDir(from File) (string, error) {
	lf, ok := from.(interface{ Dir() (string, error) })
	if !ok {
		return "", fmt.Errorf("%s is not on a local filesystem, so it cannot name other files: %w", from.Name(), ErrBackingRefused)
	}
	return lf.Dir()
}

// Resolve returns the path that name, as named by the image file from,
// stands for: relative names are relative to from's directory. It checks
// the name but not where it leads (Open does).
func (n LocalNames) Resolve(from File, name string) (string, error) {
	if err := CheckName("named file", name); err != nil {
		return "", err
	}
	if filepath.IsAbs(name) {
		return filepath.Clean(name), nil
	}
	dir, err := localDir(from)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// Open opens name under the policy (see LocalNames).
func (n LocalNames) Open(from File, name string, readOnly bool) (File, error) {
	p, err := n.Resolve(from, name)
	if err != nil {
		return nil, err
	}
	dir, err := localDir(from)
	if err != nil {
		return nil, err
	}
	roots := []string{dir}
	roots = append(roots, n.Dirs...)
	cands := []string{p}
	if c, err := filepath.EvalSymlinks(p); err == nil && c != p {
		cands = append(cands, c)
	} else if (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR)) && under(p, roots) {
		// Said only inside the trusted trees: outside them, whether a
		// file exists is none of the image's business.
		return nil, fmt.Errorf("%q (%s) does not exist", name, p)
	}
	for _, root := range roots {
		for _, rc := range []string{root, evalOr(root)} {
			for _, c := range cands {
				rel, err := filepath.Rel(rc, c)
				if err != nil || !filepath.IsLocal(rel) && rel != "." {
					continue
				}
				f, err := openBeneath(rc, rel, c, readOnly, n)
				if errors.Is(err, syscall.EXDEV) {
					continue // a symlink leads out of this root
				}
				if err != nil {
					return nil, err
				}
				return f, nil
			}
		}
	}
	where := p
	if len(cands) > 1 {
		where = cands[1]
	}
	outside := dir
	if len(n.Dirs) > 0 {
		outside = strings.Join(append([]string{dir}, n.Dirs...), ", ")
	}
	return nil, fmt.Errorf("%q resolves to %s, outside %s; if you trust the image, allow that directory with %s %s: %w",
		name, where, outside, BackingDirFlag, filepath.Dir(where), ErrBackingRefused)
}

// under reports whether the path p lies lexically inside one of roots.
func under(p string, roots []string) bool {
	for _, r := range roots {
		if rel, err := filepath.Rel(r, p); err == nil && filepath.IsLocal(rel) {
			return true
		}
	}
	return false
}

// evalOr is p with symlinks resolved, or p.
func evalOr(p string) string {
	if c, err := filepath.EvalSymlinks(p); err == nil {
		return c
	}
	return p
}

// openBeneath opens rel beneath the directory root, refusing (EXDEV) any
// path that leaves it, and checks that it is a regular file. path names
// it in messages.
func openBeneath(root, rel, path string, readOnly bool, n LocalNames) (File, error) {
	dfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open directory %s: %w", root, err)
	}
	defer unix.Close(dfd)
	flags := uint64(unix.O_RDWR)
	if readOnly {
		flags = unix.O_RDONLY
	}
	how := &unix.OpenHow{
		Flags:   flags | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	for {
		fd, err = unix.Openat2(dfd, rel, how)
		if !errors.Is(err, syscall.EINTR) && !errors.Is(err, syscall.EAGAIN) {
			break
		}
	}
	switch {
	case errors.Is(err, syscall.ENOSYS):
		// No openat2 (Linux < 5.6): resolve, check, and open the result
		// without following a final symlink.
		c, eerr := filepath.EvalSymlinks(path)
		if eerr != nil {
			return nil, eerr
		}
		if r, rerr := filepath.Rel(evalOr(root), c); rerr != nil || !filepath.IsLocal(r) {
			return nil, syscall.EXDEV
		}
		fd, err = unix.Open(c, int(how.Flags)|unix.O_NOFOLLOW, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	case errors.Is(err, syscall.EXDEV):
		return nil, err
	case errors.Is(err, syscall.ENOENT):
		return nil, fmt.Errorf("%s does not exist", path)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	bf, err := blockdev.FromFD(fd, path, blockdev.FileOptions{ReadOnly: readOnly, NoLock: n.NoLock, RegularOnly: true, Cache: n.Cache, AIO: n.AIO})
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &LocalFile{bf: bf}, nil
}

// Create makes name, a plain file name, beside from.
func (n LocalNames) Create(from File, name string) (File, error) {
	if err := CheckName("named file", name); err != nil {
		return nil, err
	}
	if !filepath.IsLocal(name) || strings.ContainsRune(name, filepath.Separator) {
		return nil, fmt.Errorf("new file %q: only a plain name beside the image is created: %w", name, ErrBackingRefused)
	}
	dir, err := localDir(from)
	if err != nil {
		return nil, err
	}
	return CreateLocal(filepath.Join(dir, name))
}

// NoNames refuses every named file, saying why: images in an object
// store, whose names would be paths on whichever host opens them.
type NoNames struct {
	Why string
}

// Open refuses.
func (n NoNames) Open(from File, name string, readOnly bool) (File, error) {
	return nil, fmt.Errorf("%s names %q: %s: %w", from.Name(), name, n.Why, ErrBackingRefused)
}

// Create refuses.
func (n NoNames) Create(from File, name string) (File, error) {
	return nil, fmt.Errorf("%s would name %q: %s: %w", from.Name(), name, n.Why, ErrBackingRefused)
}

// Backing is the image that an image names below itself.
type Backing struct {
	// Name is the name recorded in the image.
	Name string
	// Format is the format recorded for it; "" probes among the
	// structured formats, never raw.
	Format string
	// What names it in messages ("backing file", "parent").
	What string
}

// OpenBacking opens, read-only, the image that the image file from names
// below itself, with opt's policy: opt.Names opens the file, the chain
// is at most opt.MaxChainDepth deep and never loops, and a backing file
// whose format is not recorded is probed among the structured formats
// only: a guest can write any header into a raw disk, so vdisk never
// guesses raw (qemu-img refuses to create such images since 6.1).
func OpenBacking(from File, b Backing, opt OpenOptions) (blockdev.Device, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if b.What == "" {
		b.What = "backing file"
	}
	if err := CheckName(b.What, b.Name); err != nil {
		return nil, err
	}
	chain := append(slices.Clone(opt.Chain), identity(from))
	if len(chain) > opt.MaxChainDepth {
		return nil, fmt.Errorf("%s: backing chain of more than %d images: %w", from.Name(), opt.MaxChainDepth, ErrChainTooDeep)
	}
	names := opt.Names
	if names == nil {
		names = LocalNames{NoLock: opt.NoLock, Cache: opt.Cache, AIO: opt.AIO}
	}
	f, err := names.Open(from, b.Name, true)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", b.What, from.Name(), err)
	}
	if slices.Contains(chain, identity(f)) {
		f.Close()
		return nil, fmt.Errorf("%s %q of %s loops back to an image above it: %w", b.What, b.Name, from.Name(), ErrBackingRefused)
	}
	format := b.Format
	if format == "" {
		if format, err = ProbeFile(f); err != nil {
			f.Close()
			return nil, err
		}
		if format == Raw {
			f.Close()
			return nil, fmt.Errorf("%s %q of %s has no recorded format and is not a structured image; vdisk does not guess raw (record it with -F/--backing-format raw, as qemu-img create -F does): %w",
				b.What, b.Name, from.Name(), ErrBackingRefused)
		}
		opt.Log.Warn("backing file format not recorded; probed", "image", from.Name(), "backing", f.Name(), "format", format)
	}
	bopt := OpenOptions{
		Format:        format,
		ReadOnly:      true,
		Names:         names,
		MaxChainDepth: opt.MaxChainDepth,
		CacheSize:     opt.CacheSize,
		NoLock:        opt.NoLock,
		Chain:         chain,
		Log:           opt.Log,
		BackingOpener: opt.BackingOpener,
	}
	b.Format = format
	r := &BackingRequest{From: from, Backing: b, File: f, names: names, opt: bopt}
	if opt.BackingOpener == nil {
		return r.Open(true)
	}
	d, err := opt.BackingOpener(r)
	if !r.opened {
		f.Close()
	}
	return d, err
}

// BackingRequest is a backing file that OpenBacking opened, read-only and
// under the trust policy, and whose image OpenOptions.BackingOpener opens.
type BackingRequest struct {
	// From is the image file that names the backing file.
	From File
	// Backing is the name and format recorded in From (the format probed
	// when none is recorded).
	Backing Backing
	// File is the backing file as opened, read-only; Open takes it over.
	File File

	names  Names
	opt    OpenOptions
	opened bool
}

// Open opens the backing image, with its own backing chain, and is called
// at most once. readOnly false opens it read-write: the name is opened
// again, read-write, through the same trust policy, and must still be the
// same file (its identity) as File, which is closed first so that the
// two opens never hold the image's lock at once.
func (r *BackingRequest) Open(readOnly bool) (blockdev.Device, error) {
	if r.opened {
		return nil, fmt.Errorf("%s %q of %s: opened twice", r.Backing.What, r.Backing.Name, r.From.Name())
	}
	r.opened = true
	f := r.File
	if !readOnly {
		id := identity(f)
		f.Close()
		var err error
		if f, err = r.names.Open(r.From, r.Backing.Name, false); err != nil {
			return nil, fmt.Errorf("%s of %s, read-write: %w", r.Backing.What, r.From.Name(), err)
		}
		if identity(f) != id {
			f.Close()
			return nil, fmt.Errorf("%s %q of %s changed while it was being opened: %w", r.Backing.What, r.Backing.Name, r.From.Name(), ErrBackingRefused)
		}
		r.opt.ReadOnly = false
	}
	d, err := OpenFile(f, r.opt)
	if err != nil {
		return nil, fmt.Errorf("open %s %s: %w", r.Backing.What, f.Name(), err)
	}
	return d, nil
}
