package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/internal/imageops"
	"vdisk/internal/stack"
)

func init() { register(newMeasureCmd) }

func newMeasureCmd(e *env) *cobra.Command {
	var (
		srcFormat, dstFormat, size, output string
		options, backingDirs               []string
		asJSON                             bool
	)
	cmd := &cobra.Command{
		Use:   "measure [-O FMT] [-o OPTIONS] [--size N | [-f FMT] IMAGE] [--output=human|json]",
		Short: "Say how large a new image would be, as qemu-img measure does",
		Long: `measure prints the size a new image of format -O (default raw) would take
on disk: "required size" to hold IMAGE's data (or, with --size, an empty disk
of N bytes) and "fully allocated size" with every cluster allocated, with
qemu-img measure's numbers. A qcow2 target from a qcow2 source also prints
"bitmaps size" (persistent bitmaps are not carried: 0). -o takes the target's
creation options (qcow2: cluster_size, refcount_bits, extended_l2, compat,
preallocation, backing_file).

For vdi, vhd, vhdx and vmdk (monolithicSparse), which qemu-img cannot
measure, the numbers are those of the files vdisk create and convert write:
the empty image's header and tables, plus each block (vdi 1 MiB, vhd 2 MiB
and its bitmap, vhdx 32 MiB, vmdk 64 KiB grains) that holds data in IMAGE.`,
		Example: `  vdisk measure -O qcow2 disk.img
  vdisk measure -O qcow2 -o cluster_size=2M --size 100G --output=json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				output = "json"
			}
			if output != "human" && output != "json" {
				return fmt.Errorf("measure: --output must be used with human or json as argument")
			}
			if len(args) == 0 && size == "" {
				return errors.New("measure: Either --size N or one filename must be specified")
			}
			if len(args) == 1 && size != "" {
				return errors.New("measure: --size N cannot be used together with a filename")
			}
			fopts, err := parseOptions(options)
			if err != nil {
				return fmt.Errorf("measure: %w", err)
			}
			mo := imageops.MeasureOptions{Format: dstFormat, Options: fopts,
				Empty: func(format string, size int64, opts map[string]string) (int64, int64, error) {
					return stack.EmptyImage(cmd.Context(), format, size, opts)
				}}
			var m imageops.Measurement
			if len(args) == 1 {
				d, err := stack.Open(cmd.Context(), args[0], stack.Options{Format: srcFormat, ReadOnly: true, BackingDirs: backingDirs, Log: e.log})
				if err != nil {
					return fmt.Errorf("measure: %w", err)
				}
				defer d.Device.Close()
				m, err = imageops.Measure(d.Device, d.Format == "qcow2" && !d.Encrypted, mo)
				if err != nil {
					return err
				}
			} else {
				n, err := imageops.ParseSize(size)
				if err != nil {
					return fmt.Errorf("measure: --size: %w", err)
				}
				mo.Size = n
				if m, err = imageops.Measure(nil, false, mo); err != nil {
					return err
				}
			}
			if output == "json" {
				return printMeasureJSON(e, m)
			}
			fmt.Fprintf(e.stdout, "required size: %d\nfully allocated size: %d\n", m.Required, m.FullyAllocated)
			if m.HasBitmaps {
				fmt.Fprintf(e.stdout, "bitmaps size: %d\n", m.Bitmaps)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&srcFormat, "format", "f", "", "format of IMAGE (default: probe)")
	f.StringVarP(&dstFormat, "output-format", "O", "raw", "format of the image to measure")
	f.StringSliceVarP(&options, "option", "o", nil, "target format option key=value (comma-separated, repeatable)")
	f.StringVar(&size, "size", "", "measure an empty disk of this size (suffixes k, M, G, T)")
	f.StringVar(&output, "output", "human", "human or json")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON (--output=json)")
	f.StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files IMAGE names inside this directory tree (repeatable)")
	return cmd
}

// printMeasureJSON prints m as qemu-img measure --output=json does: the
// bitmaps member first, and only when it is reported.
func printMeasureJSON(e *env, m imageops.Measurement) error {
	if m.HasBitmaps {
		fmt.Fprintf(e.stdout, "{\n    \"bitmaps\": %d,\n    \"required\": %d,\n    \"fully-allocated\": %d\n}\n", m.Bitmaps, m.Required, m.FullyAllocated)
	} else {
		fmt.Fprintf(e.stdout, "{\n    \"required\": %d,\n    \"fully-allocated\": %d\n}\n", m.Required, m.FullyAllocated)
	}
	return nil
}
