package luks

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt"
)

// Layout defaults, as cryptsetup's.
const (
	defaultMetadataSize = 16 << 10 // each LUKS2 header copy
	defaultDataOffset   = 16 << 20 // LUKS2: headers + keyslots area
	luks1DataAlign      = 1 << 20  // LUKS1 payload alignment
	luks2AreaAlign      = 4096     // LUKS2 keyslot areas and keyslots_size
	wipeChunk           = 1 << 20
)

// FormatOptions describe a new volume. The zero value is cryptsetup's
// default: LUKS2, aes-xts-plain64 with a 512-bit key, 4096-byte sectors,
// argon2id benchmarked for 2 seconds, sha256, 16 MiB of header.
type FormatOptions struct {
	// Type is "luks2" (default) or "luks1".
	Type string
	// Cipher is the data cipher; default "aes-xts-plain64". See
	// crypt.NewCipher for the ones supported.
	Cipher string
	// KeySize is the volume key's length in bytes; default 64 for XTS, 32
	// for CBC.
	KeySize int
	// SectorSize is the LUKS2 encryption sector size; default 4096. LUKS1
	// always uses 512.
	SectorSize int
	// Hash is the hash of the AF splitter and of the volume key digest (and
	// of LUKS1's PBKDF2); default "sha256".
	Hash string
	// PBKDF chooses the first keyslot's KDF (default argon2id for LUKS2,
	// pbkdf2 for LUKS1).
	PBKDF PBKDFOptions
	// DigestIterations is the PBKDF2 iteration count of the volume key
	// digest; zero means benchmark (1/16 of PBKDF.IterTime, at least 1000).
	DigestIterations uint32
	// Label and Subsystem are LUKS2's free-form labels.
	Label, Subsystem string
	// UUID is the volume's UUID; default a random one.
	UUID string
	// MetadataSize is the size of each LUKS2 header copy (binary header and
	// JSON area): 16 KiB (default) to 4 MiB, a power of two.
	MetadataSize int64
	// KeyslotsSize is the LUKS2 keyslots area; default what makes the data
	// start at 16 MiB. It is a multiple of 4096 and must hold one keyslot.
	KeyslotsSize int64
}

// Validate fills o's defaults and checks it; Format and PayloadOffset call
// it.
func (o *FormatOptions) Validate() error {
	if o.Type == "" {
		o.Type = "luks2"
	}
	if o.Cipher == "" {
		o.Cipher = "aes-xts-plain64"
	}
	if o.KeySize == 0 {
		o.KeySize = 32
		if strings.Contains(o.Cipher, "-xts-") {
			o.KeySize = 64
		}
	}
	if o.Hash == "" {
		o.Hash = "sha256"
	}
	if _, err := hashFunc(o.Hash); err != nil {
		return err
	}
	c, err := crypt.NewCipher(o.Cipher, make([]byte, o.KeySize))
	if err != nil {
		return fmt.Errorf("luks: %w (%w)", err, ErrOptions)
	}
	c.Wipe()
	switch o.Type {
	case "luks1":
		if o.SectorSize != 0 && o.SectorSize != sectorSize {
			return fmt.Errorf("luks: LUKS1 with %d-byte sectors: %w", o.SectorSize, ErrOptions)
		}
		o.SectorSize = sectorSize
		if o.PBKDF.Type != "" && o.PBKDF.Type != "pbkdf2" {
			return fmt.Errorf("luks: LUKS1 with kdf %q: %w (LUKS1 has only pbkdf2)", o.PBKDF.Type, ErrOptions)
		}
		if o.PBKDF.Hash != "" && o.PBKDF.Hash != o.Hash {
			return fmt.Errorf("luks: LUKS1 uses one hash for everything (%q, not %q): %w", o.Hash, o.PBKDF.Hash, ErrOptions)
		}
		o.PBKDF.Type, o.PBKDF.Hash = "pbkdf2", o.Hash
	case "luks2":
		if o.SectorSize == 0 {
			o.SectorSize = 4096
		}
		if o.SectorSize < 512 || o.SectorSize > 4096 || o.SectorSize&(o.SectorSize-1) != 0 {
			return fmt.Errorf("luks: sector size %d: %w", o.SectorSize, ErrOptions)
		}
		if o.MetadataSize == 0 {
			o.MetadataSize = defaultMetadataSize
		}
		if !slices.Contains(luks2HdrSizes, o.MetadataSize) {
			return fmt.Errorf("luks: metadata size %d (16 KiB to 4 MiB, a power of two): %w", o.MetadataSize, ErrOptions)
		}
		if o.KeyslotsSize == 0 {
			o.KeyslotsSize = defaultDataOffset - 2*o.MetadataSize
		}
		if o.KeyslotsSize%luks2AreaAlign != 0 || o.KeyslotsSize < keyslotAreaSize(o.KeySize) || o.KeyslotsSize > luks2MaxKeyslotsSize {
			return fmt.Errorf("luks: keyslots area of %d bytes (a multiple of 4096 holding at least one %d-byte keyslot, at most 128 MiB): %w",
				o.KeyslotsSize, keyslotAreaSize(o.KeySize), ErrOptions)
		}
	default:
		return fmt.Errorf("luks: type %q (luks1 or luks2): %w", o.Type, ErrOptions)
	}
	if len(o.Label) > 47 || len(o.Subsystem) > 47 || len(o.UUID) > 39 {
		return fmt.Errorf("luks: label, subsystem or uuid too long: %w", ErrOptions)
	}
	if o.UUID == "" {
		o.UUID = newUUID()
	}
	return nil
}

