package iso

import "errors"

// ErrNotISO is returned by Open and Info for a file without an ISO 9660
// primary volume descriptor ("CD001" at 32 KiB).
var ErrNotISO = errors.New("not an ISO 9660 image")
