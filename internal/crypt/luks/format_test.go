package luks

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
	"vdisk/internal/blockdev/blockdevtest"
)

// ourVolumes are volumes Format makes for the tests.
var ourVolumes = []struct {
	name string
	opt  FormatOptions
}{
	{"luks2-argon2id-4k", FormatOptions{PBKDF: fastKDF, DigestIterations: 1000}},
	{"luks2-argon2i-512-small", FormatOptions{SectorSize: 512, KeySize: 32, PBKDF: PBKDFOptions{Type: "argon2i", Iterations: 4, MemoryKiB: 64, Parallel: 2},
		DigestIterations: 1000, MetadataSize: 32 << 10, KeyslotsSize: 1 << 20, Label: "vdisk-test"}},
	{"luks2-pbkdf2-sha512", FormatOptions{Hash: "sha512", PBKDF: PBKDFOptions{Type: "pbkdf2", Hash: "sha256", Iterations: 1000}, DigestIterations: 1000}},
	{"luks1-sha256", FormatOptions{Type: "luks1", PBKDF: fastPBKDF2, DigestIterations: 1000}},
	{"luks1-sha1-cbc-essiv", FormatOptions{Type: "luks1", Hash: "sha1", Cipher: "aes-cbc-essiv:sha256", PBKDF: fastPBKDF2, DigestIterations: 1000}},
}

// TestFormatAcceptedByCryptsetup formats volumes and has cryptsetup parse
// them, accept the passphrase, refuse a wrong one, and dump the same volume
// key; data written through our Device decrypts under that key.
func TestFormatAcceptedByCryptsetup(t *testing.T) {
	needTool(t, "cryptsetup")
	for _, tt := range ourVolumes {
		t.Run(tt.name, func(t *testing.T) {
			img := tempImage(t, 20<<20)
			pass := []byte("our passphrase")
			dev := openFile(t, img)
			v, err := Format(dev, pass, tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			key, _, err := v.UnlockKey(pass)
			if err != nil {
				t.Fatal(err)
			}
			in := v.Info()
			d, err := v.OpenWithKey(key, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			msg := bytes.Repeat([]byte("plaintext "), 1000)
			if _, err := d.WriteAt(msg, 12345); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}

			out := run(t, "cryptsetup", "luksDump", img)
			wantType := "Version:       \t2"
			if tt.opt.Type == "luks1" {
				wantType = "Version:       \t1"
			}
			if !strings.Contains(out, wantType) || !strings.Contains(out, in.UUID) {
				t.Fatalf("cryptsetup luksDump:\n%s", out)
			}
			kf := keyFile(t, "key", pass)
			typ := map[string]string{"": "luks2", "luks1": "luks1"}[tt.opt.Type]
			run(t, "cryptsetup", "open", "--test-passphrase", "--type", typ, "--key-file", kf, img)
			if out, err := runErr("cryptsetup", "open", "--test-passphrase", "--type", typ, "--key-file", keyFile(t, "bad", []byte("nope")), img); err == nil {
				t.Fatalf("cryptsetup accepted a wrong passphrase:\n%s", out)
			}
			if got := dumpVolumeKey(t, img, kf); !bytes.Equal(got, key) {
				t.Fatalf("cryptsetup dumps volume key %x, ours is %x", got, key)
			}
			raw := make([]byte, 20<<20)
			f := openFile(t, img)
			if _, err := f.ReadAt(raw, 0); err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte("plaintext plaintext")) {
				t.Fatal("the image holds plaintext")
			}
			seg := in.Segments[0]
			ss := int64(seg.SectorSize)
			start, end := 12345/ss*ss, (12345+int64(len(msg))+ss-1)/ss*ss
			got := raw[seg.Offset+start : seg.Offset+end]
			for s := int64(0); s < int64(len(got)); s += ss {
				refCrypt(t, seg.Cipher, key, got[s:s+ss], uint64((start+s)/512), false)
			}
			if !bytes.Equal(got[12345-start:12345-start+int64(len(msg))], msg) {
				t.Fatal("data does not decrypt with cryptsetup's volume key")
			}
			clear(key)
		})
	}
}

