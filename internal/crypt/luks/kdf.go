package luks

import (
	"crypto/pbkdf2"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/crypto/argon2"
)

// Bounds on KDF parameters read from a header, as cryptsetup's.
const (
	maxArgonMemoryKiB = 4 << 20 // 4 GiB
	minArgonMemoryKiB = 32
	maxArgonThreads   = 64
	minArgonTime      = 4 // for new keyslots; headers may hold less
	minPBKDF2Iter     = 1000
	maxKeySize        = 512 // bytes; AES-256-XTS takes 64
	saltSize          = 32
)

// Defaults for new keyslots, as cryptsetup's.
const (
	defaultIterTime        = 2 * time.Second
	defaultArgonMaxMemKiB  = 1 << 20 // 1 GiB, and at most half the RAM
	defaultArgonMaxThreads = 4
	digestIterTimeDivisor  = 16 // volume key digests take 1/16 of the keyslot time (125 ms of 2 s)
)

// Benchmark bounds.
const (
	benchProbeTime     = 50 * time.Millisecond // a pbkdf2 probe runs at least this long
	maxBenchIterations = 1 << 30               // pbkdf2 probes stop growing here
	argonProbeMemKiB   = 64 << 10              // argon2 is probed with at most this memory
	maxArgonTime       = 1 << 20               // the largest argon2 time cost chosen
)

// KDF is a key derivation function with its cost, as a keyslot stores it.
type KDF struct {
	// Type is "pbkdf2", "argon2i" or "argon2id".
	Type string `json:"type"`
	// Hash is pbkdf2's hash ("sha256").
	Hash string `json:"hash,omitempty"`
	// Iterations is pbkdf2's iteration count.
	Iterations uint32 `json:"iterations,omitempty"`
	// Time, MemoryKiB and Parallel are argon2's passes, memory and threads.
	Time      uint32 `json:"time,omitempty"`
	MemoryKiB uint32 `json:"memory_kib,omitempty"`
	Parallel  uint32 `json:"parallel,omitempty"`
}

// validate checks the parameters are within bounds.
func (k KDF) validate() error {
	switch k.Type {
	case "pbkdf2":
		if _, err := hashFunc(k.Hash); err != nil {
			return err
		}
		if k.Iterations < 1 {
			return fmt.Errorf("luks: pbkdf2 with %d iterations: %w", k.Iterations, ErrCorrupt)
		}
	case "argon2i", "argon2id":
		if k.Time < 1 || k.MemoryKiB < minArgonMemoryKiB || k.MemoryKiB > maxArgonMemoryKiB ||
			k.Parallel < 1 || k.Parallel > maxArgonThreads {
			return fmt.Errorf("luks: %s time %d memory %d KiB threads %d out of bounds: %w",
				k.Type, k.Time, k.MemoryKiB, k.Parallel, ErrCorrupt)
		}
	default:
		return fmt.Errorf("luks: kdf %q: %w", k.Type, ErrUnsupported)
	}
	return nil
}

// derive returns the keyLen-byte key for pass and salt. The caller wipes it.
func (k KDF) derive(pass, salt []byte, keyLen int) ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	switch k.Type {
	case "argon2i":
		return argon2.Key(pass, salt, k.Time, k.MemoryKiB, uint8(k.Parallel), uint32(keyLen)), nil
	case "argon2id":
		return argon2.IDKey(pass, salt, k.Time, k.MemoryKiB, uint8(k.Parallel), uint32(keyLen)), nil
	}
	return pbkdf2Key(k.Hash, pass, salt, int(k.Iterations), keyLen)
}

// pbkdf2Key derives a key with PBKDF2. The passphrase passes through a Go
// string (crypto/pbkdf2's signature), which cannot be wiped.
func pbkdf2Key(hashName string, pass, salt []byte, iter, keyLen int) ([]byte, error) {
	h, err := hashFunc(hashName)
	if err != nil {
		return nil, err
	}
	out, err := pbkdf2.Key(h, string(pass), salt, iter, keyLen)
	if err != nil {
		return nil, fmt.Errorf("luks: pbkdf2: %w", err)
	}
	return out, nil
}

