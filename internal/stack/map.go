package stack

import (
	"context"

	"vdisk/internal/image"
)

// OpenMap opens the image name (a path or an s3:// URL) read-only for
// `vdisk map`: its format's Device, with its backing chain opened under
// the trust policy of o (BackingDirs), as image.Map walks it. Nothing is
// put above the format: an image holding a LUKS volume is mapped as
// stored (the format layer below LUKS, header included), without a
// passphrase; "luks" as the format maps the raw file under it. The
// caller closes d.Device.
func OpenMap(ctx context.Context, name string, o Options) (*Disk, error) {
	if o.Format == LUKS {
		o.Format = image.Raw
	}
	o.ReadOnly, o.Create, o.KeepEncrypted, o.NoBacking = true, false, true, false
	src, err := openSource(ctx, name, o)
	if err != nil {
		return nil, err
	}
	dev, format, err := openFormat(name, src, o)
	if err != nil {
		return nil, err
	}
	return &Disk{Device: dev, Format: format, Degraded: src.degraded, Stats: src.stats}, nil
}
