package luks

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
)

// cryptsetupVolumes are volumes cryptsetup formats for the tests.
var cryptsetupVolumes = []struct {
	name   string
	args   []string
	cipher string
	ss     int
}{
	{"luks2-argon2id-4k", []string{"--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--iter-time", "100", "--sector-size", "4096"}, "aes-xts-plain64", 4096},
	{"luks2-argon2i-512", []string{"--type", "luks2", "--pbkdf", "argon2i", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--sector-size", "512"}, "aes-xts-plain64", 512},
	{"luks2-pbkdf2-sha512-256bit", []string{"--type", "luks2", "--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000", "--key-size", "256", "--sector-size", "4096"}, "aes-xts-plain64", 4096},
	{"luks1-sha256", []string{"--type", "luks1", "--hash", "sha256", "--pbkdf-force-iterations", "1000"}, "aes-xts-plain64", 512},
	{"luks1-sha1-cbc-essiv", []string{"--type", "luks1", "--hash", "sha1", "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--pbkdf-force-iterations", "1000"}, "aes-cbc-essiv:sha256", 512},
}

// TestCryptsetupVolumes opens volumes cryptsetup made: the volume key equals
// cryptsetup's, what we write decrypts with an independent implementation
// under that key, and what that implementation encrypts reads back through
// our Device.
func TestCryptsetupVolumes(t *testing.T) {
	needTool(t, "cryptsetup")
	for _, tt := range cryptsetupVolumes {
		t.Run(tt.name, func(t *testing.T) {
			img := tempImage(t, 20<<20)
			pass := []byte("correct horse " + tt.name)
			kf := keyFile(t, "key", pass)
			args := append([]string{"luksFormat", "--batch-mode", "--key-file", kf}, tt.args...)
			run(t, "cryptsetup", append(args, img)...)
			want := dumpVolumeKey(t, img, kf)

			v, err := Load(openFile(t, img))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := v.UnlockKey([]byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("wrong passphrase: %v, want ErrWrongPassphrase", err)
			}
			key, slot, err := v.UnlockKey(pass)
			if err != nil || slot != 0 {
				t.Fatalf("unlock: slot %d, %v", slot, err)
			}
			if !bytes.Equal(key, want) {
				t.Fatalf("volume key %x, cryptsetup says %x", key, want)
			}
			seg := v.Info().Segments[0]
			if seg.Cipher != tt.cipher || seg.SectorSize != tt.ss {
				t.Fatalf("segment %+v, want cipher %s sector %d", seg, tt.cipher, tt.ss)
			}
			d, _, err := v.Open(pass, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(7, 7))
			plain := make([]byte, 3*tt.ss)
			for i := range plain {
				plain[i] = byte(rng.Uint32())
			}
			offs := []int64{0, int64(tt.ss) * 5, d.Size() - int64(len(plain))}
			for _, off := range offs {
				if _, err := d.WriteAt(plain, off); err != nil {
					t.Fatal(err)
				}
			}
			// An unaligned write in the middle of a sector.
			if _, err := d.WriteAt([]byte("hello, vdisk"), int64(tt.ss)*5+100); err != nil {
				t.Fatal(err)
			}
			// A sector encrypted by the reference, read through d.
			refSector := bytes.Repeat([]byte("reference!"), tt.ss/10+1)[:tt.ss]
			refOff := int64(tt.ss) * 40
			ct := bytes.Clone(refSector)
			refCrypt(t, tt.cipher, want, ct, uint64(refOff/512), true)
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}

			raw, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			payload := raw[seg.Offset:]
			copy(payload[refOff:], ct)
			if err := os.WriteFile(img, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			wantPlain := bytes.Clone(plain)
			copy(wantPlain[100:], "hello, vdisk")
			for i, off := range offs {
				got := bytes.Clone(payload[off : off+int64(len(plain))])
				for s := 0; s < len(got); s += tt.ss {
					refCrypt(t, tt.cipher, want, got[s:s+tt.ss], uint64((off+int64(s))/512), false)
				}
				w := plain
				if i == 1 {
					w = wantPlain
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("sectors written at %d do not decrypt with cryptsetup's key", off)
				}
			}

			d2, err := Open(openFile(t, img), pass, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			got := make([]byte, tt.ss)
			if _, err := d2.ReadAt(got, refOff); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, refSector) {
				t.Fatal("a sector encrypted by the reference does not read back")
			}
		})
	}
}
