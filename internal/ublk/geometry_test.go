package ublk

import "testing"

func TestDescArrayGeometry(t *testing.T) {
	tests := []struct {
		name     string
		q, depth int
		wantOff  int64
		wantSize int
	}{
		{name: "queue 0, depth 1", q: 0, depth: 1, wantOff: 0, wantSize: 4096},
		{name: "queue 0, depth 171 fills a page", q: 0, depth: 170, wantOff: 0, wantSize: 4096},
		{name: "queue 0, depth 171 needs two", q: 0, depth: 171, wantOff: 0, wantSize: 8192},
		// the driver spaces queues by UBLK_MAX_QUEUE_DEPTH descriptors: 4096*24 = 96 KiB
		{name: "queue 1", q: 1, depth: 64, wantOff: 98304, wantSize: 4096},
		{name: "queue 3", q: 3, depth: 4096, wantOff: 3 * 98304, wantSize: 98304},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := descArrayOffset(tt.q, 4096); got != tt.wantOff {
				t.Errorf("offset %d, want %d", got, tt.wantOff)
			}
			if got := descArraySize(tt.depth, 4096); got != tt.wantSize {
				t.Errorf("size %d, want %d", got, tt.wantSize)
			}
		})
	}
}
