package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// protocolName matches qemu's "protocol:rest" filenames (nbd:, http:,
// file:, json:...), which vdisk never follows.
var protocolName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// canonical returns the absolute path of p with symlinks resolved.
func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// ResolveBacking returns the path of the backing file name recorded in the
// image at imagePath: relative names are relative to the image's
// directory. It refuses json: and protocol names, and, when backingDir is
// set, any path that does not lie inside it after resolving symlinks.
func ResolveBacking(imagePath, name, backingDir string) (string, error) {
	if strings.HasPrefix(name, "json:") {
		return "", fmt.Errorf("qcow2: backing file %q: json: names are not supported: %w", name, image.ErrBackingRefused)
	}
	if protocolName.MatchString(name) && !strings.Contains(name[:strings.IndexByte(name, ':')], "/") {
		return "", fmt.Errorf("qcow2: backing file %q: protocol names are not supported: %w", name, image.ErrBackingRefused)
	}
	if name == "" {
		return "", fmt.Errorf("qcow2: empty backing file name: %w", image.ErrBackingRefused)
	}
	p := name
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(imagePath), p)
	}
	if backingDir == "" {
		return p, nil
	}
	dir, err := canonical(backingDir)
	if err != nil {
		return "", fmt.Errorf("qcow2: backing dir: %w", err)
	}
	c, err := canonical(p)
	if err != nil {
		return "", fmt.Errorf("qcow2: backing file %q: %w", name, err)
	}
	if rel, err := filepath.Rel(dir, c); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("qcow2: backing file %q resolves to %s, outside %s: %w", name, c, dir, image.ErrBackingRefused)
	}
	return c, nil
}

// openBacking opens the backing file of the image at path, read-only.
func openBacking(path string, h *header, opt image.OpenOptions) (blockdev.Device, error) {
	me, err := canonical(path)
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	chain := append(slices.Clone(opt.Chain), me)
	if len(chain) > opt.MaxChainDepth {
		return nil, fmt.Errorf("qcow2: backing chain of more than %d images: %w", opt.MaxChainDepth, image.ErrChainTooDeep)
	}
	bp, err := ResolveBacking(path, h.backingFile, opt.BackingDir)
	if err != nil {
		return nil, err
	}
	bc, err := canonical(bp)
	if err != nil {
		return nil, fmt.Errorf("qcow2: backing file %q: %w", h.backingFile, err)
	}
	if slices.Contains(chain, bc) {
		return nil, fmt.Errorf("qcow2: backing file %q loops back to %s: %w", h.backingFile, bc, image.ErrBackingRefused)
	}
	format := h.backingFormat
	if format == "" && opt.BackingDir != "" {
		// A guest can write any header into a raw disk: probing a backing
		// file could follow that header's own backing file. Safe mode
		// never guesses.
		return nil, fmt.Errorf("qcow2: backing file %q has no recorded format, and safe mode (a backing directory) does not probe: %w", h.backingFile, image.ErrBackingRefused)
	}
	if format == "" {
		if format, err = image.Probe(bp); err != nil {
			return nil, err
		}
		opt.Log.Warn("backing file format not recorded; probed", "image", path, "backing", bp, "format", format)
	}
	bopt := image.OpenOptions{
		Format:        format,
		ReadOnly:      true,
		BackingDir:    opt.BackingDir,
		MaxChainDepth: opt.MaxChainDepth,
		CacheSize:     opt.CacheSize,
		NoLock:        opt.NoLock,
		Chain:         chain,
		Log:           opt.Log,
	}
	d, err := image.Open(bp, bopt)
	if err != nil {
		return nil, fmt.Errorf("qcow2: open backing file %s: %w", bp, err)
	}
	return d, nil
}

// statDiskSize returns the bytes the file really occupies.
func statDiskSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if s, ok := sysBlocks(st); ok {
		return s
	}
	return st.Size()
}
