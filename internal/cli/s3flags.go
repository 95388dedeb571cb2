package cli

import (
	"github.com/spf13/pflag"

	"vdisk/internal/stack"
)

// addS3Flags adds the flags that say how to reach s3:// images.
func addS3Flags(f *pflag.FlagSet, o *stack.S3Options) {
	f.StringVar(&o.Endpoint, "s3-endpoint", "", "object store URL for s3:// images (default $"+stack.EnvS3Endpoint+" or the AWS configuration)")
	f.StringVar(&o.Region, "s3-region", "", "region of the object store (default the AWS configuration's, else us-east-1)")
	f.StringVar(&o.Profile, "s3-profile", "", "profile of the AWS config and credentials files with the s3:// credentials (default $AWS_PROFILE)")
	f.StringVar(&o.CacheDir, "s3-cache-dir", "", "keep clean chunks of s3:// images in this directory")
	f.BoolVar(&o.ForceTakeover, "force-takeover", false, "take an s3:// image whose writer's lease has expired")
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
