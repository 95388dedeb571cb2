package loop

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestDetach(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 1<<20)
	d := attach(t, f, Options{})
	if err := d.Detach(); err != nil {
		t.Fatalf("Detach of an idle device: %v", err)
	}
	if _, err := Lookup(d.Path); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("after Detach, Lookup = %v, want ErrNotAttached", err)
	}
	if err := d.Detach(); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("second Detach = %v, want ErrNotAttached", err)
	}
	if err := d.DetachLazy(); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("DetachLazy of a detached device = %v, want ErrNotAttached", err)
	}
}

func TestDetachBusyOpen(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 1<<20)
	d := attach(t, f, Options{})
	holder, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := d.Detach(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Detach of an open device = %v, want ErrBusy", err)
	}
	got, err := Lookup(d.Path)
	if err != nil {
		t.Fatalf("device lost its backing file after a refused Detach: %v", err)
	}
	if got.AutoClear {
		t.Fatal("refused Detach left autoclear set")
	}
	holder.Close()
	if err := d.Detach(); err != nil {
		t.Fatalf("Detach after the holder closed: %v", err)
	}
}

func TestDetachBusyMounted(t *testing.T) {
	requireLoop(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 (e2fsprogs) not installed")
	}
	f := sparseFile(t, 32<<20)
	d := attach(t, f, Options{})
	if out, err := exec.Command("mkfs.ext4", "-q", d.Path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", d.Path, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Detach(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Detach of a mounted device = %v, want ErrBusy", err)
	}
	if got, err := Lookup(d.Path); err != nil || got.AutoClear {
		t.Fatalf("after refused Detach: Lookup = %+v, %v; want attached without autoclear", got, err)
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	mounted = false
	if err := d.Detach(); err != nil {
		t.Fatalf("Detach after umount: %v", err)
	}
}

func TestDetachLazy(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 1<<20)
	d := attach(t, f, Options{})
	holder, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := d.DetachLazy(); err != nil {
		t.Fatalf("DetachLazy of an open device: %v", err)
	}
	got, err := Lookup(d.Path)
	if err != nil {
		t.Fatalf("device detached while still open: %v", err)
	}
	if !got.AutoClear {
		t.Fatal("DetachLazy did not set autoclear")
	}
	holder.Close()
	waitDetached(t, d.Path)
}

func TestDetachLazyIdle(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 1<<20)
	d := attach(t, f, Options{})
	if err := d.DetachLazy(); err != nil {
		t.Fatalf("DetachLazy of an idle device: %v", err)
	}
	waitDetached(t, d.Path)
}
