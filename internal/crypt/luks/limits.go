package luks

import (
	"errors"
	"fmt"
)

// ErrLimit is returned when no keyslot opens and at least one was not
// tried because its KDF asks for more memory, threads or work than the
// Limits allow. The message names the keyslot, the parameter, the value
// asked for and the limit. It does not wrap ErrWrongPassphrase: asking for
// the passphrase again would not help.
var ErrLimit = errors.New("LUKS keyslot cost over the limit")

// Limits bound what trying one keyslot may cost: a header is untrusted
// input, and its KDF parameters decide how much memory and CPU time
// unlocking takes (argon2 may ask for 4 GiB and 2^32 passes, PBKDF2 for
// 2^32 iterations, for each of 32 keyslots). Every keyslot is checked
// against them before anything is derived; one over a limit is skipped
// (another keyslot may still open). Keyslots are tried one at a time, so
// the memory taken is that of one keyslot, and the time at most the sum.
//
// A zero field takes its default (DefaultLimits). The defaults let every
// volume cryptsetup makes with its defaults (argon2id with at most 1 GiB
// and 4 threads, or PBKDF2, benchmarked for 2 seconds) open, on the
// fastest machines of today with a margin; a volume made with a longer
// --iter-time or more --pbkdf-memory may need them raised.
type Limits struct {
	// Argon2MemoryKiB is the most memory an argon2 keyslot may ask for,
	// in KiB. Default 1 GiB: cryptsetup's default and largest automatic
	// choice (DEFAULT_LUKS2_MEMORY_KB), lowered by it, never raised, when
	// the machine has less than 2 GiB of RAM. Its own upper bound for a
	// header is 4 GiB.
	Argon2MemoryKiB uint32
	// Argon2Threads is the most threads (lanes) an argon2 keyslot may
	// ask for. Default 4: cryptsetup's maximum (crypt_pbkdf_get_limits,
	// DEFAULT_LUKS2_PARALLEL_THREADS).
	Argon2Threads uint32
	// Argon2Time bounds argon2's work: the most passes (time cost) over
	// Argon2MemoryKiB of memory. A keyslot asking for less memory may make
	// proportionally more passes: time × memory ≤ Argon2Time ×
	// Argon2MemoryKiB, so that one made with a small --pbkdf-memory (whose
	// benchmark raises the time cost instead) still opens. Default 32:
	// cryptsetup's 2-second benchmark with 1 GiB and 4 threads chooses 4
	// to 15 passes on the machines its users report (`cryptsetup
	// benchmark`), so 32 is twice the fastest.
	Argon2Time uint32
	// PBKDF2Iterations is the most PBKDF2 iterations of a keyslot (LUKS1,
	// or LUKS2 with --pbkdf pbkdf2) or of a volume key digest (1/16 of a
	// keyslot's at most). Default 2^26 (67 million): cryptsetup's
	// benchmark chooses 2 seconds' worth of the iterations per second
	// `cryptsetup benchmark` reports, 0.5 to 5 million (sha1, sha256,
	// sha512) on the machines its users report and about 10 million on
	// the fastest with SHA extensions: 2^26 is three times 2 seconds of
	// that.
	PBKDF2Iterations uint32
}

// DefaultLimits returns the limits a zero Limits stands for.
func DefaultLimits() Limits {
	return Limits{
		Argon2MemoryKiB:  defaultArgonMaxMemKiB,
		Argon2Threads:    defaultArgonMaxThreads,
		Argon2Time:       32,
		PBKDF2Iterations: 1 << 26,
	}
}

// orDefaults returns l with its zero fields set to the defaults.
func (l Limits) orDefaults() Limits {
	d := DefaultLimits()
	for _, f := range []struct{ v, def *uint32 }{
		{&l.Argon2MemoryKiB, &d.Argon2MemoryKiB},
		{&l.Argon2Threads, &d.Argon2Threads},
		{&l.Argon2Time, &d.Argon2Time},
		{&l.PBKDF2Iterations, &d.PBKDF2Iterations},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return l
}

// overLimit is the error for a keyslot parameter over its limit: asked
// and limit are the values with their units, field the Limits field that
// raises it (and how it applies).
func overLimit(slot int, param, asked, limit, field string) error {
	return fmt.Errorf("luks: keyslot %d: %s %s exceeds the limit of %s (Limits.%s): %w",
		slot, param, asked, limit, field, ErrLimit)
}

// check returns an ErrLimit naming the first parameter of k, the KDF of
// keyslot slot, that l (with defaults filled) does not allow.
func (l Limits) check(slot int, k KDF) error {
	switch k.Type {
	case "argon2i", "argon2id":
		if k.MemoryKiB > l.Argon2MemoryKiB {
			return overLimit(slot, k.Type+" memory", fmt.Sprint(k.MemoryKiB, " KiB"),
				fmt.Sprint(l.Argon2MemoryKiB, " KiB"), "Argon2MemoryKiB")
		}
		if k.Parallel > l.Argon2Threads {
			return overLimit(slot, k.Type+" threads", fmt.Sprint(k.Parallel), fmt.Sprint(l.Argon2Threads), "Argon2Threads")
		}
		// The work in KiB-passes; both products fit 64 bits.
		mem := max(uint64(k.MemoryKiB), 1)
		if work, most := uint64(k.Time)*mem, uint64(l.Argon2Time)*uint64(l.Argon2MemoryKiB); work > most {
			return overLimit(slot, k.Type+" time cost", fmt.Sprintf("%d with %d KiB", k.Time, k.MemoryKiB),
				fmt.Sprintf("%d with %d KiB", most/mem, k.MemoryKiB),
				fmt.Sprintf("Argon2Time: time × memory ≤ %d × %d KiB", l.Argon2Time, l.Argon2MemoryKiB))
		}
	case "pbkdf2":
		if k.Iterations > l.PBKDF2Iterations {
			return overLimit(slot, "pbkdf2 iterations", fmt.Sprint(k.Iterations), fmt.Sprint(l.PBKDF2Iterations), "PBKDF2Iterations")
		}
	}
	return nil
}

// checkDigest returns an ErrLimit when the volume key digest that keyslot
// slot is checked against takes more PBKDF2 iterations than l allows.
func (l Limits) checkDigest(slot int, iterations uint32) error {
	if iterations > l.PBKDF2Iterations {
		return overLimit(slot, "volume key digest pbkdf2 iterations", fmt.Sprint(iterations),
			fmt.Sprint(l.PBKDF2Iterations), "PBKDF2Iterations")
	}
	return nil
}
