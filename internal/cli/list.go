package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
)

func init() { register(newListCmd) }

func newListCmd(e *env) *cobra.Command {
	var (
		f      daemonFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the open disks",
		Long: "list prints a table of the open disks (ID DEVICE FILE FORMAT SIZE RO VIA), like losetup.\n" +
			"A disk the daemon could not re-open after a restart shows its state in DEVICE:\n" +
			"(locked) for an encrypted disk (open it again with its passphrase) or an image\n" +
			"another process holds, (missing), (failed). An s3:// disk whose object store\n" +
			"keeps failing is marked (degraded) after its device.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.connect(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer c.Close()
			disks, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, api.DiskList{Disks: disks})
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 8, 1, ' ', 0)
			fmt.Fprintln(tw, "ID\tDEVICE\tFILE\tFORMAT\tSIZE\tRO\tVIA\tCACHE")
			for _, d := range disks {
				dev := d.Device
				switch {
				case d.State == api.StateDegraded:
					dev += " (degraded)"
				case d.State != api.StateOpen:
					dev = "(" + d.State + ")"
				}
				ro := "0"
				if d.ReadOnly {
					ro = "1"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, dev, d.File, d.Format, formatSize(d.Size), ro, d.Via, cacheColumn(d))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, d := range disks {
				if d.State == api.StateDegraded {
					e.log.Warn("disk degraded", "id", d.ID, "file", d.File, "reason", d.Error)
				} else if d.State != api.StateOpen {
					e.log.Warn("disk not restored", "id", d.ID, "file", d.File, "state", d.State, "reason", d.Error)
				}
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"disks": [...]} as JSON`)
	return cmd
}

// cacheColumn is a disk's cache mode, with its I/O mode when not the
// default ("none+io_uring"); "-" for an s3:// disk, which has no local
// image file.
func cacheColumn(d api.Disk) string {
	if api.IsURL(d.File) {
		return "-"
	}
	c := d.CacheMode
	if c == "" {
		c = "writeback"
	}
	if d.AIO != "" && d.AIO != "threads" {
		c += "+" + d.AIO
	}
	return c
}
