package nbd

import (
	"testing"
	"time"
)

func TestLatencyAverage(t *testing.T) {
	var l latency
	if !l.fast() {
		t.Fatal("a new connection does not start inline")
	}
	l.observe(10 * time.Millisecond)
	if l.fast() {
		t.Fatal("still inline after a 10 ms operation")
	}
	n := 0
	for ; !l.fast(); n++ {
		l.observe(time.Microsecond)
		if n > 1000 {
			t.Fatal("fast operations never bring inline execution back")
		}
	}
	if n < 10 {
		t.Fatalf("inline again after only %d fast operations", n)
	}
}

func TestBufferClasses(t *testing.T) {
	tests := []struct{ n, wantCap int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {65536, 65536}, {1<<20 + 1, 2 << 20}, {32 << 20, 32 << 20},
	}
	for _, tc := range tests {
		b := getBuf(tc.n)
		if len(*b) != tc.n || cap(*b) != tc.wantCap {
			t.Errorf("getBuf(%d): len %d cap %d, want cap %d", tc.n, len(*b), cap(*b), tc.wantCap)
		}
		putBuf(b)
	}
}

func TestBudget(t *testing.T) {
	var b budget
	b.init(2, 100)
	b.acquire(60)
	b.acquire(30)
	if b.n != 2 || b.bytes != 90 {
		t.Fatalf("n %d bytes %d", b.n, b.bytes)
	}
	done := make(chan struct{})
	go func() {
		b.acquire(50) // waits for both a slot and bytes
		close(done)
	}()
	b.release(60)
	b.release(30)
	<-done
	b.release(50)
	// A request larger than the whole budget runs alone.
	b.acquire(500)
	if b.n != 1 || b.bytes != 500 {
		t.Fatalf("n %d bytes %d", b.n, b.bytes)
	}
	b.release(500)
}
