package cli

import (
	"github.com/spf13/pflag"

	"vdisk/internal/stack"
)

// addS3Flags adds the flags that say how to reach s3:// images.
func addS3Flags(f *pflag.FlagSet, o *stack.S3Options) {
	f.StringVar(&o.Endpoint, "s3-endpoint", "", "object store URL for s3:// images (default $"+stack.EnvS3Endpoint+" or the AWS configuration)")
	f.StringVar(&o.CacheDir, "s3-cache-dir", "", "keep clean chunks of s3:// images in this directory")
	f.BoolVar(&o.ForceTakeover, "force-takeover", false, "take an s3:// image whose writer's lease has expired")
}
