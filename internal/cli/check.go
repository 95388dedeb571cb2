package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format
	"vdisk/internal/stack"
)

// Exit statuses of vdisk check, as qemu-img check has them.
const (
	checkExitError       = 1  // the check itself could not complete
	checkExitCorrupt     = 2  // corruptions were found
	checkExitLeaks       = 3  // only leaked clusters were found
	checkExitUnsupported = 63 // the format has no checks
)

func init() { register(newCheckCmd) }

func newCheckCmd(e *env) *cobra.Command {
	var (
		format, repair string
		asJSON         bool
		s3o            api.S3Options
	)
	cmd := &cobra.Command{
		Use:   "check IMAGE",
		Short: "Check an image's metadata for corruptions and leaks",
		Long: `check verifies an image's metadata the way qemu-img check does: every
cluster's reference count must match the references to it. A count that is
too low is a corruption (data may be lost); one too high is a leak (wasted
space, harmless). --repair leaks frees leaked clusters; --repair all also
rebuilds refcounts that are too low and fixes COPIED flags, as qemu-img
check -r all does (damaged tables are reported, not repaired).

Exit status: 0 clean, 2 corruptions found, 3 only leaks found, 63 the format
has no checks (raw), 1 the check could not run. --json prints the result as
an object shaped like qemu-img check --output json.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := image.CheckOptions{}
			switch repair {
			case "":
			case "leaks":
				opt.RepairLeaks = true
			case "all":
				opt.RepairAll = true
			default:
				return fmt.Errorf("check: --repair %q: want \"leaks\" or \"all\"", repair)
			}
			check := func(opt image.CheckOptions) (*image.CheckResult, error) {
				return stack.Check(cmd.Context(), args[0], format, opt, stackS3(s3o))
			}
			res, err := check(opt)
			if errors.Is(err, image.ErrNoCheck) {
				return &exitError{code: checkExitUnsupported, err: err}
			}
			if err != nil {
				return &exitError{code: checkExitError, err: err}
			}
			if res.LeaksFixed > 0 || res.CorruptionsFixed > 0 {
				// Report the state after the repair, as qemu-img does.
				leaks, corruptions := res.LeaksFixed, res.CorruptionsFixed
				if res, err = check(image.CheckOptions{}); err != nil {
					return &exitError{code: checkExitError, err: err}
				}
				res.LeaksFixed, res.CorruptionsFixed = leaks, corruptions
			}
			if asJSON {
				if err := printJSON(e.stdout, res); err != nil {
					return err
				}
			} else {
				printCheck(e.stdout, res)
			}
			switch {
			case res.Corruptions > 0 || res.CheckErrors > 0:
				return &exitError{code: checkExitCorrupt, err: fmt.Errorf("%s: %d corruptions, %d leaks", args[0], res.Corruptions, res.Leaks)}
			case res.Leaks > 0:
				return &exitError{code: checkExitLeaks, err: fmt.Errorf("%s: %d leaked clusters (vdisk check --repair leaks frees them)", args[0], res.Leaks)}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&format, "format", "f", "", "image format (default: probe)")
	fl.StringVarP(&repair, "repair", "r", "", `repair "leaks", or "all" (refcounts and COPIED flags too)`)
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	addS3Flags(fl, &s3o)
	return cmd
}

// printCheck writes a check result for people, in qemu-img's words.
func printCheck(w io.Writer, r *image.CheckResult) {
	for _, m := range r.Messages {
		fmt.Fprintln(w, m)
	}
	if r.LeaksFixed > 0 || r.CorruptionsFixed > 0 {
		fmt.Fprintf(w, "The following inconsistencies were found and repaired:\n\n    %d leaked clusters\n    %d corruptions\n\n", r.LeaksFixed, r.CorruptionsFixed)
	}
	switch {
	case r.Corruptions > 0:
		fmt.Fprintf(w, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
	case r.Leaks > 0:
		fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.Leaks)
	default:
		fmt.Fprintln(w, "No errors were found on the image.")
	}
	if r.CheckErrors > 0 {
		fmt.Fprintf(w, "%d internal errors have occurred during the check.\n", r.CheckErrors)
	}
	if r.TotalClusters > 0 {
		pct := func(a, b int64) float64 {
			if b == 0 {
				return 0
			}
			return 100 * float64(a) / float64(b)
		}
		fmt.Fprintf(w, "%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters, pct(r.AllocatedClusters, r.TotalClusters),
			pct(r.FragmentedClusters, r.AllocatedClusters), pct(r.CompressedClusters, r.AllocatedClusters))
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
}
