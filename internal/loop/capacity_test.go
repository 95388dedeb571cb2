package loop

import "testing"

// SetCapacity follows the backing file as it grows, like losetup -c.
func TestSetCapacity(t *testing.T) {
	requireLoop(t)
	f := sparseFile(t, 8<<20)
	d := attach(t, f, Options{})
	if err := f.Truncate(24 << 20); err != nil {
		t.Fatal(err)
	}
	n, err := d.SetCapacity()
	if err != nil {
		t.Fatalf("SetCapacity: %v", err)
	}
	if n != 24<<20 || d.Size != 24<<20 {
		t.Fatalf("size after SetCapacity %d (%d), want %d", n, d.Size, 24<<20)
	}
	got, err := Lookup(d.Path)
	if err != nil || got.Size != 24<<20 {
		t.Fatalf("Lookup after SetCapacity: %+v, %v", got, err)
	}
}
