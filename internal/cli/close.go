package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/client"
)

func init() { register(newCloseCmd) }

// notOpenError is returned by findDisk when no disk matches the argument.
type notOpenError struct{ msg string }

func (e *notOpenError) Error() string { return e.msg }

func newCloseCmd(e *env) *cobra.Command {
	var (
		f          daemonFlags
		all, force bool
	)
	cmd := &cobra.Command{
		Use:   "close FILE|ID|DEVICE",
		Short: "Flush and detach an open disk",
		Long: "close detaches the disk and flushes it: when it returns, every write the kernel\n" +
			"acknowledged is on stable storage in the image. A device in use (mounted) is\n" +
			"refused unless --force, which detaches it when its last user lets go.",
		Args: func(cmd *cobra.Command, args []string) error {
			if all && len(args) != 0 {
				return errors.New("close: give FILE|ID|DEVICE or --all, not both")
			}
			if !all && len(args) != 1 {
				return errors.New("close: give one FILE, ID or DEVICE (or --all)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := f.connect(ctx, e)
			if err != nil {
				return err
			}
			defer c.Close()
			if !all {
				d, err := findDisk(ctx, c, args[0])
				if err != nil {
					return err
				}
				_, err = c.CloseDisk(ctx, d.ID, force)
				return err
			}
			disks, err := c.List(ctx)
			if err != nil {
				return err
			}
			var errs []string
			for _, d := range disks {
				if _, err := c.CloseDisk(ctx, d.ID, force); err != nil {
					errs = append(errs, err.Error())
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("close --all: %s", strings.Join(errs, "; "))
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "close every disk")
	cmd.Flags().BoolVar(&force, "force", false, "detach a busy device lazily, when its last user lets go")
	return cmd
}

// findDisk returns the disk an argument names: its id, its device (any path
// that resolves to it) or its image file.
func findDisk(ctx context.Context, c *client.Client, arg string) (*api.Disk, error) {
	if api.IsID(arg) {
		d, err := c.Disk(ctx, arg)
		if err == nil || !errors.Is(err, &api.Error{Code: api.CodeNotFound}) {
			return d, err
		}
	}
	disks, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	path, perr := api.Canonical(arg)
	for i := range disks {
		d := &disks[i]
		if perr == nil && (d.File == path || d.Device != "" && d.Device == path) {
			return d, nil
		}
	}
	abs, _ := filepath.Abs(arg)
	if api.IsID(arg) {
		return nil, &notOpenError{fmt.Sprintf("unknown disk id %s: no open disk has it (see vdisk list)", arg)}
	}
	return nil, &notOpenError{fmt.Sprintf("%s is not an open disk's file, id or device (see vdisk list)", abs)}
}
