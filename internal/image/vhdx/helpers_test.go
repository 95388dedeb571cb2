package vhdx

import "vdisk/internal/blockdev"

// blockdev0 returns d as a blockdev.Device (for helpers that take one).
func blockdev0(d *Image) blockdev.Device { return d }
