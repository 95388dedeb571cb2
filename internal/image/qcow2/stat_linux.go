package qcow2

import (
	"os"
	"syscall"
)

// sysBlocks returns the allocated bytes of a file from its stat data.
func sysBlocks(st os.FileInfo) (int64, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return s.Blocks * 512, true
}
