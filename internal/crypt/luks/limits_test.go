package luks

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
)

// allocated returns the bytes the heap allocated while f ran (the tests
// of this package do not run in parallel). A KDF that started would show:
// argon2 allocates its whole memory cost at once.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// maxRefusalAlloc is what refusing a hostile header may allocate: the
// header copies it reads (4 MiB each at most) and their decoding.
const maxRefusalAlloc = 64 << 20

// kdfOf returns the kdf object of keyslot id in top.
func kdfOf(top map[string]any, id string) map[string]any {
	return top["keyslots"].(map[string]any)[id].(map[string]any)["kdf"].(map[string]any)
}

// hostileLUKS2 formats a LUKS2 volume opened by "p" (argon2id, or pbkdf2
// when pbkdf2 is set) in memory and patches its metadata with patch.
func hostileLUKS2(t *testing.T, pbkdf2 bool, patch func(top map[string]any)) blockdev.Device {
	t.Helper()
	dev := blockdev.NewMem(20 << 20)
	kdf := fastKDF
	if pbkdf2 {
		kdf = fastPBKDF2
	}
	v, err := Format(dev, []byte("p"), FormatOptions{PBKDF: kdf, DigestIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	rewriteJSON(t, v, patch)
	return dev
}

// hostileLUKS1 formats a LUKS1 volume opened by "p" in memory and patches
// its phdr with patch.
func hostileLUKS1(t *testing.T, patch func(phdr []byte)) blockdev.Device {
	t.Helper()
	dev := blockdev.NewMem(4 << 20)
	if _, err := Format(dev, []byte("p"), FormatOptions{Type: "luks1", PBKDF: fastPBKDF2, DigestIterations: 1000}); err != nil {
		t.Fatal(err)
	}
	phdr := make([]byte, luks1HeaderSize)
	if _, err := dev.ReadAt(phdr, 0); err != nil {
		t.Fatal(err)
	}
	patch(phdr)
	if _, err := dev.WriteAt(phdr, 0); err != nil {
		t.Fatal(err)
	}
	return dev
}

// TestHostileKDFRefused gives headers whose KDFs ask for more than the
// default limits: each loads (and dumps), and opening it is refused with
// ErrLimit naming the keyslot, the parameter, the value and the limit,
// before anything is derived.
func TestHostileKDFRefused(t *testing.T) {
	tests := []struct {
		name string
		dev  func(t *testing.T) blockdev.Device
		want []string
	}{
		{"argon2 4 GiB", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, false, func(top map[string]any) { kdfOf(top, "0")["memory"] = 4 << 20 })
		}, []string{"keyslot 0", "argon2id memory 4194304 KiB", "limit of 1048576 KiB", "Limits.Argon2MemoryKiB"}},
		{"argon2 64 threads", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, false, func(top map[string]any) { kdfOf(top, "0")["cpus"] = 64 })
		}, []string{"keyslot 0", "argon2id threads 64", "limit of 4", "Limits.Argon2Threads"}},
		{"argon2 2^32-1 passes", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, false, func(top map[string]any) { kdfOf(top, "0")["time"] = 1<<32 - 1 })
		}, []string{"keyslot 0", "argon2id time cost 4294967295 with 32 KiB", "limit of 1048576 with 32 KiB", "Limits.Argon2Time"}},
		{"argon2 1 GiB 33 passes", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, false, func(top map[string]any) { kdfOf(top, "0")["memory"] = 1 << 20; kdfOf(top, "0")["time"] = 33 })
		}, []string{"keyslot 0", "argon2id time cost 33 with 1048576 KiB", "limit of 32 with 1048576 KiB"}},
		{"luks2 pbkdf2 2^32-1 iterations", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, true, func(top map[string]any) { kdfOf(top, "0")["iterations"] = 1<<32 - 1 })
		}, []string{"keyslot 0", "pbkdf2 iterations 4294967295", "limit of 67108864", "Limits.PBKDF2Iterations"}},
		{"luks2 digest 2^32-1 iterations", func(t *testing.T) blockdev.Device {
			return hostileLUKS2(t, false, func(top map[string]any) {
				top["digests"].(map[string]any)["0"].(map[string]any)["iterations"] = 1<<32 - 1
			})
		}, []string{"keyslot 0", "volume key digest pbkdf2 iterations 4294967295", "limit of 67108864"}},
		{"luks1 2^32-1 iterations", func(t *testing.T) blockdev.Device {
			return hostileLUKS1(t, func(phdr []byte) { binary.BigEndian.PutUint32(phdr[l1Slots+4:], 1<<32-1) })
		}, []string{"keyslot 0", "pbkdf2 iterations 4294967295", "limit of 67108864"}},
		{"luks1 digest 2^32-1 iterations", func(t *testing.T) blockdev.Device {
			return hostileLUKS1(t, func(phdr []byte) { binary.BigEndian.PutUint32(phdr[l1MKDigestIter:], 1<<32-1) })
		}, []string{"keyslot 0", "volume key digest pbkdf2 iterations 4294967295"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := tt.dev(t)
			var err error
			n := allocated(func() {
				var v *Volume
				if v, err = Load(dev); err != nil {
					t.Fatalf("Load: %v", err)
				}
				if err := v.Info().WriteText(new(strings.Builder)); err != nil {
					t.Fatal(err)
				}
				_, _, err = v.Open([]byte("p"), OpenOptions{})
			})
			if !errors.Is(err, ErrLimit) || errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("Open: %v, want ErrLimit (and not ErrWrongPassphrase)", err)
			}
			t.Logf("%v (%d KiB allocated)", err, n>>10)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if n > maxRefusalAlloc {
				t.Errorf("refusing allocated %d MiB", n>>20)
			}
		})
	}
}

