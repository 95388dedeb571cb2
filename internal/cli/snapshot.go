package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"vdisk/internal/image"
	"vdisk/internal/stack"
)

func init() { register(newSnapshotCmd) }

func newSnapshotCmd(e *env) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "List, create, apply and delete internal snapshots of a qcow2 image",
		Long: "snapshot manages a qcow2 image's internal snapshots, as qemu-img snapshot\n" +
			"does (-l, -c, -a, -d); qemu sees them and vdisk sees qemu's. A snapshot\n" +
			"keeps the disk as it was: later writes copy what they change. The image\n" +
			"must not be open (apply and delete change what the disk holds).",
	}
	cmd.PersistentFlags().StringVarP(&format, "format", "f", "", "image format (default: detect)")
	// with opens name as an image with snapshots and runs fn on it.
	with := func(cmd *cobra.Command, name string, readOnly bool, fn func(image.Snapshotter) error) error {
		d, err := stack.Open(cmd.Context(), name, stack.Options{Format: format, ReadOnly: readOnly, NoBacking: true, KeepEncrypted: true, Log: e.log})
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		sn, ok := d.Device.(image.Snapshotter)
		if !ok {
			d.Device.Close()
			return fmt.Errorf("snapshot: %s is a %s image, which has no internal snapshots (qcow2 has)", name, d.Format)
		}
		err = fn(sn)
		if cerr := d.Device.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		return nil
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list IMAGE",
		Short: "List the snapshots (qemu-img snapshot -l)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(cmd, args[0], true, func(sn image.Snapshotter) error {
				snaps, err := sn.Snapshots()
				if err != nil {
					return err
				}
				if asJSON {
					if snaps == nil {
						snaps = []image.Snapshot{}
					}
					return printJSON(e.stdout, snaps)
				}
				return printSnapshots(e.stdout, snaps)
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	create := &cobra.Command{
		Use:   "create IMAGE NAME",
		Short: "Take a snapshot of the disk as it is (qemu-img snapshot -c)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(cmd, args[0], false, func(sn image.Snapshotter) error {
				s, err := sn.CreateSnapshot(args[1])
				if err == nil {
					fmt.Fprintf(e.stdout, "created snapshot %s (id %s) of %s\n", s.Name, s.ID, args[0])
				}
				return err
			})
		},
	}
	apply := &cobra.Command{
		Use:   "apply IMAGE NAME|ID",
		Short: "Bring the disk back to a snapshot, dropping the changes since (qemu-img snapshot -a)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(cmd, args[0], false, func(sn image.Snapshotter) error {
				err := sn.ApplySnapshot(args[1])
				if err == nil {
					fmt.Fprintf(e.stdout, "applied snapshot %s to %s\n", args[1], args[0])
				}
				return err
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete IMAGE NAME|ID",
		Short: "Delete a snapshot and free what only it used (qemu-img snapshot -d)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(cmd, args[0], false, func(sn image.Snapshotter) error {
				err := sn.DeleteSnapshot(args[1])
				if err == nil {
					fmt.Fprintf(e.stdout, "deleted snapshot %s of %s\n", args[1], args[0])
				}
				return err
			})
		},
	}
	cmd.AddCommand(list, create, apply, del)
	return cmd
}

// printSnapshots writes a snapshot table like qemu-img snapshot -l.
func printSnapshots(w io.Writer, snaps []image.Snapshot) error {
	if len(snaps) == 0 {
		_, err := fmt.Fprintln(w, "no snapshots")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tDATE\tDISK SIZE\tVM STATE")
	for _, s := range snaps {
		date := time.Unix(s.DateSec, s.DateNsec).UTC().Format(time.RFC3339)
		size := "-"
		if s.VirtualSize > 0 {
			size = formatSize(s.VirtualSize)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID, s.Name, date, size, formatSize(int64(s.VMStateSize)))
	}
	return tw.Flush()
}
