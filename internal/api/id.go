package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// IDLen is the number of hex digits in a disk id.
const IDLen = 12

// sectorSize is the unit of Sectors and of the CHS geometry.
const sectorSize = 512

// CHS constants of the geometry Windows reports for fixed disks.
const (
	geometryHeads   = 255
	geometrySectors = 63
)

// UniqueID returns the full hex SHA-256 of the canonical path.
func UniqueID(canonical string) string {
	s := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(s[:])
}

// DiskID returns the disk id of the canonical path: the first IDLen hex
// digits of its SHA-256. The same file always has the same id.
func DiskID(canonical string) string { return UniqueID(canonical)[:IDLen] }

// URLScheme starts the names of images in an object store.
const URLScheme = "s3://"

// IsURL reports whether name is an object store URL (s3://bucket/prefix)
// rather than a file path.
func IsURL(name string) bool { return strings.HasPrefix(name, URLScheme) }

// IsID reports whether s has the shape of a disk id.
func IsID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// CHS returns the geometry of a disk of size bytes.
func CHS(size int64) Geometry {
	return Geometry{
		Cylinders:       size / (geometryHeads * geometrySectors * sectorSize),
		Heads:           geometryHeads,
		SectorsPerTrack: geometrySectors,
		BytesPerSector:  sectorSize,
	}
}

// Sectors returns the number of 512-byte sectors in size bytes.
func Sectors(size int64) int64 { return size / sectorSize }

// Canonical returns the canonical absolute path of name: absolute, with
// every symbolic link resolved. A name that does not exist yet is resolved
// through its parent directory, which must exist.
//
// An object store URL (s3://bucket/prefix, see IsURL) is its own canonical
// name: it comes back as it is, and the disk id is the hash of that string.
func Canonical(name string) (string, error) {
	if IsURL(name) {
		return name, nil
	}
	// Not filepath.Abs: it cleans lexically, and "link/.." must go to the
	// parent of the link's target, as the kernel resolves it.
	abs := name
	if !filepath.IsAbs(name) {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", name, err)
		}
		abs = wd + string(filepath.Separator) + name
	}
	p, err := filepath.EvalSymlinks(abs)
	if err == nil {
		return p, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("resolve %s: %w", name, err)
	}
	if _, lerr := os.Lstat(abs); lerr == nil {
		// A dangling symbolic link: the target would be created.
		return "", fmt.Errorf("resolve %s: it is a symbolic link to a missing file", name)
	}
	dir, base := filepath.Split(abs)
	if base == "" || base == "." || base == ".." {
		return "", fmt.Errorf("resolve %s: %w", name, err)
	}
	pd, err := filepath.EvalSymlinks(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", &Error{Code: CodeNoParent, Message: fmt.Sprintf("%s: parent directory %s does not exist", name, filepath.Clean(dir))}
		}
		return "", fmt.Errorf("resolve %s: %w", name, err)
	}
	return filepath.Join(pd, base), nil
}
