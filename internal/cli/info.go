package cli

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/stack"
)

func init() { register(newInfoCmd) }

func newInfoCmd(e *env) *cobra.Command {
	var (
		f           daemonFlags
		format      string
		asJSON      bool
		s3o         api.S3Options
		backingDirs []string
		noBacking   bool
	)
	cmd := &cobra.Command{
		Use:   "info FILE|ID|DEVICE",
		Short: "Show what a disk or an image file is",
		Long: "info prints everything the original driver answered through its storage IOCTLs:\n" +
			"size in bytes and sectors, block sizes, CHS geometry, writable, device number,\n" +
			"removable/hotplug, media type, device name, unique id, backing file, format and\n" +
			"attach path. For a file that is not open it prints the image's facts.\n" +
			"--json prints the disk record (api.Disk) of an open disk, or the image record\n" +
			`(api.Image, with "open": false) of a file that is not open.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := f.connect(ctx, e)
			if err != nil {
				return err
			}
			defer c.Close()
			d, err := findDisk(ctx, c, args[0])
			if err == nil {
				if asJSON {
					return printJSON(e.stdout, d)
				}
				return printDisk(e.stdout, d)
			}
			var notOpen *notOpenError
			if !errors.As(err, &notOpen) || api.IsID(args[0]) {
				return err
			}
			req := api.InspectRequest{File: args[0], Format: format, NoBacking: noBacking}
			if req.BackingDirs, err = resolveBackingDirs(backingDirs); err != nil {
				return err
			}
			if api.IsURL(args[0]) {
				if req.S3, err = s3Request(s3o); err != nil {
					return err
				}
			} else if req.File, err = resolveFile(args[0]); err != nil {
				return err
			}
			im, err := c.Inspect(ctx, req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, im)
			}
			return printImage(e.stdout, im)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&format, "format", "", "image format of a file that is not open (default: detect)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	cmd.Flags().StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files the image names (backing files, parents, extents) inside this directory tree (repeatable); by default only the image's own directory is trusted")
	cmd.Flags().BoolVar(&noBacking, "no-backing", false, "describe the top image of a backing chain alone")
	cmd.Flags().StringVar(&s3o.Endpoint, "s3-endpoint", "", "object store URL for an s3:// image that is not open (default $"+stack.EnvS3Endpoint+")")
	return cmd
}

// yesNo renders a bool for people.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// printDisk writes an open disk's facts, one per line.
func printDisk(w io.Writer, d *api.Disk) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	dev := d.Device
	switch {
	case d.State == api.StateDegraded:
		dev += " (degraded: " + d.Error + ")"
	case d.State != api.StateOpen:
		dev = "(" + d.State + ": " + d.Error + ")"
	}
	rows := [][2]string{
		{"id", d.ID},
		{"device", dev},
		{"device number", d.DevNo},
		{"file", d.File},
		{"format", d.Format},
		{"encrypted", yesNo(d.Encrypted)},
		{"size", fmt.Sprintf("%d bytes (%s), %d sectors", d.Size, formatSize(d.Size), d.Sectors)},
		{"block size", fmt.Sprintf("%d logical, %d physical", d.LogicalBlockSize, d.PhysicalBlockSize)},
		{"geometry", geometry(d.Geometry)},
		{"writable", yesNo(d.Writable)},
		{"removable", yesNo(d.Removable)},
		{"hotplug", yesNo(d.Hotplug)},
		{"media type", d.MediaType},
		{"unique id", d.UniqueID},
		{"via", d.Via},
		{"via reason", d.ViaReason},
		{"host cache", cacheColumn(*d)},
		{"opened at", d.OpenedAt.Format(time.RFC3339)},
		{"state", d.State},
	}
	if c := d.Cache; c != nil {
		rows = append(rows, [2]string{"cache", fmt.Sprintf("%s dirty in %d chunks (stored by fsync and close), %s clean; %d chunks in the store",
			formatSize(c.DirtyBytes), c.DirtyChunks, formatSize(c.CachedBytes), c.StoredChunks)})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// printImage writes the facts of an image that is not open.
func printImage(w io.Writer, im *api.Image) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	rows := [][2]string{
		{"id", im.ID},
		{"device", "(not open)"},
		{"file", im.File},
		{"format", im.Format},
		{"encrypted", yesNo(im.Encrypted)},
		{"size", fmt.Sprintf("%d bytes (%s), %d sectors", im.Size, formatSize(im.Size), im.Sectors)},
		{"allocated", fmt.Sprintf("%d bytes (%s)", im.Allocated, formatSize(im.Allocated))},
		{"block size", fmt.Sprintf("%d logical, %d physical", im.LogicalBlockSize, im.PhysicalBlockSize)},
		{"geometry", geometry(im.Geometry)},
		{"writable", yesNo(im.Writable)},
		{"media type", im.MediaType},
		{"unique id", im.UniqueID},
	}
	rows = append(rows, detailRows(im.Details)...)
	rows = append(rows, storeRows(im.Store)...)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// geometry renders a CHS geometry.
func geometry(g api.Geometry) string {
	return fmt.Sprintf("%d cylinders, %d heads, %d sectors/track, %d bytes/sector", g.Cylinders, g.Heads, g.SectorsPerTrack, g.BytesPerSector)
}

// storeRows renders what an object store holds of an s3:// image.
func storeRows(s *api.StoreDetails) [][2]string {
	if s == nil {
		return nil
	}
	rows := [][2]string{
		{"chunks", fmt.Sprintf("%d stored, %s each", s.Chunks, formatSize(s.ChunkSize))},
		{"created", s.Created.Format(time.RFC3339)},
	}
	if s.Capacity > 0 {
		rows = append(rows, [2]string{"file in store", fmt.Sprintf("%d bytes (%s), may grow to %s", s.FileLength, formatSize(s.FileLength), formatSize(s.Capacity))})
	}
	lease := "none (not open for writing)"
	if s.LeaseHolder != "" {
		lease = s.LeaseHolder
		if s.LeaseExpires != nil {
			if s.LeaseExpires.Before(time.Now()) {
				lease += ", expired at " + s.LeaseExpires.Format(time.RFC3339) + " (take over with --force-takeover)"
			} else {
				lease += ", until " + s.LeaseExpires.Format(time.RFC3339)
			}
		}
	}
	return append(rows, [2]string{"writer", lease})
}

// detailRows renders the format's own facts, those it has.
func detailRows(d *api.FormatDetails) [][2]string {
	if d == nil {
		return nil
	}
	var rows [][2]string
	add := func(k, v string, ok bool) {
		if ok {
			rows = append(rows, [2]string{k, v})
		}
	}
	add("cluster size", fmt.Sprintf("%d bytes (%s)", d.ClusterSize, formatSize(d.ClusterSize)), d.ClusterSize > 0)
	add("compat", d.Compat, d.Compat != "")
	add("backing file", fmt.Sprintf("%s (%s)", d.BackingFile, d.BackingFormat), d.BackingFile != "")
	add("refcount bits", fmt.Sprint(d.RefcountBits), d.RefcountBits > 0)
	add("lazy refcounts", "yes", d.LazyRefcounts)
	add("extended l2", "yes", d.ExtendedL2)
	add("compression", d.CompressionType, d.CompressionType != "")
	add("dirty", "yes (left open by a writer; repaired on the next writable open)", d.Dirty)
	for _, sn := range d.Snapshots {
		add("snapshot", fmt.Sprintf("%s %q, %s, vm state %d bytes", sn.ID, sn.Name, time.Unix(sn.Date, 0).UTC().Format(time.RFC3339), sn.VMStateSize), true)
	}
	return rows
}