// keyslotAreaSize is the LUKS2 area a keyslot of keySize bytes takes.
func keyslotAreaSize(keySize int) int64 {
	n := afSize(keySize, afStripes)
	return (n + luks2AreaAlign - 1) / luks2AreaAlign * luks2AreaAlign
}

func newUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Format writes a new LUKS volume to dev with one keyslot (0) opened by
// pass, and returns it. Everything before the data segment is overwritten;
// the data area is left as it is (it reads as garbage until written).
func Format(dev blockdev.Device, pass []byte, opt FormatOptions) (*Volume, error) {
	o := opt
	if err := o.Validate(); err != nil {
		return nil, err
	}
	kdf, err := o.PBKDF.resolve(map[string]string{"luks1": "pbkdf2", "luks2": "argon2id"}[o.Type])
	if err != nil {
		return nil, err
	}
	digestIter := o.DigestIterations
	if digestIter == 0 {
		target := o.PBKDF.IterTime
		if target <= 0 {
			target = defaultIterTime
		}
		if digestIter, err = benchPBKDF2(o.Hash, target/digestIterTimeDivisor); err != nil {
			return nil, err
		}
	}
	vk := make([]byte, o.KeySize)
	defer clear(vk)
	if _, err := rand.Read(vk); err != nil {
		return nil, fmt.Errorf("luks: volume key: %w", err)
	}
	if o.Type == "luks1" {
		return formatLUKS1(dev, pass, vk, kdf, digestIter, o)
	}
	return formatLUKS2(dev, pass, vk, kdf, digestIter, o)
}

// checkFits refuses a device too small for a payload at dataOffset.
func checkFits(dev blockdev.Device, dataOffset int64, ss int) error {
	if dev.Size() < dataOffset+int64(ss) {
		return fmt.Errorf("luks: a %d-byte device cannot hold a %d-byte header and data: %w", dev.Size(), dataOffset, ErrOptions)
	}
	return nil
}

// wipe overwrites [off, off+n) of dev with zeroes.
func wipe(dev blockdev.Device, off, n int64) error {
	buf := make([]byte, min(n, wipeChunk))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := dev.WriteAt(buf[:c], off); err != nil {
			return fmt.Errorf("luks: wipe header area at %d: %w", off, err)
		}
		off += c
		n -= c
	}
	return nil
}

// wipeRandom overwrites [off, off+n) of dev with random bytes: a removed
// keyslot's material.
func wipeRandom(dev blockdev.Device, off, n int64) error {
	buf := make([]byte, min(n, wipeChunk))
	for n > 0 {
		c := min(n, int64(len(buf)))
		rand.Read(buf[:c])
		if _, err := dev.WriteAt(buf[:c], off); err != nil {
			return fmt.Errorf("luks: wipe keyslot material at %d: %w", off, err)
		}
		off += c
		n -= c
	}
	return nil
}

// sealKey derives a key from pass with kdf and salt, splits vk with the AF
// splitter and encrypts the result with areaCipher: a keyslot's material.
func sealKey(vk, pass []byte, kdf KDF, salt []byte, areaCipher string, areaKeySize int, afHash string) ([]byte, error) {
	newHash, err := hashFunc(afHash)
	if err != nil {
		return nil, err
	}
	mat := make([]byte, afSize(len(vk), afStripes))
	if err := afSplit(mat[:len(vk)*afStripes], vk, afStripes, newHash, rand.Reader); err != nil {
		return nil, err
	}
	k, err := kdf.derive(pass, salt, areaKeySize)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	c, err := crypt.NewCipher(areaCipher, k)
	if err != nil {
		return nil, fmt.Errorf("luks: keyslot cipher: %w", err)
	}
	defer c.Wipe()
	for i := 0; i < len(mat); i += sectorSize {
		c.Encrypt(mat[i:i+sectorSize], uint64(i/sectorSize))
	}
	return mat, nil
}

