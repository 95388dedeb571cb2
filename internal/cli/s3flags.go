package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"vdisk/internal/api"
	"vdisk/internal/stack"
)

// addS3Flags adds the flags that say how to reach s3:// images, into the
// API's options (what open sends the daemon; local commands turn them
// into the stack's with stackS3).
func addS3Flags(f *pflag.FlagSet, o *api.S3Options) {
	f.StringVar(&o.Endpoint, "s3-endpoint", "", "object store URL for s3:// images (default $"+stack.EnvS3Endpoint+" or the AWS configuration)")
	f.StringVar(&o.Region, "s3-region", "", "region of the object store (default the AWS configuration's, else us-east-1)")
	f.StringVar(&o.Profile, "s3-profile", "", "profile of the AWS config and credentials files with the s3:// credentials (default $AWS_PROFILE)")
	f.StringVar(&o.CacheDir, "s3-cache-dir", "", "keep clean chunks of s3:// images in this directory")
	f.Var(bytesValue{&o.CacheSize}, "s3-cache-size", "memory for clean cached data of an s3:// image, like 64M (default 64M)")
	f.BoolVar(&o.ForceTakeover, "force-takeover", false, "take an s3:// image whose writer's lease has expired")
	f.BoolVar(&o.UnsafeNoFencing, "s3-unsafe-no-fencing", false, "write s3:// images on a store that ignores conditional PUTs (If-Match); a writer that lost its lease could then overwrite its successor's chunks")
	f.DurationVar(&o.LeaseTTL, "s3-lease-ttl", 0, "how long an s3:// image stays locked after its writer dies (default 30s, at least 1s)")
	f.Var(bytesValue{&o.ChunkSize}, "s3-chunk-size", "object size of a new s3:// image, a power of two from 4K to 256M (default 4M)")
}

// bytesValue is a flag holding a byte count written like --size (4M, 1G,
// 65536).
type bytesValue struct{ p *int64 }

func (v bytesValue) String() string {
	if v.p == nil || *v.p == 0 {
		return ""
	}
	return formatSize(*v.p)
}

func (v bytesValue) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

func (v bytesValue) Type() string { return "bytes" }

// stackS3 is o for a command that opens the image itself.
func stackS3(o api.S3Options) stack.S3Options {
	return stack.S3Options{Endpoint: o.Endpoint, Region: o.Region, Profile: o.Profile, CacheDir: o.CacheDir, CacheSize: o.CacheSize,
		ForceTakeover: o.ForceTakeover, ChunkSize: o.ChunkSize, LeaseTTL: o.LeaseTTL, UnsafeNoFencing: o.UnsafeNoFencing}
}

// s3Request returns the object store options of a request to the daemon:
// the endpoint from the flag, else this command's $VDISK_S3_ENDPOINT (the
// daemon may have been started without it), and an absolute cache dir.
func s3Request(o api.S3Options) (*api.S3Options, error) {
	r := o
	if r.Endpoint == "" {
		r.Endpoint = os.Getenv(stack.EnvS3Endpoint)
	}
	if r.CacheDir != "" {
		abs, err := filepath.Abs(r.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("--s3-cache-dir: %w", err)
		}
		r.CacheDir = abs
	}
	return &r, nil
}
