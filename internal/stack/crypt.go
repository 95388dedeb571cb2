package stack

import (
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
func unlock(name string, dev blockdev.Device, o Options) (blockdev.Device, bool, error) {
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
	d, err := luks.Open(dev, pass, luks.OpenOptions{AllowDiscards: o.AllowDiscards})
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
