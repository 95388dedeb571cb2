package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// newBar is the progress bar of a long command (convert, commit, rebase,
// compare, dd) on stderr, nil when not wanted. On a terminal it is redrawn
// at most ten times a second; elsewhere every step is a line to read (a
// few hundred per GiB).
func newBar(e *env, want bool, size int64, desc string) *progressbar.ProgressBar {
	if !want {
		return nil
	}
	var w io.Writer = e.stderr
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	}
	if isTerminal(w) {
		opts = append(opts, progressbar.OptionThrottle(100*time.Millisecond))
	}
	return progressbar.NewOptions64(size, opts...)
}
