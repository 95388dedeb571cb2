package vhd

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf16"

	"encoding/binary"

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

// parentCandidates returns the paths the header names for the parent, in
// the order they are tried: the relative and absolute Windows locators,
// the Mac URL, and the parent's name in the image's directory.
func parentCandidates(f *os.File, fsize int64, imagePath string, h *dynHeader) []string {
	dir := filepath.Dir(imagePath)
	var out []string
	for _, want := range []uint32{platformW2ru, platformW2ku, platformMacX} {
		for _, l := range h.locators {
			if l.platform != want || l.length == 0 || l.length > maxLocatorLen ||
				l.offset > uint64(fsize) || int64(l.offset)+int64(l.length) > fsize {
				continue
			}
			b := make([]byte, l.length)
			if _, err := f.ReadAt(b, int64(l.offset)); err != nil {
				continue
			}
			var p string
			switch want {
			case platformMacX:
				u, err := url.Parse(string(bytes.TrimRight(b, "\x00")))
				if err != nil || u.Scheme != "file" {
					continue
				}
				p = u.Path
			default:
				p = windowsPath(decodeUTF16(b, binary.LittleEndian))
				if len(p) >= 2 && p[1] == ':' { // a drive letter: only its tail can be found here
					continue
				}
			}
			if p == "" {
				continue
			}
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			out = append(out, p)
		}
	}
	if h.parentName != "" {
		out = append(out, filepath.Join(dir, filepath.Base(windowsPath(h.parentName))))
	}
	return out
}

// openParent opens the parent of the differencing disk at path, read-only.
func openParent(path string, h *dynHeader, opt image.OpenOptions) (blockdev.Device, error) {
	me, err := canonical(path)
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	chain := append(slices.Clone(opt.Chain), me)
	if len(chain) > opt.MaxChainDepth {
		return nil, fmt.Errorf("vhd: parent chain of more than %d images: %w", opt.MaxChainDepth, image.ErrChainTooDeep)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhd: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vhd: %w", err)
	}
	cands := parentCandidates(f, st.Size(), path, h)
	f.Close()
	var pp string
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			pp = c
			break
		}
	}
	if pp == "" {
		return nil, fmt.Errorf("vhd: parent %q not found (tried %q): %w", h.parentName, cands, image.ErrBackingRefused)
	}
	pc, err := canonical(pp)
	if err != nil {
		return nil, fmt.Errorf("vhd: parent %s: %w", pp, err)
	}
	if opt.BackingDir != "" {
		dir, err := canonical(opt.BackingDir)
		if err != nil {
			return nil, fmt.Errorf("vhd: backing dir: %w", err)
		}
		if rel, err := filepath.Rel(dir, pc); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("vhd: parent %s resolves to %s, outside %s: %w", pp, pc, dir, image.ErrBackingRefused)
		}
	}
	if slices.Contains(chain, pc) {
		return nil, fmt.Errorf("vhd: parent %s loops back: %w", pp, image.ErrBackingRefused)
	}
	ft, _, err := readFooter(pp)
	if err != nil {
		return nil, fmt.Errorf("vhd: parent %s: %w", pp, err)
	}
	if ft.uuid != h.parentUUID {
		opt.Log.Warn("parent's unique id differs from the one the differencing disk recorded", "image", path, "parent", pp)
	}
	d, err := Open(pp, image.OpenOptions{
		Format: Name, ReadOnly: true, BackingDir: opt.BackingDir, MaxChainDepth: opt.MaxChainDepth,
		CacheSize: opt.CacheSize, NoLock: opt.NoLock, Chain: chain, Log: opt.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("vhd: open parent %s: %w", pp, err)
	}
	return d, nil
}

// utf16Len is the length in bytes of s encoded as UTF-16.
func utf16Len(s string) int { return 2 * len(utf16.Encode([]rune(s))) }
