package luks

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// testPass checks cryptsetup's verdict on a passphrase (in a key file).
func testPass(t *testing.T, img, typ string, pass []byte, slot int, want bool) {
	t.Helper()
	args := []string{"open", "--test-passphrase", "--type", typ, "--key-file", keyFile(t, "k", pass)}
	if slot >= 0 {
		args = append(args, "--key-slot", fmt.Sprint(slot))
	}
	out, err := runErr("cryptsetup", append(args, img)...)
	if (err == nil) != want {
		t.Fatalf("cryptsetup %v on %q (slot %d): err %v, want success %v\n%s", args, pass, slot, err, want, out)
	}
}

// load reads the volume again (after cryptsetup changed it).
func load(t *testing.T, img string) *Volume {
	t.Helper()
	v, err := Load(openFile(t, img))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestKeyslotsWithCryptsetup adds, changes and removes keyslots on both
// sides and checks the other side sees each change.
func TestKeyslotsWithCryptsetup(t *testing.T) {
	needTool(t, "cryptsetup")
	for _, typ := range []string{"luks2", "luks1"} {
		t.Run(typ, func(t *testing.T) {
			img := tempImage(t, 20<<20)
			p1, p2, p3, p4 := []byte("first"), []byte("second"), []byte("third"), []byte("fourth")
			opt := FormatOptions{Type: typ, PBKDF: fastPBKDF2, DigestIterations: 1000}
			v, err := Format(openFile(t, img), p1, opt)
			if err != nil {
				t.Fatal(err)
			}
			// We add; cryptsetup sees it in that slot.
			kdf := fastKDF
			if typ == "luks1" {
				kdf = fastPBKDF2
			}
			slot, err := v.AddKey(p1, p2, KeyslotOptions{PBKDF: kdf})
			if err != nil || slot != 1 {
				t.Fatalf("AddKey: slot %d, %v", slot, err)
			}
			testPass(t, img, typ, p2, 1, true)
			testPass(t, img, typ, p2, 0, false)
			occupied := 1
			if _, err := v.AddKey(p1, p3, KeyslotOptions{Keyslot: &occupied, PBKDF: kdf}); !errors.Is(err, ErrNoFreeKeyslot) {
				t.Fatalf("AddKey to an occupied slot: %v", err)
			}
			// cryptsetup adds; we see it.
			run(t, "cryptsetup", "luksAddKey", "--batch-mode", "--key-file", keyFile(t, "k1", p1),
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, keyFile(t, "k3", p3))
			v = load(t, img)
			if _, slot, err := v.UnlockKey(p3); err != nil || slot != 2 {
				t.Fatalf("unlock with cryptsetup's new key: slot %d, %v", slot, err)
			}
			// We remove; cryptsetup no longer accepts it.
			if slot, err := v.RemoveKey(p2); err != nil || slot != 1 {
				t.Fatalf("RemoveKey: slot %d, %v", slot, err)
			}
			testPass(t, img, typ, p2, -1, false)
			testPass(t, img, typ, p1, -1, true)
			// cryptsetup removes; we no longer accept it.
			run(t, "cryptsetup", "luksRemoveKey", "--batch-mode", img, keyFile(t, "k3b", p3))
			v = load(t, img)
			if _, _, err := v.UnlockKey(p3); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("unlock with a key cryptsetup removed: %v", err)
			}
			// We change; cryptsetup follows.
			slot, err = v.ChangeKey(p1, p4, KeyslotOptions{PBKDF: kdf})
			if err != nil {
				t.Fatal(err)
			}
			if typ == "luks2" && slot != 0 {
				t.Fatalf("LUKS2 ChangeKey moved keyslot 0 to %d", slot)
			}
			testPass(t, img, typ, p4, slot, true)
			testPass(t, img, typ, p1, -1, false)
			// cryptsetup changes; we follow.
			run(t, "cryptsetup", "luksChangeKey", "--batch-mode", "--key-file", keyFile(t, "k4", p4),
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, keyFile(t, "k2", p2))
			v = load(t, img)
			if _, _, err := v.UnlockKey(p2); err != nil {
				t.Fatalf("unlock after cryptsetup luksChangeKey: %v", err)
			}
			if _, err := v.RemoveKey(p2); !errors.Is(err, ErrLastKeyslot) {
				t.Fatalf("removing the last keyslot: %v", err)
			}
			if out := run(t, "cryptsetup", "luksDump", img); typ == "luks2" && strings.Count(out, ": luks2\n") != 1 {
				t.Fatalf("cryptsetup sees other than one keyslot:\n%s", out)
			}
		})
	}
}

// TestKillSlot removes a keyslot by number.
func TestKillSlot(t *testing.T) {
	v, err := Format(memDev(20<<20), []byte("a"), FormatOptions{PBKDF: fastKDF, DigestIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddKey([]byte("a"), []byte("b"), KeyslotOptions{PBKDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	if err := v.KillSlot(5); err == nil {
		t.Fatal("KillSlot of an inactive slot succeeded")
	}
	if err := v.KillSlot(0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.UnlockKey([]byte("a")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("killed slot still opens: %v", err)
	}
	if err := v.KillSlot(1); !errors.Is(err, ErrLastKeyslot) {
		t.Fatalf("KillSlot of the last slot: %v", err)
	}
	// The freed area is reused.
	if s, err := v.AddKey([]byte("b"), []byte("c"), KeyslotOptions{PBKDF: fastKDF}); err != nil || s != 0 {
		t.Fatalf("AddKey after KillSlot: %d, %v", s, err)
	}
	if in := v.Info(); in.Keyslots[0].AreaOffset != 2*defaultMetadataSize {
		t.Fatalf("new keyslot at %d, want the freed area", in.Keyslots[0].AreaOffset)
	}
}
