package s3

import (
	"fmt"
	"strings"
)

// bucket name bounds from the S3 naming rules.
const (
	minBucketLen = 3
	maxBucketLen = 63
)

// Scheme is the URL scheme of an image in an object store.
const Scheme = "s3://"

// IsURL reports whether s names an image in an object store (starts with
// s3://).
func IsURL(s string) bool { return strings.HasPrefix(s, Scheme) }

// ParseURL splits "s3://bucket/prefix" into the bucket and the prefix. The
// prefix loses a trailing slash and may be empty (the image
// sits at the top of the bucket).
func ParseURL(s string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return "", "", fmt.Errorf("s3: %q: %w", s, ErrBadURL)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if err := validBucket(bucket); err != nil {
		return "", "", fmt.Errorf("s3: %q: %w", s, err)
	}
	if strings.Contains("/"+prefix, "//") {
		return "", "", fmt.Errorf("s3: %q: empty path segment in the prefix: %w", s, ErrBadURL)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(prefix, "/"), "/") {
		if seg == "." || seg == ".." {
			return "", "", fmt.Errorf("s3: %q: a %q segment in the prefix is not allowed (object keys are not paths: name the prefix without dot segments): %w", s, seg, ErrBadURL)
		}
	}
	for _, r := range prefix {
		if r < 0x20 || r == 0x7f {
			return "", "", fmt.Errorf("s3: %q: control character in the prefix: %w", s, ErrBadURL)
		}
	}
	return bucket, strings.TrimSuffix(prefix, "/"), nil
}

// validBucket checks the S3 bucket naming rules (lower case letters,
// digits, dots and hyphens; 3 to 63 characters; starts and ends with a
// letter or digit).
func validBucket(b string) error {
	if len(b) < minBucketLen || len(b) > maxBucketLen {
		return fmt.Errorf("bucket name %q is not 3 to 63 characters: %w", b, ErrBadURL)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '.' || c == '-') && i > 0 && i < len(b)-1
		if !ok {
			return fmt.Errorf("bucket name %q has %q at %d: %w", b, c, i, ErrBadURL)
		}
	}
	return nil
}

// FromURL returns the Config for an image at "s3://bucket/prefix" and its
// prefix. endpoint is the service's URL (empty: AWS, or AWS_ENDPOINT_URL);
// with an endpoint, path-style addressing is on, as self-hosted servers
// need. Region and credentials come from the standard AWS environment and
// configuration files unless the caller sets them in the Config.
func FromURL(u, endpoint string) (Config, string, error) {
	bucket, prefix, err := ParseURL(u)
	if err != nil {
		return Config{}, "", err
	}
	return Config{Bucket: bucket, Endpoint: endpoint, PathStyle: endpoint != ""}, prefix, nil
}
