package cli

import "syscall"

type syscallStat struct{ allocated int64 }

// statBlocks reports the bytes a file really allocates.
func statBlocks(path string, st *syscallStat) error {
	var s syscall.Stat_t
	if err := syscall.Stat(path, &s); err != nil {
		return err
	}
	st.allocated = s.Blocks * 512
	return nil
}
