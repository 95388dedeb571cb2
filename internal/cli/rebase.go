package cli

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/spf13/cobra"

	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/imageops"
	"vdisk/internal/stack"
)

type rebaseOptions struct {
	format        string
	cache         string
	backingCache  string
	backing       string
	backingFormat string
	unsafe        bool
	progress      bool
	quiet         bool
	asJSON        bool
	backingDirs   []string
}

// rebaseRecord is what rebase --json prints.
type rebaseRecord struct {
	Image         string `json:"image"`
	Backing       string `json:"backing"`
	BackingFormat string `json:"backing_format,omitempty"`
	Unsafe        bool   `json:"unsafe"`
	Data          int64  `json:"data_bytes"`
	Zero          int64  `json:"zero_bytes"`
}

func init() { register(newRebaseCmd) }

func newRebaseCmd(e *env) *cobra.Command {
	var o rebaseOptions
	c := &cobra.Command{
		Use:   "rebase [-f FMT] [-u] [-p] [-q] -b NEWBASE [-F FMT] TOP",
		Short: "Move an image onto another backing file",
		Long: `Rebase changes the backing file TOP records to NEWBASE (in format -F), as
qemu-img rebase does. In its safe mode, wherever TOP leaves a cluster to
its backing chain and the old chain and NEWBASE read differently, the old
bytes are copied into TOP first, so TOP reads the same afterwards; then
the header is rewritten. -b "" removes the backing file (the old chain's
data is copied in). -u (unsafe) only rewrites the header: the old chain is
not opened and NEWBASE need not exist.

NEWBASE, like the backing file name in an image, is relative to TOP's
directory. As with qemu-img, -F is required with a NEWBASE.`,
		Example: `  vdisk rebase -b new-base.qcow2 -F qcow2 overlay.qcow2
  vdisk rebase -u -b renamed.qcow2 -F qcow2 overlay.qcow2
  vdisk rebase -b "" overlay.qcow2`,
		Args: oneImage,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("backing") && !o.unsafe {
				//lint:ignore ST1005 qemu-img's message, word for word
				return errors.New("Must specify backing file (-b) or use unsafe mode (-u)")
			}
			return runRebase(cmd.Context(), e, o, args[0])
		},
	}
	f := c.Flags()
	f.StringVarP(&o.format, "format", "f", "", "TOP's format (default: probe)")
	f.StringVarP(&o.cache, "cache", "t", "writeback", "TOP's cache mode (accepted for qemu-img compatibility)")
	f.StringVarP(&o.backingCache, "backing-cache", "T", "writeback", "the backing files' cache mode (accepted for qemu-img compatibility)")
	f.StringVarP(&o.backing, "backing", "b", "", `the new backing file ("" for none)`)
	f.StringVarP(&o.backingFormat, "backing-format", "F", "", "the new backing file's format")
	f.BoolVarP(&o.unsafe, "backing-unsafe", "u", false, "only rewrite the header (unsafe: TOP reads differently unless the files hold the same)")
	f.BoolVarP(&o.progress, "progress", "p", false, "show a progress bar")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
	f.BoolVar(&o.asJSON, "json", false, `print what was done as JSON ({"image", "backing", "backing_format", "unsafe", "data_bytes", "zero_bytes"}: the bytes copied into the image)`)
	f.StringArrayVar(&o.backingDirs, "backing-dir", nil, "also follow backing files inside this directory tree (repeatable); by default only each image's own directory is trusted")
	return c
}

func runRebase(ctx context.Context, e *env, o rebaseOptions, name string) (err error) {
	if o.backingFormat != "" {
		fm, err := image.Lookup(o.backingFormat)
		if err != nil {
			//lint:ignore ST1005 qemu-img's message, word for word
			return fmt.Errorf("Invalid format name: '%s'", o.backingFormat)
		}
		o.backingFormat = fm.Name
	}
	if o.backing == "" {
		o.backingFormat = "" // qemu-img: no backing file, no format
	} else if o.backingFormat == "" {
		//lint:ignore ST1005 qemu-img's message, word for word
		return fmt.Errorf("Could not change the backing file to '%s': backing format must be specified", o.backing)
	}
	ch, err := stack.OpenChain(ctx, name, stack.ChainOptions{Format: o.format, NoBacking: o.unsafe, BackingDirs: o.backingDirs, Log: e.log})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ch.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var st imageops.RebaseStats
	setter, ok := ch.Top.(imageops.BackingSetter)
	if !ok {
		//lint:ignore ST1005 qemu-img's message, word for word
		return fmt.Errorf("Could not change the backing file to '%s': %s (%s images)", o.backing, syscall.ENOTSUP, ch.Format)
	}
	if !o.unsafe {
		var nb blockdev.Device
		if o.backing != "" {
			if nb, err = ch.OpenNewBacking(o.backing, o.backingFormat); err != nil {
				//lint:ignore ST1005 qemu-img's message, word for word
				return fmt.Errorf("Could not open new backing file '%s': %w", o.backing, err)
			}
			defer nb.Close()
		}
		opt := imageops.RebaseOptions{}
		bar := newBar(e, o.progress && !o.quiet, ch.Top.Size(), fmt.Sprintf("rebase %s", name))
		if bar != nil {
			opt.Progress = func(n int64) { _ = bar.Add64(n) }
		}
		if st, err = imageops.Rebase(ctx, ch.Top, nb, opt); err != nil {
			return err
		}
		if bar != nil {
			_ = bar.Finish()
		}
	}
	if err := setter.SetBacking(o.backing, o.backingFormat); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			//lint:ignore ST1005 qemu-img's message, word for word
			return fmt.Errorf("Could not change the backing file to '%s': No space left in the file header", o.backing)
		}
		//lint:ignore ST1005 qemu-img's message, word for word
		return fmt.Errorf("Could not change the backing file to '%s': %w", o.backing, err)
	}
	if o.asJSON {
		return printJSON(e.stdout, rebaseRecord{Image: name, Backing: o.backing, BackingFormat: o.backingFormat, Unsafe: o.unsafe, Data: st.Data, Zero: st.Zero})
	}
	return nil
}
