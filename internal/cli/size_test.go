package cli

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{in: "100", want: 100 << 20},
		{in: "1", want: 1 << 20},
		{in: "512K", want: 512 << 10},
		{in: "512k", want: 512 << 10},
		{in: "100M", want: 100 << 20},
		{in: "100MiB", want: 100 << 20},
		{in: "10G", want: 10 << 30},
		{in: "10gib", want: 10 << 30},
		{in: "2T", want: 2 << 40},
		{in: "2TiB", want: 2 << 40},
		{in: "4096B", want: 4096},
		{in: " 1G ", want: 1 << 30},
		{in: "256B", err: "multiple of 512"},
		{in: "1000B", err: "multiple of 512"},
		{in: "0", err: "more than zero"},
		{in: "0M", err: "more than zero"},
		{in: "", err: "whole number"},
		{in: "M", err: "whole number"},
		{in: "-1G", err: "whole number"},
		{in: "1.5G", err: "unknown unit"},
		{in: "10GB", err: "unknown unit"},
		{in: "10X", err: "unknown unit"},
		{in: "9999999T", err: "too large"},
		{in: "99999999999999999999999", err: "too large"},
		{in: "8589934592G", err: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "invalid size") {
					t.Fatalf("parseSize(%q) = %d, %v; want error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		512: "512B", 1 << 10: "1K", 100 << 20: "100M", 3 << 29: "1.5G", 10 << 30: "10G", 2 << 40: "2T",
	} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"100", "1G", "512K", "10GiB", "1.5G", "", "-1", "99999999999999999999T", "4096B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			if n != 0 || !strings.HasPrefix(err.Error(), "invalid size") {
				t.Fatalf("parseSize(%q) = %d, %v", s, n, err)
			}
			return
		}
		if n <= 0 || n%512 != 0 {
			t.Fatalf("parseSize(%q) = %d: not a positive multiple of 512", s, n)
		}
	})
}
