package cli

import (
	"fmt"
	"strconv"
	"strings"
)

// maxSizeDigits bounds the digits ParseSize reads before giving up, so a
// huge input costs nothing.
const maxSizeDigits = 20

// sizeUnits maps a lower-case size suffix to its multiplier (binary).
var sizeUnits = map[string]int64{
	"b": 1,
	"k": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tib": 1 << 40,
}

// parseSize parses a disk size: a whole number with an optional binary
// suffix K, M, G or T (also KiB, MiB, GiB, TiB, any case; B for bytes). A
// bare number means MiB, as in the original demo. The result is positive
// and a multiple of 512.
func parseSize(s string) (int64, error) {
	bad := func(why string) (int64, error) {
		return 0, fmt.Errorf("invalid size %q: %s (e.g. 100M, 10G, 512K; a bare number means MiB)", s, why)
	}
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return bad("want a whole number")
	}
	if i > maxSizeDigits {
		return bad("too large")
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return bad("too large")
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	mul := int64(1 << 20)
	if unit != "" {
		m, ok := sizeUnits[unit]
		if !ok {
			return bad(fmt.Sprintf("unknown unit %q: want K, M, G or T", t[i:]))
		}
		mul = m
	}
	if n == 0 {
		return bad("must be more than zero")
	}
	if n > (1<<63-1)/mul {
		return bad("too large")
	}
	size := n * mul
	if size%512 != 0 {
		return bad("not a multiple of 512 bytes")
	}
	return size, nil
}

// formatSize renders a size for people, in the largest binary unit that
// divides it to one decimal, as losetup does (100M, 1.5G, 512B).
func formatSize(n int64) string {
	units := []string{"B", "K", "M", "G", "T", "P", "E"}
	f := float64(n)
	u := 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if f == float64(int64(f)) {
		return strconv.FormatInt(int64(f), 10) + units[u]
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[u]
}
