package api

import "io"

// ReadWiped reads r to its end, for bytes that hold secrets (a request
// with a passphrase, a key file). Unlike io.ReadAll it clears each buffer
// it outgrows, so no copy is left behind in freed memory; the caller
// clears what it returns.
func ReadWiped(r io.Reader) ([]byte, error) {
	b := make([]byte, 0, 512)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			nb := make([]byte, len(b), 2*cap(b))
			copy(nb, b)
			clear(b)
			b = nb
		}
	}
}
