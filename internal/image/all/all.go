// Package all registers every image format with the image registry; import
// it for its side effect where images are opened (cli, daemon).
package all

import (
	_ "vdisk/internal/image/iso"   // registers iso
	_ "vdisk/internal/image/qcow2" // registers qcow2
	_ "vdisk/internal/image/raw"   // registers raw
	_ "vdisk/internal/image/vdi"   // registers vdi
	_ "vdisk/internal/image/vhd"   // registers vhd
	_ "vdisk/internal/image/vhdx"  // registers vhdx
	_ "vdisk/internal/image/vmdk"  // registers vmdk
)
