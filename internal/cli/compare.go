package cli

import (
	"fmt"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"vdisk/internal/imageops"
	"vdisk/internal/stack"
)

// Exit statuses of vdisk compare, as qemu-img compare has them.
const (
	compareExitDiffer = 1 // the images differ
	compareExitOpen   = 2 // an image could not be opened
)

func init() { register(newCompareCmd) }

func newCompareCmd(e *env) *cobra.Command {
	var (
		fmtA, fmtB  string
		strict      bool
		progress    bool
		asJSON      bool
		backingDirs []string
	)
	cmd := &cobra.Command{
		Use:   "compare [-f FMT] [-F FMT] [-s] [-p] A B",
		Short: "Compare the disks of two images, as qemu-img compare does",
		Long: `compare reads the disks of images A and B (any formats, their backing
chains included) and says whether they hold the same bytes, in qemu-img
compare's words: "Images are identical." or "Content mismatch at offset N!"
(N is the start of the first differing 512-byte sector). Runs that read as
zeroes in both are skipped by their block status, the rest is read in
parallel. Without -s, a larger image's extra area must read as zeroes
("Warning: Image size mismatch!" says the sizes differ); -s (strict) also
fails on differing sizes and on differing block status (allocation).

Exit status: 0 identical, 1 different, 2 an image could not be opened, 3 a
block status query failed, 4 a read failed.`,
		Example: `  vdisk compare disk.qcow2 disk.img
  vdisk compare -s -f qcow2 -F vmdk a.qcow2 b.vmdk`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			open := func(name, format string) (*stack.Disk, error) {
				d, err := stack.Open(ctx, name, stack.Options{Format: format, ReadOnly: true, BackingDirs: backingDirs, Log: e.log})
				if err != nil {
					return nil, &exitError{code: compareExitOpen, err: fmt.Errorf("compare: could not open '%s': %w", name, err)}
				}
				return d, nil
			}
			da, err := open(args[0], fmtA)
			if err != nil {
				return err
			}
			defer da.Device.Close()
			db, err := open(args[1], fmtB)
			if err != nil {
				return err
			}
			defer db.Device.Close()
			opt := imageops.CompareOptions{Strict: strict}
			var bar *progressbar.ProgressBar
			if progress {
				bar = newBar(e, true, max(da.Device.Size(), db.Device.Size()), "compare")
				opt.Progress = func(n int64) { _ = bar.Add64(n) }
			}
			res, err := imageops.Compare(ctx, imageops.Image{Name: args[0], Device: da.Device}, imageops.Image{Name: args[1], Device: db.Device}, opt)
			if bar != nil {
				_ = bar.Finish()
			}
			if code, ok := imageops.IsCompareError(err); ok {
				return &exitError{code: code, err: fmt.Errorf("compare: %w", err)}
			}
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(e.stdout, compareRecord(res)); err != nil {
					return err
				}
			} else {
				for _, m := range res.Messages() {
					fmt.Fprintln(e.stdout, m)
				}
			}
			if res.Outcome != imageops.Identical {
				return &exitError{code: compareExitDiffer, err: fmt.Errorf("compare: the images differ"), quiet: true}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&fmtA, "format", "f", "", "format of A (default: probe)")
	f.StringVarP(&fmtB, "format-b", "F", "", "format of B (default: probe)")
	f.BoolVarP(&strict, "strict", "s", false, "fail on different sizes or block status too")
	f.BoolVarP(&progress, "progress", "p", false, "show a progress bar")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files the images name (backing files, extents) inside this directory tree (repeatable)")
	return cmd
}

// compareJSON is what compare --json prints.
type compareJSON struct {
	Identical bool   `json:"identical"`
	Result    string `json:"result"`
	// Offset is where the content or block status first differs.
	Offset *int64 `json:"offset,omitempty"`
	SizeA  int64  `json:"size-a"`
	SizeB  int64  `json:"size-b"`
	// Message is qemu-img compare's last line.
	Message string `json:"message"`
}

func compareRecord(r imageops.CompareResult) compareJSON {
	msgs := r.Messages()
	j := compareJSON{Identical: r.Outcome == imageops.Identical, SizeA: r.SizeA, SizeB: r.SizeB, Message: msgs[len(msgs)-1]}
	switch r.Outcome {
	case imageops.Identical:
		j.Result = "identical"
	case imageops.ContentMismatch:
		j.Result, j.Offset = "content-mismatch", &r.Offset
	case imageops.SizeMismatch:
		j.Result = "size-mismatch"
	case imageops.StatusMismatch:
		j.Result, j.Offset = "status-mismatch", &r.Offset
	}
	return j
}
