package luks

import "errors"

// ErrNotLUKS is returned by Load when the device starts with neither a LUKS1
// nor a LUKS2 header (and no LUKS2 secondary header is found either).
var ErrNotLUKS = errors.New("not a LUKS volume")

// ErrCorrupt is returned when a header is malformed: a bad checksum on every
// copy, a field out of bounds, JSON metadata that does not parse or does
// not hold together.
var ErrCorrupt = errors.New("corrupt LUKS header")

// ErrUnsupported is returned for a volume or option that is valid LUKS but
// that this package does not implement: a cipher, an integrity profile, a
// keyslot, KDF, digest or hash type, a mandatory requirement (such as an
// interrupted reencryption). The message names it.
var ErrUnsupported = errors.New("unsupported LUKS feature")

// ErrWrongPassphrase is returned when no keyslot opens with the passphrase
// (or key file) given.
var ErrWrongPassphrase = errors.New("no key available with this passphrase")

// ErrNoFreeKeyslot is returned by AddKey when every keyslot is in use, or
// the requested one is.
var ErrNoFreeKeyslot = errors.New("no free keyslot")

// ErrLastKeyslot is returned by RemoveKey when the passphrase opens the only
// active keyslot: removing it would make the data unrecoverable.
var ErrLastKeyslot = errors.New("refusing to remove the last keyslot")

// ErrOptions is returned by Format, AddKey and ChangeKey for invalid options
// (a key size the cipher does not take, a metadata size LUKS2 does not
// allow, a device too small for the layout).
var ErrOptions = errors.New("invalid LUKS options")

// isUnsupported reports whether err is ErrUnsupported.
func isUnsupported(err error) bool { return errors.Is(err, ErrUnsupported) }
