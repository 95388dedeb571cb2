package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
)

func init() { register(newOpenCmd) }

func newOpenCmd(e *env) *cobra.Command {
	var (
		f                       daemonFlags
		size, format, via       string
		readOnly, reuse, asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "open FILE",
		Short: "Open an image file as a block device (creating it when missing)",
		Long: "open attaches FILE to a block device and prints the device and the disk's id.\n" +
			"A missing FILE is created, sparse, of --size bytes (default 100M).\n" +
			"Without --via, the best path the kernel has: ublk (/dev/ublkbN, ublk_drv),\n" +
			"else the kernel nbd client (/dev/nbdN, nbd), both served by the daemon; else\n" +
			"raw images go straight to a loop device, and other formats through a FUSE\n" +
			"file with a loop device on top. vdisk info shows the path and why.",
		Example: "  vdisk open disk.img --size 10G\n  vdisk open disk.qcow2 --via nbd\n  vdisk open disk.img --via fuse --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := needRoot(); err != nil {
				return err
			}
			req := api.OpenRequest{Create: true, ReadOnly: readOnly, Format: format, Via: via, Reuse: reuse}
			if cmd.Flags().Changed("size") {
				n, err := parseSize(size)
				if err != nil {
					return err
				}
				req.Size = n
			}
			if via != "" && !api.IsVia(via) {
				return fmt.Errorf("--via %q: want ublk, nbd, loop or fuse", via)
			}
			path, err := resolveFile(args[0])
			if err != nil {
				return err
			}
			if _, err := os.Stat(path); err == nil && req.Size != 0 {
				e.log.Debug("--size ignored: the file exists", "file", path)
			}
			req.File = path
			c, err := f.connect(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer c.Close()
			d, err := c.Open(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, d)
			}
			fmt.Fprintf(e.stdout, "%s %s\n", d.Device, d.ID)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&size, "size", "100M", "size of a file to create: K, M, G, T (binary); a bare number is MiB")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "attach read-only")
	cmd.Flags().StringVar(&format, "format", "", "image format (default: detect; raw)")
	cmd.Flags().StringVar(&via, "via", "", "attach path: ublk, nbd, loop or fuse (default: ublk, else nbd, else loop for raw and fuse otherwise)")
	cmd.Flags().BoolVar(&reuse, "reuse", false, "if FILE is already open, print its disk instead of failing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the disk record as JSON")
	return cmd
}

// resolveFile returns the canonical path of an image file argument and
// refuses, with a message a person can act on, what cannot be one.
func resolveFile(name string) (string, error) {
	path, err := api.Canonical(name)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return path, nil
	case err != nil:
		return "", err
	case fi.IsDir():
		return "", fmt.Errorf("%s is a directory, not an image file", name)
	case fi.Mode()&fs.ModeDevice != 0:
		return "", fmt.Errorf("%s is a device, not an image file", name)
	}
	return path, nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