func TestFormatRefuses(t *testing.T) {
	tests := []struct {
		name string
		opt  FormatOptions
		size int64
		want error
	}{
		{"cipher", FormatOptions{Cipher: "twofish-xts-plain64", PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"key size", FormatOptions{KeySize: 48, PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"luks1 argon2", FormatOptions{Type: "luks1", PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"luks1 4k sectors", FormatOptions{Type: "luks1", SectorSize: 4096, PBKDF: fastPBKDF2}, 20 << 20, ErrOptions},
		{"metadata size", FormatOptions{MetadataSize: 20 << 10, PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"keyslots size", FormatOptions{KeyslotsSize: 4096, PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"type", FormatOptions{Type: "luks3", PBKDF: fastKDF}, 20 << 20, ErrOptions},
		{"hash", FormatOptions{Hash: "md5", PBKDF: fastKDF}, 20 << 20, ErrUnsupported},
		{"kdf", FormatOptions{PBKDF: PBKDFOptions{Type: "scrypt"}}, 20 << 20, ErrUnsupported},
		{"argon2 memory", FormatOptions{PBKDF: PBKDFOptions{Type: "argon2id", Iterations: 4, MemoryKiB: 8, Parallel: 1}}, 20 << 20, ErrOptions},
		{"too small", FormatOptions{PBKDF: fastKDF, DigestIterations: 1000}, 16 << 20, ErrOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Format(blockdev.NewMem(tt.size), []byte("p"), tt.opt)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Format: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestFormatBenchmarked formats with benchmarked costs (a short target) and
// checks that the keyslot's parameters are at least the minimums and that
// unlocking works.
func TestFormatBenchmarked(t *testing.T) {
	for _, typ := range []string{"argon2id", "pbkdf2"} {
		t.Run(typ, func(t *testing.T) {
			v, err := Format(blockdev.NewMem(20<<20), []byte("p"), FormatOptions{
				PBKDF: PBKDFOptions{Type: typ, IterTime: 50e6, MemoryKiB: 16 << 10}})
			if err != nil {
				t.Fatal(err)
			}
			k := v.Info().Keyslots[0].KDF
			if k.Type != typ || (typ == "pbkdf2" && k.Iterations < minPBKDF2Iter) ||
				(typ != "pbkdf2" && (k.Time < minArgonTime || k.MemoryKiB > 16<<10 || k.MemoryKiB < minArgonMemoryKiB || k.Parallel < 1)) {
				t.Fatalf("benchmarked kdf %+v", k)
			}
			if d := v.Info().Digests[0]; d.Iterations < minPBKDF2Iter {
				t.Fatalf("digest iterations %d", d.Iterations)
			}
			if _, _, err := v.UnlockKey([]byte("p")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPayloadOffset checks PayloadOffset against where Format puts the data.
func TestPayloadOffset(t *testing.T) {
	for _, tt := range ourVolumes {
		t.Run(tt.name, func(t *testing.T) {
			want, err := PayloadOffset(tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Format(blockdev.NewMem(20<<20), []byte("p"), tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.Info().Segments[0].Offset; got != want {
				t.Fatalf("data at %d, PayloadOffset says %d", got, want)
			}
		})
	}
	if off, _ := PayloadOffset(FormatOptions{}); off != 16<<20 {
		t.Fatalf("default LUKS2 payload offset %d", off)
	}
	if off, _ := PayloadOffset(FormatOptions{Type: "luks1"}); off != 2<<20 {
		t.Fatalf("default LUKS1 payload offset %d", off)
	}
}

// TestConformance runs the blockdev conformance suite on an opened LUKS2
// volume.
func TestConformance(t *testing.T) {
	blockdevtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		opt := FormatOptions{PBKDF: fastKDF, DigestIterations: 1000, KeyslotsSize: 256 << 10}
		off, err := PayloadOffset(opt)
		if err != nil {
			t.Fatal(err)
		}
		dev := blockdev.NewMem(off + size)
		if _, err := Format(dev, []byte("p"), opt); err != nil {
			t.Fatal(err)
		}
		d, err := Open(dev, []byte("p"), OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Size() != size {
			t.Fatalf("payload %d bytes, want %d", d.Size(), size)
		}
		return d
	})
}