// PBKDFOptions choose the KDF of a new keyslot. Cost parameters left zero
// are benchmarked, as cryptsetup does, so that unlocking takes about
// IterTime on this machine.
type PBKDFOptions struct {
	// Type is "argon2id" (the LUKS2 default), "argon2i" or "pbkdf2" (the
	// only one LUKS1 has).
	Type string
	// Hash is pbkdf2's hash; default "sha256".
	Hash string
	// IterTime is the unlock time the benchmark aims at; default 2s.
	IterTime time.Duration
	// Iterations is pbkdf2's iteration count or argon2's time cost; zero
	// means benchmark.
	Iterations uint32
	// MemoryKiB is argon2's memory cost (with Iterations zero, the most the
	// benchmark may use); default 1 GiB, at most half the RAM.
	MemoryKiB uint32
	// Parallel is argon2's thread count; default min(4, CPUs).
	Parallel uint32
}

// resolve returns the KDF o describes, benchmarking what it leaves open.
func (o PBKDFOptions) resolve(defaultType string) (KDF, error) {
	k := KDF{Type: o.Type, Hash: o.Hash}
	if k.Type == "" {
		k.Type = defaultType
	}
	target := o.IterTime
	if target <= 0 {
		target = defaultIterTime
	}
	switch k.Type {
	case "pbkdf2":
		if k.Hash == "" {
			k.Hash = "sha256"
		}
		if _, err := hashFunc(k.Hash); err != nil {
			return KDF{}, err
		}
		k.Iterations = o.Iterations
		if k.Iterations == 0 {
			it, err := benchPBKDF2(k.Hash, target)
			if err != nil {
				return KDF{}, err
			}
			k.Iterations = it
		}
	case "argon2i", "argon2id":
		if k.Hash != "" {
			return KDF{}, fmt.Errorf("luks: %s takes no hash: %w", k.Type, ErrOptions)
		}
		k.Parallel = o.Parallel
		if k.Parallel == 0 {
			k.Parallel = uint32(min(defaultArgonMaxThreads, runtime.NumCPU()))
		}
		k.MemoryKiB = o.MemoryKiB
		if k.MemoryKiB == 0 {
			k.MemoryKiB = defaultArgonMemory()
		}
		k.Time = o.Iterations
		if k.Time == 0 {
			k.Time, k.MemoryKiB = benchArgon2(k, target)
		}
	default:
		return KDF{}, fmt.Errorf("luks: kdf %q: %w", k.Type, ErrUnsupported)
	}
	if err := k.validate(); err != nil {
		return KDF{}, fmt.Errorf("%w (%w)", err, ErrOptions)
	}
	return k, nil
}

// defaultArgonMemory is 1 GiB, or half the RAM when that is less.
func defaultArgonMemory() uint32 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err == nil {
		half := uint64(si.Totalram) * uint64(si.Unit) / 2 / 1024
		if half < defaultArgonMaxMemKiB {
			return uint32(max(half, minArgonMemoryKiB))
		}
	}
	return defaultArgonMaxMemKiB
}

// benchPBKDF2 returns the iterations that take about target on this machine.
func benchPBKDF2(hashName string, target time.Duration) (uint32, error) {
	salt := make([]byte, saltSize)
	for it := 1000; ; it *= 2 {
		t0 := time.Now()
		if _, err := pbkdf2Key(hashName, []byte("benchmark"), salt, it, 32); err != nil {
			return 0, err
		}
		if el := time.Since(t0); el >= benchProbeTime || it >= maxBenchIterations {
			n := float64(it) * float64(target) / float64(max(el, 1))
			return uint32(min(max(n, minPBKDF2Iter), float64(^uint32(0)))), nil
		}
	}
}

// benchArgon2 returns the time and memory cost that take about target with
// k's parallelism, using at most k.MemoryKiB: the memory is lowered (and the
// time kept at its minimum of 4) when even 4 passes over it take longer.
func benchArgon2(k KDF, target time.Duration) (timeCost, memKiB uint32) {
	probeMem := min(k.MemoryKiB, argonProbeMemKiB)
	t0 := time.Now()
	clear(argon2.IDKey([]byte("benchmark"), make([]byte, saltSize), 1, probeMem, uint8(k.Parallel), 32))
	perKiBPass := float64(max(time.Since(t0), 1)) / float64(probeMem)
	mem := float64(k.MemoryKiB)
	if minArgonTime*mem*perKiBPass > float64(target) {
		mem = max(float64(target)/(minArgonTime*perKiBPass), minArgonMemoryKiB)
	}
	tc := max(float64(target)/(mem*perKiBPass), minArgonTime)
	return uint32(min(tc, maxArgonTime)), uint32(mem)
}
