package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/blockdev"
	"vdisk/internal/imageops"
	"vdisk/internal/stack"
)

func init() { register(newDDCmd) }

func newDDCmd(e *env) *cobra.Command {
	var (
		srcFormat, dstFormat string
		progress, asJSON     bool
		backingDirs          []string
	)
	cmd := &cobra.Command{
		Use:   "dd [-f FMT] [-O FMT] [-p] [bs=N] [count=N] [skip=N] [seek=N] if=IN of=OUT",
		Short: "Copy part of an image's disk into another image, as qemu-img dd does",
		Long: `dd copies the disk of image IN (any format, -f to name it) into image OUT,
as qemu-img dd does: bs= is the block size (default 512), skip= the input
blocks to skip, count= bounds the input to count blocks from its start (skipped
blocks included, as qemu-img counts). OUT is created in format -O (default raw)
as large as what is copied; an OUT that exists is replaced.

seek=N (not in qemu-img) writes at N blocks into OUT instead: an OUT that
exists is opened as it is (its format probed unless -O names it), written from
seek*bs on and not truncated; it must be large enough. A new OUT is made
seek*bs bytes larger. Numbers take the suffixes k, M, G, T, P, E (powers of
1024).`,
		Example: `  vdisk dd if=disk.qcow2 of=part.img bs=1M skip=16 count=32
  vdisk dd -O qcow2 if=boot.img of=disk.qcow2 bs=512 seek=2048`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := imageops.DDOptions{BS: 512}
			var in, out string
			hasSeek := false
			for _, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return fmt.Errorf("dd: unrecognized operand %s", a)
				}
				num := func(what string) (int64, error) {
					n, err := imageops.ParseSize(v)
					if err != nil {
						return 0, fmt.Errorf("dd: Invalid %s specified: '%s'. you may use k, M, G, T, P or E suffixes", what, v)
					}
					return n, nil
				}
				var err error
				switch k {
				case "if":
					in = v
				case "of":
					out = v
				case "bs":
					o.BS, err = num("bs")
					if err == nil && (o.BS < 1 || o.BS > 1<<31-1) {
						err = fmt.Errorf("dd: Invalid bs specified. Must be between 1 and %d", 1<<31-1)
					}
				case "count":
					o.Count, err = num("count")
					o.HasCount = true
				case "skip":
					o.Skip, err = num("skip")
				case "seek":
					o.Seek, err = num("seek")
					hasSeek = true
				default:
					return fmt.Errorf("dd: unrecognized operand %s", k)
				}
				if err != nil {
					return err
				}
			}
			if in == "" || out == "" {
				return errors.New("dd: Must specify both input and output files")
			}
			return runDD(cmd, e, in, out, srcFormat, dstFormat, cmd.Flags().Changed("output-format"), hasSeek, progress, asJSON, backingDirs, o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&srcFormat, "format", "f", "", "format of IN (default: probe)")
	f.StringVarP(&dstFormat, "output-format", "O", "raw", "format of OUT")
	f.BoolVarP(&progress, "progress", "p", false, "show a progress bar")
	f.BoolVar(&asJSON, "json", false, `print what was copied as JSON ({"in", "out", "in_offset", "out_offset", "bytes", "created"})`)
	f.StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files IN names inside this directory tree (repeatable)")
	return cmd
}

// ddRecord is what dd --json prints.
type ddRecord struct {
	In        string `json:"in"`
	Out       string `json:"out"`
	InOffset  int64  `json:"in_offset"`
	OutOffset int64  `json:"out_offset"`
	Bytes     int64  `json:"bytes"`
	Created   bool   `json:"created"`
}

func runDD(cmd *cobra.Command, e *env, in, out, srcFormat, dstFormat string, dstFormatSet, hasSeek, progress, asJSON bool, backingDirs []string, o imageops.DDOptions) (err error) {
	ctx := cmd.Context()
	src, err := stack.Open(ctx, in, stack.Options{Format: srcFormat, ReadOnly: true, BackingDirs: backingDirs, Log: e.log})
	if err != nil {
		return fmt.Errorf("dd: Could not open '%s': %w", in, err)
	}
	defer src.Device.Close()
	plan, err := imageops.PlanDD(src.Device.Size(), o)
	if err != nil {
		return fmt.Errorf("dd: %w", err)
	}
	if plan.CannotSkip {
		fmt.Fprintf(e.stderr, "vdisk: dd: %s: cannot skip to specified offset\n", in)
	}
	if fi, err := os.Stat(in); err == nil {
		if fo, err := os.Stat(out); err == nil && os.SameFile(fi, fo) {
			return fmt.Errorf("dd: if and of are the same file (%s)", out)
		}
	}
	_, statErr := os.Lstat(out)
	exists := statErr == nil
	if statErr != nil && !errors.Is(statErr, fs.ErrNotExist) {
		return fmt.Errorf("dd: %w", statErr)
	}
	created := false
	if !(exists && hasSeek) {
		if exists {
			// An image in use (a file of the input's chain, or open
			// elsewhere) holds its lock: refuse as qemu-img does.
			if d, err := stack.Open(ctx, out, stack.Options{NoBacking: true, KeepEncrypted: true, Log: e.log}); err == nil {
				d.Device.Close()
			} else if errors.Is(err, blockdev.ErrLocked) {
				return fmt.Errorf("dd: %s is in use (by the input's backing chain, or another process): %w", out, err)
			}
			// qemu-img dd makes its output anew.
			if err := stack.Remove(out, stack.S3Options{}); err != nil {
				return fmt.Errorf("dd: replace %s: %w", out, err)
			}
		}
		if err := stack.Create(ctx, out, stack.CreateOptions{Format: dstFormat, Size: plan.OutSize}); err != nil {
			return fmt.Errorf("dd: %s: %w", out, err)
		}
		created = true
		defer func() {
			if err != nil {
				stack.Remove(out, stack.S3Options{})
			}
		}()
	}
	of := ""
	if created || dstFormatSet {
		of = dstFormat
	}
	dst, err := stack.Open(ctx, out, stack.Options{Format: of, BackingDirs: backingDirs, Log: e.log})
	if err != nil {
		return fmt.Errorf("dd: Could not open '%s': %w", out, err)
	}
	defer func() {
		if cerr := dst.Device.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("dd: close %s: %w", out, cerr)
		}
	}()
	var prog func(int64)
	if progress {
		bar := newBar(e, true, plan.Len, "dd")
		prog = func(n int64) { _ = bar.Add64(n) }
		defer func() { _ = bar.Finish() }()
	}
	if err := imageops.DD(ctx, dst.Device, src.Device, plan, created, prog); err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, ddRecord{In: in, Out: out, InOffset: plan.In, OutOffset: plan.Out, Bytes: plan.Len, Created: created})
	}
	return nil
}