// TestKDFOutOfRange checks that KDF numbers no keyslot can hold (2^32
// PBKDF2 iterations, more than 4 GiB of argon2 memory) make the header
// corrupt at once, naming the keyslot and the field.
func TestKDFOutOfRange(t *testing.T) {
	tests := []struct {
		name  string
		patch func(top map[string]any)
		want  []string
	}{
		{"2^32 iterations", func(top map[string]any) { kdfOf(top, "0")["iterations"] = 1 << 32 }, []string{"keyslot 0", "iterations", "4294967296"}},
		{"argon2 over 4 GiB", func(top map[string]any) { kdfOf(top, "0")["memory"] = 4<<20 + 1 }, []string{"keyslot 0", "memory 4194305 KiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := hostileLUKS2(t, strings.Contains(tt.name, "iterations"), tt.patch)
			var err error
			n := allocated(func() { _, err = Load(dev) })
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load: %v, want ErrCorrupt", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if n > maxRefusalAlloc {
				t.Errorf("refusing allocated %d MiB", n>>20)
			}
		})
	}
}

// TestLimitsRaisedAndLowered checks that a caller's Limits apply: lower
// ones refuse what the defaults allow, raised ones allow what they refuse.
func TestLimitsRaisedAndLowered(t *testing.T) {
	// fastKDF: argon2id, 4 passes over 32 KiB, 1 thread.
	dev := hostileLUKS2(t, false, func(top map[string]any) {})
	v, err := Load(dev)
	if err != nil {
		t.Fatal(err)
	}
	for _, lim := range []Limits{{Argon2MemoryKiB: 31}, {Argon2Time: 1, Argon2MemoryKiB: 127}, {PBKDF2Iterations: 999}} {
		if _, _, err := v.UnlockKeyContext(context.Background(), []byte("p"), lim); !errors.Is(err, ErrLimit) {
			t.Errorf("limits %+v: %v, want ErrLimit", lim, err)
		}
	}
	for _, lim := range []Limits{{}, {Argon2Time: 1, Argon2MemoryKiB: 128}, DefaultLimits()} {
		key, slot, err := v.UnlockKeyContext(context.Background(), []byte("p"), lim)
		if err != nil || slot != 0 {
			t.Fatalf("limits %+v: slot %d, %v", lim, slot, err)
		}
		clear(key)
	}

	dev = blockdev.NewMem(20 << 20)
	eight := PBKDFOptions{Type: "argon2id", Iterations: 4, MemoryKiB: 64, Parallel: 8}
	if _, err := Format(dev, []byte("p"), FormatOptions{PBKDF: eight, DigestIterations: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dev, []byte("p"), OpenOptions{}); !errors.Is(err, ErrLimit) {
		t.Fatalf("8 threads with the default limits: %v, want ErrLimit", err)
	}
	d, err := Open(dev, []byte("p"), OpenOptions{Limits: Limits{Argon2Threads: 8}})
	if err != nil {
		t.Fatalf("8 threads with the limit raised: %v", err)
	}
	d.Close()
}

// TestOverLimitSlotSkipped checks that a keyslot over the limits does not
// keep another from opening, and that a passphrase no tried keyslot takes
// is reported with the keyslots not tried.
func TestOverLimitSlotSkipped(t *testing.T) {
	dev := blockdev.NewMem(20 << 20)
	v, err := Format(dev, []byte("p"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddKey([]byte("p"), []byte("q"), KeyslotOptions{PBKDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	rewriteJSON(t, v, func(top map[string]any) { kdfOf(top, "0")["memory"] = 2 << 20 })
	if v, err = Load(dev); err != nil {
		t.Fatal(err)
	}
	key, slot, err := v.UnlockKey([]byte("q"))
	if err != nil || slot != 1 {
		t.Fatalf("unlock with keyslot 1's passphrase: slot %d, %v", slot, err)
	}
	clear(key)
	_, _, err = v.UnlockKey([]byte("p"))
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "none of the 1 keyslots tried") ||
		!strings.Contains(err.Error(), "keyslot 0: argon2id memory 2097152 KiB") {
		t.Fatalf("unlock with keyslot 0's passphrase: %v, want ErrLimit naming keyslot 0", err)
	}
}

// cancelAfter is a context whose Err is nil for its first n calls and
// context.Canceled after: a caller canceling while a keyslot is derived.
type cancelAfter struct {
	context.Context
	n int
}

func (c *cancelAfter) Err() error {
	if c.n <= 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

// TestUnlockCanceled checks that a done context stops unlocking before the
// next keyslot: nothing is derived once it is done.
func TestUnlockCanceled(t *testing.T) {
	dev := blockdev.NewMem(20 << 20)
	v, err := Format(dev, []byte("p"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddKey([]byte("p"), []byte("q"), KeyslotOptions{PBKDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := v.UnlockKeyContext(ctx, []byte("p"), Limits{}); !errors.Is(err, context.Canceled) ||
		!strings.Contains(err.Error(), "before keyslot 0") {
		t.Fatalf("canceled before: %v", err)
	}
	// Canceled while keyslot 0 is tried with keyslot 1's passphrase.
	_, _, err = v.UnlockKeyContext(&cancelAfter{context.Background(), 1}, []byte("q"), Limits{})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "before keyslot 1") {
		t.Fatalf("canceled during keyslot 0: %v", err)
	}
	if _, err := OpenContext(ctx, dev, []byte("p"), OpenOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("OpenContext canceled: %v", err)
	}
	if _, err := v.RemoveKeyContext(ctx, []byte("q"), Limits{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("RemoveKeyContext canceled: %v", err)
	}
}

// TestTruncatedDeviceNotDerived checks that a volume whose data does not
// fit the device is refused before any KDF runs: its keyslot asks for
// 1 GiB of argon2 memory, within the limits, which would show.
func TestTruncatedDeviceNotDerived(t *testing.T) {
	dev := hostileLUKS2(t, false, func(top map[string]any) { kdfOf(top, "0")["memory"] = 1 << 20 })
	hdr := make([]byte, 1<<20)
	if _, err := dev.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	short := memOf(hdr)
	var err error
	n := allocated(func() { _, err = Open(short, []byte("p"), OpenOptions{}) })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not fit the 1048576-byte device") {
		t.Fatalf("Open: %v, want ErrCorrupt (segment beyond the device)", err)
	}
	if n > maxRefusalAlloc {
		t.Errorf("refusing allocated %d MiB", n>>20)
	}
}

// writeLUKS2Copies writes both LUKS2 header copies of hdrSize bytes around
// the JSON text js, with valid checksums, to a new device of devSize bytes.
func writeLUKS2Copies(t *testing.T, hdrSize, devSize int64, js []byte) blockdev.Device {
	t.Helper()
	dev := blockdev.NewMem(devSize)
	bin := &luks2Bin{hdrSize: hdrSize, seqid: 1, csumAlg: "sha256", uuid: "hostile"}
	for _, off := range []int64{0, hdrSize} {
		b, err := bin.marshal(js, off)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dev.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return dev
}

// TestHostileMetadataBounded gives LUKS2 metadata with too many objects,
// too long lists and too large areas: each is refused naming the problem,
// and a 4 MiB JSON area of tiny objects allocates a bounded amount.
func TestHostileMetadataBounded(t *testing.T) {
	many := func(section string, n int) []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"config":{"json_size":"4190208","keyslots_size":"4096"},"keyslots":{},"tokens":{},"segments":{},"digests":{},%q:{`, section)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%d":{}`, i)
		}
		b.WriteString("}}")
		return b.Bytes()
	}
	refs := func(n int) []byte {
		ids := strings.TrimSuffix(strings.Repeat(`"0",`, n), ",")
		return fmt.Appendf(nil, `{"config":{"json_size":"4190208","keyslots_size":"4096"},"keyslots":{},"tokens":{},"segments":{},`+
			`"digests":{"0":{"type":"pbkdf2","keyslots":[%s],"segments":[],"hash":"sha256","iterations":1000,"salt":"AA==","digest":"AA=="}}}`, ids)
	}
	huge := many("keyslots", 300000)
	if len(huge) >= 4<<20-luks2BinSize {
		t.Fatalf("test JSON of %d bytes does not fit", len(huge))
	}
	tests := []struct {
		name string
		js   []byte
		want string
	}{
		{"300000 keyslots in 4 MiB", huge, "more than 64 objects"},
		{"65 tokens", many("tokens", 65), "more than 64 objects"},
		{"65 segments", many("segments", 65), "more than 64 objects"},
		{"33 keyslots", many("keyslots", 33), `keyslot id "3`},
		{"digest naming 100000 keyslots", refs(100000), "more than 64 strings"},
		{"keyslots area of 1 GiB", []byte(`{"config":{"json_size":"4190208","keyslots_size":"1073741824"},"keyslots":{},"tokens":{},"segments":{},"digests":{}}`),
			"keyslots_size 1073741824"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := writeLUKS2Copies(t, 4<<20, 9<<20, tt.js)
			var err error
			n := allocated(func() { _, err = Load(dev) })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load: %v, want ErrCorrupt with %q", err, tt.want)
			}
			t.Logf("%v (%d KiB allocated)", err, n>>10)
			if n > maxRefusalAlloc {
				t.Errorf("refusing allocated %d MiB", n>>20)
			}
		})
	}
}

// TestCryptsetupDefaultsWithinLimits formats volumes with cryptsetup's
// defaults (its benchmark on this machine chooses the costs) and checks
// that the default Limits allow every keyslot and digest: what cryptsetup
// makes by default opens.
func TestCryptsetupDefaultsWithinLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("cryptsetup benchmarks for 2 seconds and derives for 2 more, three times")
	}
	needTool(t, "cryptsetup")
	for _, args := range [][]string{{"--type", "luks2"}, {"--type", "luks2", "--pbkdf", "pbkdf2"}, {"--type", "luks1"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			img := tempImage(t, 20<<20)
			run(t, "cryptsetup", append(append([]string{"luksFormat", "--batch-mode", "--key-file", keyFile(t, "k", []byte("p"))}, args...), img)...)
			v := load(t, img)
			lim := Limits{}.orDefaults()
			for _, s := range v.slots() {
				if err := v.slotCost(s, lim); err != nil {
					t.Errorf("cryptsetup's default keyslot is over the default limits: %v", err)
				}
				t.Logf("keyslot %d: %+v", s.id, s.kdf)
			}
		})
	}
}
