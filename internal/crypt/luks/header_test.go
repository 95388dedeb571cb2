package luks

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"vdisk/internal/blockdev"
)

// corrupt overwrites n bytes at off of the image with 0x5a.
func corrupt(t *testing.T, img string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(strings.Repeat("\x5a", n)), off); err != nil {
		t.Fatal(err)
	}
}

// TestPrimaryHeaderDamaged damages the primary LUKS2 header of a cryptsetup
// volume in several ways: the secondary is used, and the next change
// rewrites both copies so that cryptsetup reads the primary again.
func TestPrimaryHeaderDamaged(t *testing.T) {
	needTool(t, "cryptsetup")
	tests := []struct {
		name string
		off  int64
		n    int
	}{
		{"json", 4096 + 100, 1},
		{"checksum", 448, 4},
		{"magic", 0, 6},
		{"whole binary header", 0, 4096},
		{"header size", 8, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := tempImage(t, 20<<20)
			pass := []byte("fallback")
			run(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
				"--pbkdf-force-iterations", "1000", "--key-file", keyFile(t, "k", pass), img)
			corrupt(t, img, tt.off, tt.n)
			v := load(t, img)
			if !v.UsedSecondary() || v.Info().HeaderCopy != "secondary" {
				t.Fatal("the damaged primary header was used")
			}
			if _, _, err := v.UnlockKey(pass); err != nil {
				t.Fatal(err)
			}
			if _, err := v.AddKey(pass, []byte("another"), KeyslotOptions{PBKDF: fastKDF}); err != nil {
				t.Fatal(err)
			}
			if v := load(t, img); v.UsedSecondary() {
				t.Fatal("the primary header was not repaired")
			}
			run(t, "cryptsetup", "luksDump", img)
			testPass(t, img, "luks2", []byte("another"), 1, true)
		})
	}
}

func TestBothHeadersDamaged(t *testing.T) {
	dev := blockdev.NewMem(20 << 20)
	if _, err := Format(dev, []byte("p"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000}); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{4096 + 10, 16384 + 4096 + 10} {
		if _, err := dev.WriteAt([]byte("}"), off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(dev); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load with both copies damaged: %v, want ErrCorrupt", err)
	}
	if _, err := Load(blockdev.NewMem(1 << 20)); !errors.Is(err, ErrNotLUKS) {
		t.Fatalf("Load of zeroes: %v, want ErrNotLUKS", err)
	}
	if _, err := Load(blockdev.NewMem(100)); !errors.Is(err, ErrNotLUKS) {
		t.Fatalf("Load of a tiny device: %v, want ErrNotLUKS", err)
	}
}

// rewriteJSON changes the LUKS2 metadata of v with f and writes it back
// without validation of features (as another tool could have written it).
func rewriteJSON(t *testing.T, v *Volume, f func(top map[string]any)) {
	t.Helper()
	js, err := v.meta.marshal()
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(js, &top); err != nil {
		t.Fatal(err)
	}
	f(top)
	if js, err = json.Marshal(top); err != nil {
		t.Fatal(err)
	}
	bin := *v.v2
	bin.seqid++
	for _, off := range []int64{0, bin.hdrSize} {
		b, err := bin.marshal(js, off)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.dev.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUnsupportedRefusedByName patches valid LUKS2 metadata with features
// this package lacks: each is refused naming the feature, and Dump still
// works.
func TestUnsupportedRefusedByName(t *testing.T) {
	obj := func(top map[string]any, k string) map[string]any { return top[k].(map[string]any) }
	tests := []struct {
		name  string
		patch func(top map[string]any)
		want  string // in the error; empty: opens
	}{
		{"cipher", func(top map[string]any) { obj(obj(top, "segments"), "0")["encryption"] = "serpent-xts-plain64" }, "serpent"},
		{"integrity", func(top map[string]any) {
			obj(obj(top, "segments"), "0")["integrity"] = map[string]any{"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}
		}, "integrity profile"},
		{"requirement", func(top map[string]any) {
			obj(top, "config")["requirements"] = map[string]any{"mandatory": []string{"online-reencrypt-v2"}}
		}, "online-reencrypt-v2"},
		{"detached header", func(top map[string]any) { obj(obj(top, "segments"), "0")["offset"] = "0" }, "detached header"},
		{"segment type", func(top map[string]any) { obj(obj(top, "segments"), "0")["type"] = "linear" }, `"linear"`},
		{"keyslot kdf", func(top map[string]any) { obj(obj(obj(top, "keyslots"), "0"), "kdf")["type"] = "scrypt" }, `"scrypt"`},
		{"af hash", func(top map[string]any) { obj(obj(obj(top, "keyslots"), "0"), "af")["hash"] = "whirlpool" }, `"whirlpool"`},
		{"token", func(top map[string]any) {
			obj(top, "tokens")["0"] = map[string]any{"type": "systemd-tpm2", "keyslots": []string{"0"}, "tpm2-pcrs": []int{7}}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := blockdev.NewMem(20 << 20)
			v, err := Format(dev, []byte("p"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000})
			if err != nil {
				t.Fatal(err)
			}
			rewriteJSON(t, v, tt.patch)
			v, err = Load(dev)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if err := v.Info().WriteText(new(strings.Builder)); err != nil {
				t.Fatal(err)
			}
			d, _, err := v.Open([]byte("p"), OpenOptions{})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if tk := v.Info().Tokens; len(tk) != 1 || tk[0].Type != "systemd-tpm2" {
					t.Fatalf("tokens %+v", tk)
				}
				d.Close()
				return
			}
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want ErrUnsupported naming %s", err, tt.want)
			}
		})
	}
}

// TestTokenKeptAndUpdated checks that metadata this package does not use
// (a token's own fields) survives a change, and that removing a keyslot
// removes it from the token.
func TestTokenKeptAndUpdated(t *testing.T) {
	dev := blockdev.NewMem(20 << 20)
	v, err := Format(dev, []byte("p"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddKey([]byte("p"), []byte("q"), KeyslotOptions{PBKDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	rewriteJSON(t, v, func(top map[string]any) {
		top["tokens"].(map[string]any)["3"] = map[string]any{"type": "luks2-keyring", "keyslots": []string{"0", "1"}, "key_description": "kd"}
	})
	if v, err = Load(dev); err != nil {
		t.Fatal(err)
	}
	if _, err := v.RemoveKey([]byte("q")); err != nil {
		t.Fatal(err)
	}
	if v, err = Load(dev); err != nil {
		t.Fatal(err)
	}
	raw := string(v.meta.rawTokens["3"])
	if !strings.Contains(raw, `"key_description":"kd"`) || !strings.Contains(raw, `"keyslots":["0"]`) {
		t.Fatalf("token after removing keyslot 1: %s", raw)
	}
}

func TestIsLUKS(t *testing.T) {
	for name, b := range fixtures(t) {
		if !IsLUKS(memOf(b)) {
			t.Errorf("%s: not recognised", name)
		}
		c := bytes.Clone(b)
		copy(c, make([]byte, 6))
		if want := strings.HasPrefix(name, "luks2"); IsLUKS(memOf(c)) != want {
			t.Errorf("%s without its primary magic: IsLUKS %v, want %v (secondary)", name, !want, want)
		}
	}
	if IsLUKS(blockdev.NewMem(1 << 20)) {
		t.Error("zeroes recognised as LUKS")
	}
}
