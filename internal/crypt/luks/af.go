package luks

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
)

// hashFunc returns the constructor of a hash named as in LUKS headers
// ("sha256"), or ErrUnsupported.
func hashFunc(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("luks: hash %q: %w (sha1, sha256 and sha512 are)", name, ErrUnsupported)
}

// diffuse is the anti-forensic splitter's diffusion: each digest-sized piece
// i of b becomes H(be32(i) || piece), the last one truncated.
func diffuse(b []byte, h hash.Hash) {
	ds := h.Size()
	var ctr [4]byte
	var sum []byte
	for i := 0; i*ds < len(b); i++ {
		piece := b[i*ds : min((i+1)*ds, len(b))]
		h.Reset()
		binary.BigEndian.PutUint32(ctr[:], uint32(i))
		h.Write(ctr[:])
		h.Write(piece)
		sum = h.Sum(sum[:0])
		copy(piece, sum)
	}
	clear(sum)
}

// afMerge recovers the key of len(dst) bytes from its anti-forensic split
// src (stripes pieces of len(dst) bytes), as LUKS's AF_merge.
func afMerge(dst, src []byte, stripes int, newHash func() hash.Hash) {
	n := len(dst)
	h := newHash()
	buf := make([]byte, n)
	defer clear(buf)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(buf, buf, src[i*n:(i+1)*n])
		diffuse(buf, h)
	}
	subtle.XORBytes(dst, buf, src[(stripes-1)*n:])
}

// afSplit splits key into stripes pieces written to dst (stripes*len(key)
// bytes), with random bytes from rnd, as LUKS's AF_split.
func afSplit(dst, key []byte, stripes int, newHash func() hash.Hash, rnd io.Reader) error {
	n := len(key)
	h := newHash()
	buf := make([]byte, n)
	defer clear(buf)
	if _, err := io.ReadFull(rnd, dst[:(stripes-1)*n]); err != nil {
		return fmt.Errorf("luks: random bytes for the AF splitter: %w", err)
	}
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(buf, buf, dst[i*n:(i+1)*n])
		diffuse(buf, h)
	}
	subtle.XORBytes(dst[(stripes-1)*n:], buf, key)
	return nil
}
