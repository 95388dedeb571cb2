package vhdx

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// canonical returns the absolute path of p with symlinks resolved.
func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// parentCandidates returns the paths a parent locator names, in the order
// they are tried: relative_path (against the disk's directory), then
// absolute_win32_path and volume_path when they are usable here.
func parentCandidates(imagePath string, kv map[string]string) []string {
	var out []string
	if r := kv["relative_path"]; r != "" {
		r = strings.TrimPrefix(strings.ReplaceAll(r, `\`, "/"), "./")
		out = append(out, filepath.Join(filepath.Dir(imagePath), r))
	}
	for _, k := range []string{"absolute_win32_path", "volume_path"} {
		if p := strings.ReplaceAll(kv[k], `\`, "/"); strings.HasPrefix(p, "/") {
			out = append(out, p)
		}
	}
	return out
}

// openParent opens the parent of the differencing disk img, read-only.
func openParent(img *Image, opt image.OpenOptions) (blockdev.Device, error) {
	me, err := canonical(img.path)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	chain := append(slices.Clone(opt.Chain), me)
	if len(chain) > opt.MaxChainDepth {
		return nil, fmt.Errorf("vhdx: parent chain of more than %d images: %w", opt.MaxChainDepth, image.ErrChainTooDeep)
	}
	cands := parentCandidates(img.path, img.m.parent)
	var pp string
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			pp = c
			break
		}
	}
	if pp == "" {
		return nil, fmt.Errorf("vhdx: parent not found (tried %q): %w", cands, image.ErrBackingRefused)
	}
	pc, err := canonical(pp)
	if err != nil {
		return nil, fmt.Errorf("vhdx: parent %s: %w", pp, err)
	}
	if opt.BackingDir != "" {
		dir, err := canonical(opt.BackingDir)
		if err != nil {
			return nil, fmt.Errorf("vhdx: backing dir: %w", err)
		}
		if rel, err := filepath.Rel(dir, pc); err != nil || !filepath.IsLocal(rel) {
			return nil, fmt.Errorf("vhdx: parent %s resolves to %s, outside %s: %w", pp, pc, dir, image.ErrBackingRefused)
		}
	}
	if slices.Contains(chain, pc) {
		return nil, fmt.Errorf("vhdx: parent %s loops back: %w", pp, image.ErrBackingRefused)
	}
	d, err := Open(pp, image.OpenOptions{
		Format: Name, ReadOnly: true, BackingDir: opt.BackingDir, MaxChainDepth: opt.MaxChainDepth,
		CacheSize: opt.CacheSize, NoLock: opt.NoLock, Chain: chain, Log: opt.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("vhdx: open parent %s: %w", pp, err)
	}
	if link := img.m.parent["parent_linkage"]; link != "" && !strings.EqualFold(link, d.hdrs[d.cur].dataWrite.String()) {
		opt.Log.Warn("parent's data-write GUID differs from the differencing disk's parent_linkage", "image", img.path, "parent", pp)
	}
	if d.Size() != img.m.size {
		d.Close()
		return nil, corruptf("parent %s is %d bytes, the differencing disk %d", pp, d.Size(), img.m.size)
	}
	return d, nil
}
