package api

import "fmt"

// Error codes (Error.Code): stable, machine-readable reasons a request
// failed. A client branches on the code, never on the message.
const (
	// CodeBadRequest: the request is malformed (bad JSON, bad field).
	CodeBadRequest = "bad_request"
	// CodeNotFound: no open disk has the given id.
	CodeNotFound = "not_found"
	// CodeAlreadyOpen: the image is already open (the message names its
	// device and id).
	CodeAlreadyOpen = "already_open"
	// CodeIsDirectory: the file is a directory.
	CodeIsDirectory = "is_directory"
	// CodeIsDevice: the file is a device, not an image file.
	CodeIsDevice = "is_device"
	// CodeNoParent: the file's parent directory does not exist.
	CodeNoParent = "no_parent"
	// CodeNoFile: the file does not exist and creating it was not asked.
	CodeNoFile = "no_file"
	// CodeInvalidSize: the size is not a positive multiple of 512.
	CodeInvalidSize = "invalid_size"
	// CodeNoSpace: the file system is full.
	CodeNoSpace = "no_space"
	// CodeLocked: another process holds the image's lock.
	CodeLocked = "locked"
	// CodeNoLoop: no free loop device.
	CodeNoLoop = "no_loop"
	// CodeBusy: the device is in use (mounted, open); close with force.
	CodeBusy = "busy"
	// CodeFUSEUnavailable: the kernel's FUSE is not available.
	CodeFUSEUnavailable = "fuse_unavailable"
	// CodeUnknownFormat: the format is not one vdisk knows.
	CodeUnknownFormat = "unknown_format"
	// CodeUnsupported: the image uses a feature vdisk does not implement.
	CodeUnsupported = "unsupported"
	// CodeWrongFormat: the file is not an image of the format asked for.
	CodeWrongFormat = "wrong_format"
	// CodeRefused: the image names a file the trust policy does not
	// follow (outside its directory and every --backing-dir, not a
	// regular file, a json: name, a loop, a chain too deep), or asks for
	// more than the limits allow (a LUKS key derivation); the message
	// says which and how to allow it.
	CodeRefused = "refused"
	// CodeCorrupt: the image's metadata is malformed.
	CodeCorrupt = "corrupt"
	// CodeBadVia: the attach path is unknown or cannot carry the format.
	CodeBadVia = "bad_via"
	// CodeViaUnavailable: the kernel lacks what the attach path needs (the
	// nbd or ublk_drv module); the message names it.
	CodeViaUnavailable = "via_unavailable"
	// CodePermission: the file cannot be opened with the needed access.
	CodePermission = "permission"
	// CodePassphraseRequired: the image is encrypted and the request
	// carried no passphrase; the client asks for one and tries again.
	CodePassphraseRequired = "passphrase_required"
	// CodeWrongPassphrase: no keyslot of the encrypted image opens with
	// the passphrase given.
	CodeWrongPassphrase = "wrong_passphrase"
	// CodeLeaseHeld: another writer holds the object store image's lease
	// (the message names the holder); --force-takeover takes an expired
	// one.
	CodeLeaseHeld = "lease_held"
	// CodeTimeout: the daemon gave up on the request after its deadline
	// (vdisk daemon --open-timeout): an image whose storage does not
	// answer (an object store that accepts connections and never
	// replies, a hung network file system).
	CodeTimeout = "timeout"
	// CodeShuttingDown: the daemon is stopping.
	CodeShuttingDown = "shutting_down"
	// CodeInternal: anything else; the message says what.
	CodeInternal = "internal"
)

// Error is the body of every non-2xx answer, and the error the client
// returns for it.
type Error struct {
	// Code is one of the Code constants.
	Code string `json:"code"`
	// Message is one line a person can act on.
	Message string `json:"message"`
	// Disk is the disk the error is about, when there is one (the open
	// disk for CodeAlreadyOpen).
	Disk *Disk `json:"disk,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Is makes errors.Is(err, &Error{Code: c}) match any *Error with code c.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Message == ""
}
