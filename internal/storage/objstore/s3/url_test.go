package s3

import (
	"errors"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in             string
		bucket, prefix string
		ok             bool
	}{
		{in: "s3://bucket/prefix", bucket: "bucket", prefix: "prefix", ok: true},
		{in: "s3://my-bucket.x/a/b/c/", bucket: "my-bucket.x", prefix: "a/b/c", ok: true},
		{in: "s3://bkt", bucket: "bkt", prefix: "", ok: true},
		{in: "s3://bkt/", bucket: "bkt", prefix: "", ok: true},
		{in: "s3://bkt//x", ok: false},
		{in: "s3://bkt/a//b", ok: false},
		{in: "s3://Bucket/p", ok: false},
		{in: "s3://ab/p", ok: false},
		{in: "s3://-ab/p", ok: false},
		{in: "s3://ab-/p", ok: false},
		{in: "s3://" + strings.Repeat("a", 64), ok: false},
		{in: "http://bucket/p", ok: false},
		{in: "bucket/p", ok: false},
		{in: "s3://bucket/p\x00q", ok: false},
		{in: "", ok: false},
		{in: "s3://bucket/a/../b", ok: false},
		{in: "s3://bucket/./b", ok: false},
		{in: "s3://bucket/a/.", ok: false},
		{in: "s3://bucket/..", ok: false},
		{in: "s3://bucket/a/../", ok: false},
		{in: "s3://bucket/.a/b..c/...", bucket: "bucket", prefix: ".a/b..c/...", ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			b, p, err := ParseURL(tc.in)
			if !tc.ok {
				if !errors.Is(err, ErrBadURL) {
					t.Fatalf("ParseURL(%q) = %q, %q, %v; want ErrBadURL", tc.in, b, p, err)
				}
				return
			}
			if err != nil || b != tc.bucket || p != tc.prefix {
				t.Fatalf("ParseURL(%q) = %q, %q, %v; want %q, %q", tc.in, b, p, err, tc.bucket, tc.prefix)
			}
			if !IsURL(tc.in) {
				t.Fatalf("IsURL(%q) = false", tc.in)
			}
		})
	}
}

// TestParseURLDotSegment proves a dot segment is refused with a message
// that names it.
func TestParseURLDotSegment(t *testing.T) {
	_, _, err := ParseURL("s3://bucket/a/../b")
	if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), `".." segment`) {
		t.Fatalf("ParseURL of a .. segment: %v, want ErrBadURL naming the segment", err)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3://bucket/prefix", "s3://a.b-c/x/y/", "s3://", "s3://b//", "s3://bkt/\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, p, err := ParseURL(s)
		if err != nil {
			if !errors.Is(err, ErrBadURL) {
				t.Fatalf("ParseURL(%q): error %v is not ErrBadURL", s, err)
			}
			return
		}
		if validBucket(b) != nil || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
			t.Fatalf("ParseURL(%q) = %q, %q: invalid result", s, b, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("ParseURL(%q) = prefix %q with a dot segment", s, p)
			}
		}
		if !strings.HasPrefix(s, Scheme+b) {
			t.Fatalf("ParseURL(%q) = bucket %q not from the input", s, b)
		}
	})
}

func TestParseContentRangeTotal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"bytes 0-9/100", 100, true},
		{"bytes 0-9/*", 0, false},
		{"0-9/100", 0, false},
		{"bytes 0-9/-1", 0, false},
	} {
		got, err := parseContentRangeTotal(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseContentRangeTotal(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Bucket: "bkt", AccessKey: "a"}
	if err := c.Validate(); !errors.Is(err, ErrPartialCredentials) {
		t.Fatalf("validate with only an access key: %v", err)
	}
	c = Config{Bucket: "bkt"}
	if err := c.Validate(); err != nil || c.MaxAttempts != DefaultMaxAttempts || c.MaxBackoff != DefaultMaxBackoff {
		t.Fatalf("validate defaults: %+v, %v", c, err)
	}
	c = Config{Bucket: "B"}
	if err := c.Validate(); !errors.Is(err, ErrBadURL) {
		t.Fatalf("validate bad bucket: %v", err)
	}
}

func TestFromURL(t *testing.T) {
	c, p, err := FromURL("s3://bkt/disks/a", "http://127.0.0.1:7070")
	if err != nil || c.Bucket != "bkt" || p != "disks/a" || !c.PathStyle || c.Endpoint != "http://127.0.0.1:7070" {
		t.Fatalf("FromURL = %+v, %q, %v", c, p, err)
	}
	c, _, err = FromURL("s3://bkt", "")
	if err != nil || c.PathStyle {
		t.Fatalf("FromURL without endpoint = %+v, %v; want virtual-host style", c, err)
	}
	if _, _, err := FromURL("/tmp/disk.img", ""); !errors.Is(err, ErrBadURL) {
		t.Fatalf("FromURL of a path: %v, want ErrBadURL", err)
	}
}

// TestCRC32C checks the x-amz-checksum-crc32c value against the standard
// check value of CRC-32C ("123456789" -> 0xE3069283).
func TestCRC32C(t *testing.T) {
	if got, want := crc32cBase64([]byte("123456789")), "4waSgw=="; got != want {
		t.Fatalf("crc32cBase64 = %q, want %q", got, want)
	}
}
