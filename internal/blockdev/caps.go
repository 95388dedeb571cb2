package blockdev

// zeroChunk is the largest buffer WriteZeroes's fallback writes at once.
const zeroChunk = 1 << 20

var zeroBuf = make([]byte, zeroChunk)

// Trim discards [off, off+n) on d if d is a Trimmer. A device without the
// capability gets ErrNotSupported: trim is advisory, and a caller that needs
// zeroes should call WriteZeroes.
func Trim(d Device, off, n int64) error {
	if err := CheckRange(off, n, d.Size()); err != nil {
		return err
	}
	t, ok := d.(Trimmer)
	if !ok {
		return ErrNotSupported
	}
	if n == 0 {
		return nil
	}
	return t.Trim(off, n)
}

// WriteZeroes makes [off, off+n) read as zeroes: through d's ZeroWriter when
// it has one, otherwise by writing zero bytes. mayTrim allows the device to
// release the storage.
func WriteZeroes(d Device, off, n int64, mayTrim bool) error {
	if err := CheckRange(off, n, d.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if z, ok := d.(ZeroWriter); ok {
		return z.WriteZeroes(off, n, mayTrim)
	}
	return WriteZeroesByWriting(d, off, n)
}

// WriteZeroesByWriting writes zero bytes over [off, off+n) in chunks. Devices
// use it as their own fallback.
func WriteZeroesByWriting(d Device, off, n int64) error {
	for n > 0 {
		c := min(n, zeroChunk)
		if _, err := d.WriteAt(zeroBuf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// Extents describes [off, off+n) of d (see Extenter). A device that is not
// an Extenter is reported as one data extent: the honest answer when nothing
// is known.
func Extents(d Device, off, n int64) ([]Extent, error) {
	if err := CheckRange(off, n, d.Size()); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	if e, ok := d.(Extenter); ok {
		return e.Extents(off, n)
	}
	return []Extent{{Off: off, Len: n}}, nil
}

// IsZero reports whether every byte of b is zero.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
