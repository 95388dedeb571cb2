package stack

import (
	"context"
	"errors"
	"fmt"
	"os"

	"vdisk/internal/image"
	"vdisk/internal/storage/chunked"
	"vdisk/internal/storage/objstore/s3"
)

// EnvS3Endpoint names the environment variable that gives the object
// store's endpoint when S3Options.Endpoint is empty.
const EnvS3Endpoint = "VDISK_S3_ENDPOINT"

// S3Options say how to reach the object store behind s3://bucket/prefix
// names and how to hold an image there.
type S3Options struct {
	// Endpoint is the store's URL; "" means $VDISK_S3_ENDPOINT, else the
	// AWS configuration (AWS_ENDPOINT_URL, ...). Credentials and region
	// come from the standard AWS environment and files.
	Endpoint string
	// CacheDir keeps clean chunks locally across opens.
	CacheDir string
	// ForceTakeover takes the writer's lease from a holder that let it
	// expire.
	ForceTakeover bool
}

func (o S3Options) config(name string) (s3.Config, string, error) {
	ep := o.Endpoint
	if ep == "" {
		ep = os.Getenv(EnvS3Endpoint)
	}
	return s3.FromURL(name, ep)
}

// openS3 opens a chunked image in an object store. The chunks are the raw
// disk; formats that need a file under them are refused by name.
func openS3(ctx context.Context, name string, o Options) (*Disk, error) {
	if o.Format != "" && o.Format != image.Raw {
		return nil, fmt.Errorf("%s: format %s over an object store is not supported; s3:// images are raw", name, o.Format)
	}
	cfg, prefix, err := o.S3.config(name)
	if err != nil {
		return nil, err
	}
	st, err := s3.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	created := false
	if o.Create {
		_, err := chunked.Stat(ctx, st, prefix)
		switch {
		case errors.Is(err, chunked.ErrNoImage):
			if o.ReadOnly {
				return nil, fmt.Errorf("%s does not exist, and a read-only open cannot create it", name)
			}
			if _, err := chunked.Create(ctx, st, prefix, o.Size, chunked.CreateOptions{}); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			created = true
		case err != nil:
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	dev, err := chunked.Open(ctx, st, prefix, chunked.Options{
		ReadOnly:      o.ReadOnly,
		CacheDir:      o.S3.CacheDir,
		ForceTakeover: o.S3.ForceTakeover,
		Logger:        o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return finish(name, dev, image.Raw, created, o)
}

func createS3(ctx context.Context, name string, o CreateOptions) error {
	if o.Format != image.Raw {
		return fmt.Errorf("%s: format %s over an object store is not supported; s3:// images are raw", name, o.Format)
	}
	if o.BackingFile != "" {
		return fmt.Errorf("%s: s3:// images have no backing file", name)
	}
	cfg, prefix, err := o.S3.config(name)
	if err != nil {
		return err
	}
	st, err := s3.New(ctx, cfg)
	if err != nil {
		return err
	}
	if _, err := chunked.Create(ctx, st, prefix, o.Size, chunked.CreateOptions{ChunkSize: o.ClusterSize}); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
