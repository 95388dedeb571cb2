package vhdx

import (
	"errors"
	"fmt"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
)

// parentNames returns the names a parent locator gives its parent, in
// the order they are tried: relative_path, then absolute_win32_path and
// volume_path, with Windows separators made slashes. Where they lead is
// opt.Names' business (image.OpenBacking).
func parentNames(kv map[string]string) []string {
	var out []string
	if r := kv["relative_path"]; r != "" {
		out = append(out, strings.TrimPrefix(strings.ReplaceAll(r, `\`, "/"), "./"))
	}
	for _, k := range []string{"absolute_win32_path", "volume_path"} {
		if p := kv[k]; p != "" {
			out = append(out, strings.ReplaceAll(p, `\`, "/"))
		}
	}
	return out
}

// openParent opens the parent of the differencing disk img, read-only,
// through image.OpenBacking: the first of the locator's names that opens;
// when none does, the errors of all.
func openParent(img *Image, opt image.OpenOptions) (blockdev.Device, error) {
	names := parentNames(img.m.parent)
	if len(names) == 0 {
		return nil, corruptf("parent locator names no parent (relative_path, absolute_win32_path or volume_path)")
	}
	var d blockdev.Device
	var errs []error
	for _, n := range names {
		var err error
		if d, err = image.OpenBacking(img.f, image.Backing{Name: n, Format: Name, What: "parent"}, opt); err == nil {
			break
		}
		errs = append(errs, err)
	}
	if d == nil {
		return nil, fmt.Errorf("vhdx: %w", errors.Join(errs...))
	}
	p, _ := d.(*Image)
	if link := img.m.parent["parent_linkage"]; p != nil && link != "" && !strings.EqualFold(link, p.hdrs[p.cur].dataWrite.String()) {
		opt.Log.Warn("parent's data-write GUID differs from the differencing disk's parent_linkage", "image", img.f.Name(), "parent", p.f.Name())
	}
	if d.Size() != img.m.size {
		d.Close()
		return nil, corruptf("parent is %d bytes, the differencing disk %d", d.Size(), img.m.size)
	}
	return d, nil
}