func randomSalt(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// formatLUKS1 writes a LUKS1 volume: cryptsetup's layout, keyslot material
// 4096-aligned from sector 8 on, the payload at the next MiB.
func formatLUKS1(dev blockdev.Device, pass, vk []byte, kdf KDF, digestIter uint32, o FormatOptions) (*Volume, error) {
	name, mode, _ := strings.Cut(o.Cipher, "-")
	h := &luks1Header{cipherName: name, cipherMode: mode, hashSpec: o.Hash, keyBytes: uint32(o.KeySize),
		mkDigestIter: digestIter, uuid: o.UUID}
	stride := (afSize(o.KeySize, afStripes) + luks1Align - 1) / luks1Align * luks1Align / sectorSize
	first := int64(luks1Align / sectorSize)
	for i := range h.slots {
		h.slots[i] = luks1Slot{active: luks1SlotFree, keyMaterialOffset: uint32(first + int64(i)*stride), stripes: afStripes}
	}
	payload, _ := luks1Layout(o.KeySize)
	h.payloadOffset = uint32(payload / sectorSize)
	if err := checkFits(dev, payload, sectorSize); err != nil {
		return nil, err
	}
	copy(h.mkDigestSalt[:], randomSalt(saltSize))
	d, err := pbkdf2Key(o.Hash, vk, h.mkDigestSalt[:], int(digestIter), luks1DigestSize)
	if err != nil {
		return nil, err
	}
	copy(h.mkDigest[:], d)
	if err := wipe(dev, 0, payload); err != nil {
		return nil, err
	}
	v := &Volume{dev: dev, v1: h}
	if _, err := v.addKeyLUKS1(vk, pass, kdf, 0); err != nil {
		return nil, err
	}
	return v, nil
}

// formatLUKS2 writes a LUKS2 volume: two header copies, the keyslots area,
// then the data segment.
func formatLUKS2(dev blockdev.Device, pass, vk []byte, kdf KDF, digestIter uint32, o FormatOptions) (*Volume, error) {
	dataOffset := 2*o.MetadataSize + o.KeyslotsSize
	if err := checkFits(dev, dataOffset, o.SectorSize); err != nil {
		return nil, err
	}
	salt := randomSalt(saltSize)
	dg, err := pbkdf2Key(o.Hash, vk, salt, int(digestIter), hashSize(o.Hash))
	if err != nil {
		return nil, err
	}
	segment := l2Segment{Type: "crypt", Offset: u64(dataOffset), Size: "dynamic",
		Encryption: o.Cipher, SectorSize: o.SectorSize}
	config := l2Config{JSONSize: u64(o.MetadataSize - luks2BinSize), KeyslotsSize: u64(o.KeyslotsSize)}
	seg, _ := json.Marshal(segment)
	cfg, _ := json.Marshal(config)
	meta := &luks2Meta{
		rawKeyslots: map[string]json.RawMessage{},
		rawTokens:   map[string]json.RawMessage{},
		rawSegments: map[string]json.RawMessage{"0": seg},
		rawConfig:   cfg,
		keyslots:    map[int]*l2Keyslot{},
		tokens:      map[int]*l2Token{},
		segments:    map[int]*l2Segment{0: &segment},
		config:      config,
		digests: map[int]*l2Digest{0: {Type: "pbkdf2", Keyslots: []string{}, Segments: []string{"0"},
			Hash: o.Hash, Iterations: digestIter, Salt: salt, Digest: dg}},
	}
	bin := &luks2Bin{hdrSize: o.MetadataSize, label: o.Label, csumAlg: "sha256", uuid: o.UUID, subsystem: o.Subsystem}
	copy(bin.salt[:], randomSalt(luks2SaltSize))
	if err := wipe(dev, 0, dataOffset); err != nil {
		return nil, err
	}
	v := &Volume{dev: dev, v2: bin, meta: meta}
	if _, err := v.addKeyLUKS2(vk, pass, kdf, 0); err != nil {
		return nil, err
	}
	return v, nil
}

// hashSize returns the digest size of a hash name already checked.
func hashSize(name string) int {
	h, err := hashFunc(name)
	if err != nil {
		return 0
	}
	return h().Size()
}

// PayloadOffset returns where the data segment of a volume Format makes
// with opt starts: the bytes of header an image needs on top of the
// payload size a user asks for (16 MiB for LUKS2, 2 MiB for LUKS1 with the
// defaults).
func PayloadOffset(opt FormatOptions) (int64, error) {
	o := opt
	if err := o.Validate(); err != nil {
		return 0, err
	}
	if o.Type == "luks1" {
		return luks1Layout(o.KeySize)
	}
	return 2*o.MetadataSize + o.KeyslotsSize, nil
}

// luks1Layout returns the payload offset of cryptsetup's LUKS1 layout for a
// key of keySize bytes.
func luks1Layout(keySize int) (int64, error) {
	stride := (afSize(keySize, afStripes) + luks1Align - 1) / luks1Align * luks1Align
	end := luks1Align + luks1Slots*stride
	return (end + luks1DataAlign - 1) / luks1DataAlign * luks1DataAlign, nil
}
