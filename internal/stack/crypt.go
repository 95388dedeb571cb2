package stack

import (
	"context"
	"errors"
	"fmt"

	"vdisk/internal/blockdev"
	"vdisk/internal/crypt/luks"
)

// ErrNeedPassphrase is returned by Open for an encrypted image when no
// Passphrase function was given.
var ErrNeedPassphrase = errors.New("image is encrypted (LUKS); a passphrase is needed")

// Passphrase returns the passphrase for the encrypted image name. Open
// calls it only for an encrypted image, at most once, and clears what it
// returns after use.
type Passphrase func(name string) ([]byte, error)

// unlock opens the LUKS volume in dev when there is one: the returned Device
// decrypts, and owns dev. A dev that holds no LUKS volume, or one the caller
// asked to keep encrypted, comes back as it is.
func unlock(ctx context.Context, name string, dev blockdev.Device, o Options) (blockdev.Device, bool, error) {
	if o.KeepEncrypted || !luks.IsLUKS(dev) {
		return dev, false, nil
	}
	if o.Passphrase == nil {
		return nil, true, fmt.Errorf("%s: %w (give a key file, or open it with --no-decrypt to see the ciphertext)", name, ErrNeedPassphrase)
	}
	pass, err := o.Passphrase(name)
	if err != nil {
		return nil, true, err
	}
	defer clear(pass)
	// Keyslots are tried one at a time, each within the KDF limits, and
	// ctx (a client that hung up, a deadline) stops between them.
	d, err := luks.OpenContext(ctx, dev, pass, luks.OpenOptions{AllowDiscards: o.AllowDiscards})
	if err != nil {
		return nil, true, fmt.Errorf("%s: %w", name, err)
	}
	return d, true, nil
}

// EncryptOptions say how Create encrypts a new image.
type EncryptOptions struct {
	// Type is "luks2" or "luks1"; "" means not encrypted.
	Type string
	// Passphrase is the first keyslot's passphrase; Create clears it.
	Passphrase []byte
	// LUKS holds the cipher and KDF settings; its Type is set from Type.
	LUKS luks.FormatOptions
}

// formatLUKS writes a LUKS header at the start of dev.
func formatLUKS(dev blockdev.Device, e EncryptOptions) error {
	defer clear(e.Passphrase)
	_, err := luks.Format(dev, e.Passphrase, luksOptions(e))
	return err
}

// luksOptions returns the FormatOptions for e, with the type from Type.
func luksOptions(e EncryptOptions) luks.FormatOptions {
	opt := e.LUKS
	opt.Type = e.Type
	return opt
}

// The LUKS types that `vdisk luks` and `vdisk create --encrypt` fill in:
// the crypt layer's own, named here so that the stack stays the one
// package that reaches into the layers.
type (
	LUKSVolume        = luks.Volume
	LUKSFormatOptions = luks.FormatOptions
	PBKDFOptions      = luks.PBKDFOptions
	KeyslotOptions    = luks.KeyslotOptions
)

// ErrWrongPassphrase is returned when no keyslot opens with the
// passphrase given.
var ErrWrongPassphrase = luks.ErrWrongPassphrase

// ErrKDFLimit is returned when the keyslots that might open ask for more
// key-derivation work than the limits allow (a hostile header).
var ErrKDFLimit = luks.ErrLimit

// IsLUKS reports whether dev starts with a LUKS header.
func IsLUKS(dev blockdev.Device) bool { return luks.IsLUKS(dev) }

// OpenLUKS opens the image name as stored (any format, local or s3://,
// under the trust policy of o) and reads the LUKS header in it, for
// managing its keyslots. The caller closes d.Device.
func OpenLUKS(ctx context.Context, name string, o Options) (d *Disk, v *LUKSVolume, err error) {
	o.KeepEncrypted, o.Create = true, false
	if d, err = Open(ctx, name, o); err != nil {
		return nil, nil, err
	}
	if v, err = luks.Load(d.Device); err != nil {
		d.Device.Close()
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return d, v, nil
}

// FormatLUKS writes a new LUKS volume over the disk d (opened with
// KeepEncrypted), its first keyslot opened by pass.
func FormatLUKS(d *Disk, pass []byte, opt LUKSFormatOptions) (*LUKSVolume, error) {
	return luks.Format(d.Device, pass, opt)
}
