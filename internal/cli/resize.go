package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/client"
	"vdisk/internal/image"
	"vdisk/internal/stack"
)

func init() { register(newResizeCmd) }

func newResizeCmd(e *env) *cobra.Command {
	var (
		format string
		shrink bool
		f      daemonFlags
		s3o    api.S3Options
	)
	cmd := &cobra.Command{
		Use:   "resize [--shrink] [-f FORMAT] IMAGE [+|-]SIZE",
		Short: "Change the virtual size of an image that is not open",
		Long: "resize sets the image's virtual size to SIZE, or grows (+SIZE) or shrinks\n" +
			"(-SIZE) it by that much, like qemu-img resize. SIZE is written as for create\n" +
			"(100M, 10G; a bare number means MiB); for an encrypted image it is the\n" +
			"decrypted disk's size, and no passphrase is needed. The new space reads as zeroes; the\n" +
			"partitions and file system on the disk are left as they are (grow them with\n" +
			"growpart and resize2fs). Shrinking drops the data past the new end and needs\n" +
			"--shrink. Raw images can grow and shrink, qcow2 images can grow, also in\n" +
			"an object store (s3://, under the image's lease).\n\n" +
			"A disk that is open grows in place, attached and mounted: the daemon grows\n" +
			"the image and the kernel's device (loop, FUSE or nbd) follows, like\n" +
			"losetup --set-capacity; IMAGE may then also be the disk's id or device.\n" +
			"Flags go before IMAGE, so that -SIZE is not taken for one.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, arg := args[0], args[1]
			sign := ""
			if strings.HasPrefix(arg, "+") || strings.HasPrefix(arg, "-") {
				sign, arg = arg[:1], arg[1:]
			}
			n, err := parseSize(arg)
			if err != nil {
				return fmt.Errorf("resize: %w", err)
			}
			if d, c := findOpenDisk(cmd.Context(), f, name); d != nil {
				defer c.Close()
				return resizeOpen(cmd.Context(), e, c, d, sign, n)
			}
			newSize := func(old int64) int64 {
				switch sign {
				case "+":
					return old + n
				case "-":
					return old - n
				}
				return n
			}
			old, err := stack.Resize(cmd.Context(), name, newSize, shrink, stack.Options{Format: format, S3: stackS3(s3o), Log: e.log})
			if err != nil {
				return fmt.Errorf("resize: %w", err)
			}
			n = newSize(old)
			fmt.Fprintf(e.stdout, "resized %s from %s to %s\n", name, formatSize(old), formatSize(n))
			return nil
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "image format (default: detect): "+strings.Join(image.Formats(), ", "))
	cmd.Flags().BoolVar(&shrink, "shrink", false, "allow shrinking, which drops the data past the new end")
	cmd.Flags().SetInterspersed(false)
	f.add(cmd)
	addS3Flags(cmd.Flags(), &s3o)
	return cmd
}

// findOpenDisk returns the disk name names (a file, id or device) when a
// daemon is running and has it open, with a client of that daemon; it
// starts no daemon.
func findOpenDisk(ctx context.Context, f daemonFlags, name string) (*api.Disk, *client.Client) {
	c := client.New(client.SocketPath(f.socket))
	if _, err := c.Version(ctx); err != nil {
		c.Close()
		return nil, nil
	}
	d, err := findDisk(ctx, c, name)
	if err != nil || d.State != api.StateOpen && d.State != api.StateDegraded {
		c.Close()
		return nil, nil
	}
	return d, c
}

// resizeOpen grows an open disk through the daemon.
func resizeOpen(ctx context.Context, e *env, c *client.Client, d *api.Disk, sign string, n int64) error {
	switch sign {
	case "+":
		n += d.Size
	case "-":
		n = d.Size - n
	}
	nd, err := c.Resize(ctx, d.ID, n)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	fmt.Fprintf(e.stdout, "resized %s (%s, open as %s) from %s to %s\n", d.File, d.ID, nd.Device, formatSize(d.Size), formatSize(nd.Size))
	return nil
}
