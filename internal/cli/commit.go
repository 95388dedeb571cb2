package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/internal/imageops"
	"vdisk/internal/stack"
)

type commitOptions struct {
	format      string
	cache       string
	base        string
	drop        bool
	progress    bool
	quiet       bool
	asJSON      bool
	backingDirs []string
}

// commitRecord is what commit --json prints.
type commitRecord struct {
	Image   string `json:"image"`
	Base    string `json:"base"`
	Data    int64  `json:"data_bytes"`
	Zero    int64  `json:"zero_bytes"`
	Emptied bool   `json:"emptied"`
}

func init() { register(newCommitCmd) }

func newCommitCmd(e *env) *cobra.Command {
	var o commitOptions
	c := &cobra.Command{
		Use:   "commit [-f FMT] [-b BASE] [-d] [-p] [-q] TOP",
		Short: "Merge an image into a layer of its backing chain",
		Long: `Commit writes the changes TOP holds into its backing file, as qemu-img
commit does: every run that TOP (and, with -b, every image between TOP and
BASE) holds is copied into BASE, zero clusters as zeroes; BASE is flushed,
and then TOP is emptied so that it reads through to BASE again (-d leaves
it as it is).

BASE is TOP's own backing file unless -b names another layer of its chain
(by the name recorded in the image above it, or by a path to the same
file); -b implies -d. The images between TOP and BASE are not changed, and
after the commit they may read differently than before (as with qemu-img).

A crash part way leaves TOP and the images between as they were, and BASE
readable (a qcow2 BASE passes qemu-img check, at worst with leaked
clusters); run the commit again.`,
		Example: `  vdisk commit overlay.qcow2
  vdisk commit -b base.qcow2 -p top.qcow2`,
		Args: oneImage,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCommit(cmd.Context(), e, o, args[0])
		},
	}
	f := c.Flags()
	f.StringVarP(&o.format, "format", "f", "", "TOP's format (default: probe)")
	f.StringVarP(&o.cache, "cache", "t", "writeback", "cache mode (accepted for qemu-img compatibility; vdisk flushes BASE before TOP changes whatever it says)")
	f.StringVarP(&o.base, "base", "b", "", "the layer of TOP's backing chain to commit into (default: TOP's backing file); implies -d")
	f.BoolVarP(&o.drop, "drop", "d", false, "leave TOP as it is instead of emptying it")
	f.BoolVarP(&o.progress, "progress", "p", false, "show a progress bar")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
	f.BoolVar(&o.asJSON, "json", false, `print what was done as JSON ({"image", "base", "data_bytes", "zero_bytes", "emptied"}) instead of "Image committed."`)
	f.StringArrayVar(&o.backingDirs, "backing-dir", nil, "also follow backing files inside this directory tree (repeatable); by default only each image's own directory is trusted")
	return c
}

// oneImage is qemu-img's check of the arguments of commit and rebase.
func oneImage(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		//lint:ignore ST1005 qemu-img's message, word for word
		return errors.New("Expecting one image file name")
	}
	return nil
}

func runCommit(ctx context.Context, e *env, o commitOptions, name string) (err error) {
	if o.base != "" {
		o.drop = true // qemu-img: -b implies -d
	}
	ch, err := stack.OpenChain(ctx, name, stack.ChainOptions{Format: o.format, WriteBase: true, Base: o.base, BackingDirs: o.backingDirs, Log: e.log})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ch.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	opt := imageops.CommitOptions{Drop: o.drop}
	bar := newBar(e, o.progress && !o.quiet, ch.Top.Size(), fmt.Sprintf("%s → %s", name, ch.BaseName))
	if bar != nil {
		opt.Progress = func(n int64) { _ = bar.Add64(n) }
	}
	st, err := imageops.Commit(ctx, ch.Top, ch.Base, opt)
	if err != nil {
		return err
	}
	if bar != nil {
		_ = bar.Finish()
	}
	switch {
	case o.asJSON:
		return printJSON(e.stdout, commitRecord{Image: name, Base: ch.BaseName, Data: st.Data, Zero: st.Zero, Emptied: st.Emptied})
	case !o.quiet:
		fmt.Fprintln(e.stdout, "Image committed.")
	}
	return nil
}
