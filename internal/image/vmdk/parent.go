package vmdk

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// protocolName matches qemu's "protocol:rest" filenames, never followed.
var protocolName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// canonical returns the absolute path of p with symlinks resolved.
func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// resolveParent returns the path of the parent named hint by the disk at
// imagePath: a relative hint is relative to the disk's directory. With
// backingDir set, the parent must resolve to a path inside it.
func resolveParent(imagePath, hint, backingDir string) (string, error) {
	if strings.HasPrefix(hint, "json:") || protocolName.MatchString(hint) {
		return "", fmt.Errorf("vmdk: parent %q: protocol names are not supported: %w", hint, image.ErrBackingRefused)
	}
	p := hint
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(imagePath), p)
	}
	if backingDir == "" {
		return p, nil
	}
	dir, err := canonical(backingDir)
	if err != nil {
		return "", fmt.Errorf("vmdk: backing dir: %w", err)
	}
	c, err := canonical(p)
	if err != nil {
		return "", fmt.Errorf("vmdk: parent %q: %w", hint, err)
	}
	if rel, err := filepath.Rel(dir, c); err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("vmdk: parent %q resolves to %s, outside %s: %w", hint, c, dir, image.ErrBackingRefused)
	}
	return c, nil
}

// openParent opens the parent of the disk at path, read-only, through the
// registry.
func openParent(path, hint string, opt image.OpenOptions) (blockdev.Device, error) {
	me, err := canonical(path)
	if err != nil {
		return nil, fmt.Errorf("vmdk: %w", err)
	}
	chain := append(slices.Clone(opt.Chain), me)
	if len(chain) > opt.MaxChainDepth {
		return nil, fmt.Errorf("vmdk: parent chain of more than %d images: %w", opt.MaxChainDepth, image.ErrChainTooDeep)
	}
	pp, err := resolveParent(path, hint, opt.BackingDir)
	if err != nil {
		return nil, err
	}
	pc, err := canonical(pp)
	if err != nil {
		return nil, fmt.Errorf("vmdk: parent %q: %w", hint, err)
	}
	if slices.Contains(chain, pc) {
		return nil, fmt.Errorf("vmdk: parent %q loops back to %s: %w", hint, pc, image.ErrBackingRefused)
	}
	d, err := image.Open(pp, image.OpenOptions{
		ReadOnly: true, BackingDir: opt.BackingDir, MaxChainDepth: opt.MaxChainDepth,
		CacheSize: opt.CacheSize, NoLock: opt.NoLock, Chain: chain, Log: opt.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("vmdk: open parent %s: %w", pp, err)
	}
	return d, nil
}
