package api

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestDiskID(t *testing.T) {
	tests := []struct {
		name, path, want string
	}{
		// Expected values from `printf %s PATH | sha256sum | cut -c1-12`.
		{name: "root image", path: "/disk.img", want: "7ed8bb8bd197"},
		{name: "nested", path: "/var/lib/images/a.img", want: "e19ade307561"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DiskID(tt.path)
			if got != tt.want {
				t.Fatalf("DiskID(%q) = %q, want %q", tt.path, got, tt.want)
			}
			if !IsID(got) || len(UniqueID(tt.path)) != 64 || UniqueID(tt.path)[:IDLen] != got {
				t.Fatalf("id %q / unique id %q inconsistent", got, UniqueID(tt.path))
			}
		})
	}
	if DiskID("/a") == DiskID("/b") {
		t.Fatal("different paths, same id")
	}
}

func TestIsID(t *testing.T) {
	for s, want := range map[string]bool{
		"0123456789ab": true, "0123456789AB": false, "0123456789a": false,
		"0123456789abc": false, "/dev/loop0": false, "": false, "g123456789ab": false,
	} {
		if got := IsID(s); got != want {
			t.Errorf("IsID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestCHS(t *testing.T) {
	tests := []struct {
		size int64
		cyl  int64
	}{
		{size: 0, cyl: 0},
		{size: 100 << 20, cyl: 12},    // 104857600 / 8225280
		{size: 10 << 30, cyl: 1305},   // 10 GiB, as Windows shows
		{size: 8225280, cyl: 1},       // exactly one cylinder
		{size: 8225280 - 512, cyl: 0}, // one sector short
	}
	for _, tt := range tests {
		g := CHS(tt.size)
		if g.Cylinders != tt.cyl || g.Heads != 255 || g.SectorsPerTrack != 63 || g.BytesPerSector != 512 {
			t.Errorf("CHS(%d) = %+v, want %d cylinders", tt.size, g, tt.cyl)
		}
	}
	if Sectors(100<<20) != 204800 {
		t.Errorf("Sectors(100 MiB) = %d", Sectors(100<<20))
	}
}

func TestCanonical(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "real.img")
	if err := os.WriteFile(real, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "link.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(dir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	tests := []struct {
		name, in, want, code string
		fails                bool
	}{
		{name: "relative", in: "real.img", want: real},
		{name: "symlink", in: "link.img", want: real},
		{name: "dot dot", in: "dirlink/../real.img", want: filepath.Join(filepath.Dir(dir), "real.img")},
		{name: "missing via linked dir", in: "dirlink/new.img", want: filepath.Join(dir, "new.img")},
		{name: "missing parent", in: "nodir/new.img", fails: true, code: CodeNoParent},
		{name: "dangling symlink", in: "dangling", fails: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Canonical(tt.in)
			if tt.fails {
				if err == nil {
					t.Fatalf("Canonical(%q) = %q, want an error", tt.in, got)
				}
				if tt.code != "" && !errors.Is(err, &Error{Code: tt.code}) {
					t.Fatalf("Canonical(%q): %v, want code %s", tt.in, err, tt.code)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Canonical(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestErrorIs(t *testing.T) {
	err := error(Errorf(CodeLocked, "x is locked"))
	if !errors.Is(err, &Error{Code: CodeLocked}) || errors.Is(err, &Error{Code: CodeBusy}) {
		t.Fatal("errors.Is on codes")
	}
	if err.Error() != "x is locked" {
		t.Fatal(err.Error())
	}
}

func TestIsVia(t *testing.T) {
	for v, want := range map[string]bool{
		ViaLoop: true, ViaFUSE: true, ViaNBD: true, ViaUblk: true,
		"": false, "NBD": false, "iscsi": false,
	} {
		if got := IsVia(v); got != want {
			t.Errorf("IsVia(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestCanonicalURL(t *testing.T) {
	for _, u := range []string{"s3://bucket/prefix", "s3://bucket/a/../b/", "s3://b"} {
		got, err := Canonical(u)
		if err != nil || got != u {
			t.Errorf("Canonical(%q) = %q, %v; want it unchanged", u, got, err)
		}
		if !IsURL(u) || DiskID(u) != UniqueID(u)[:IDLen] {
			t.Errorf("%q: IsURL %v, id %s", u, IsURL(u), DiskID(u))
		}
	}
	if IsURL("/tmp/s3://x") || IsURL("disk.img") {
		t.Error("a path is not a URL")
	}
}
