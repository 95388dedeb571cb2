package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/client"
)

func init() { register(newOpenCmd) }

func newOpenCmd(e *env) *cobra.Command {
	var (
		f                       daemonFlags
		size, format, via       string
		readOnly, reuse, asJSON bool
		keyFile                 string
		allowDiscards           bool
		s3o                     api.S3Options
		backingDirs             []string
		noBacking               bool
		cache                   cacheFlags
		snapshot                bool
		snapshotDir, overlay    string
	)
	cmd := &cobra.Command{
		Use:   "open FILE",
		Short: "Open an image file as a block device (creating it when missing)",
		Long: "open attaches FILE to a block device and prints the device and the disk's id.\n" +
			"A missing FILE is created, sparse, of --size bytes (default 100M).\n" +
			"Without --via, the best path the kernel has: ublk (/dev/ublkbN, ublk_drv),\n" +
			"else the kernel nbd client (/dev/nbdN, nbd), both served by the daemon; else\n" +
			"raw images go straight to a loop device, and other formats through a FUSE\n" +
			"file with a loop device on top. vdisk info shows the path and why.\n\n" +
			"An encrypted (LUKS) image asks for its passphrase on the terminal, or reads it\n" +
			"from --key-file FILE (- for stdin), only when the image turns out to be\n" +
			"encrypted; it is attached through FUSE. After a daemon restart an encrypted\n" +
			"disk is listed as locked until it is opened again with its passphrase.\n\n" +
			"FILE may be s3://bucket/prefix, a raw image in an object store (created of\n" +
			"--size bytes when missing). Credentials and region come from the daemon's\n" +
			"environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...): a\n" +
			"daemon that vdisk starts inherits the environment of the command that starts\n" +
			"it, so set them before the first vdisk command; a running daemon keeps its own.\n\n" +
			"The files an image names (a qcow2 or VHD backing file, a VMDK's extents) are\n" +
			"followed only inside the image's own directory tree, as regular files; name\n" +
			"more trusted trees with --backing-dir, or serve the top layer alone with\n" +
			"--no-backing. The daemon keeps both to reopen the disk after a restart.\n\n" +
			"--snapshot throws the disk's writes away (qemu-nbd -s): FILE is opened read-only\n" +
			"under a temporary qcow2 overlay that never has a name in --snapshot-dir (O_TMPFILE)\n" +
			"and is encrypted with a random in-memory key above a LUKS volume. It is gone when\n" +
			"the disk closes or the daemon stops; a daemon restarted after a crash drops the\n" +
			"disk (its writes are gone; FILE was never written) and frees its device.\n" +
			"--overlay TOP opens the qcow2 overlay TOP over FILE, its base (any format vdisk\n" +
			"reads, or s3://), creating TOP when missing with FILE recorded as its backing file\n" +
			"(relative to TOP's directory when inside it; an s3:// URL as it is, which qemu\n" +
			"cannot follow). --format is the base's; a TOP that records another base is refused.",
		Example: "  vdisk open disk.img --size 10G\n  vdisk open disk.qcow2 --via nbd\n  vdisk open disk.img --via fuse --json\n" +
			"  vdisk open overlay.qcow2 --backing-dir /srv/base-images\n" +
			"  vdisk open secret.img --key-file key.txt\n  vdisk open s3://bucket/disk1 --s3-endpoint http://127.0.0.1:7070 --size 10G\n" +
			"  vdisk open --snapshot golden.qcow2\n  vdisk open --overlay work.qcow2 golden.vmdk",
		Args: cobra.ExactArgs(1),
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
			path := args[0]
			if api.IsURL(path) {
				s3, err := s3Request(s3o)
				if err != nil {
					return err
				}
				req.S3 = s3
			} else {
				if cmd.Flags().Changed("s3-endpoint") || cmd.Flags().Changed("s3-cache-dir") || s3o.ForceTakeover {
					return fmt.Errorf("%s is not an s3:// image: --s3-endpoint, --s3-cache-dir and --force-takeover do not apply", path)
				}
				var err error
				if path, err = resolveFile(path); err != nil {
					return err
				}
				if req.BackingDirs, err = resolveBackingDirs(backingDirs); err != nil {
					return err
				}
				if _, err := os.Stat(path); err == nil && req.Size != 0 {
					e.log.Debug("--size ignored: the file exists", "file", path)
				}
			}
			if api.IsURL(path) && len(backingDirs) > 0 {
				return fmt.Errorf("%s is an s3:// image: it names no files, so --backing-dir does not apply", path)
			}
			if noBacking && len(backingDirs) > 0 {
				return errors.New("--no-backing follows no file the image names: --backing-dir does not apply")
			}
			req.File = path
			req.AllowDiscards = allowDiscards
			req.NoBacking = noBacking
			if cmd.Flags().Changed("cache") {
				req.CacheMode = cache.cache
			}
			if cmd.Flags().Changed("aio") {
				req.AIO = cache.aio
			}
			if err := snapshotRequest(&req, snapshot, snapshotDir, overlay); err != nil {
				return err
			}
			c, err := f.connect(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer c.Close()
			d, err := openDisk(cmd.Context(), e, c, req, keyFile)
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
	cmd.Flags().StringVar(&keyFile, "key-file", "", "passphrase of an encrypted image, from this file (- for stdin); default: ask on the terminal")
	cmd.Flags().BoolVar(&allowDiscards, "allow-discards", false, "pass trims through the encryption (reveals which blocks are unused)")
	cmd.Flags().StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files the image names (backing files, parents, extents) inside this directory tree; by default only the image's own directory is trusted")
	cmd.Flags().BoolVar(&noBacking, "no-backing", false, "serve the top layer alone: follow no file the image names (a backing file's data reads as zeroes)")
	cache.add(cmd.Flags())
	addS3Flags(cmd.Flags(), &s3o)
	cmd.Flags().BoolVar(&snapshot, "snapshot", false, "throw writes away (like qemu-nbd -s): FILE is opened read-only under a temporary qcow2 overlay, gone when the disk closes or the daemon stops (a daemon restarted after a crash drops the disk); above an encrypted image the overlay is encrypted with a random key")
	cmd.Flags().StringVar(&snapshotDir, "snapshot-dir", "", "directory of --snapshot's temporary overlay (default: the daemon's $TMPDIR, else /tmp)")
	cmd.Flags().StringVar(&overlay, "overlay", "", "open this qcow2 overlay over FILE, its base (any format, or s3://), creating it when missing with FILE recorded as its backing file; an existing overlay must record FILE")
	return cmd
}

// snapshotRequest fills in --snapshot, --snapshot-dir and --overlay: an
// overlay is the disk, over req.File as its base.
func snapshotRequest(req *api.OpenRequest, snapshot bool, dir, overlay string) error {
	switch {
	case dir != "" && !snapshot:
		return errors.New("--snapshot-dir goes with --snapshot")
	case snapshot && overlay != "":
		return errors.New("--snapshot and --overlay exclude each other")
	}
	req.Snapshot = snapshot
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("--snapshot-dir: %w", err)
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return fmt.Errorf("--snapshot-dir %s is not a directory", dir)
		}
		req.SnapshotDir = abs
	}
	if snapshot {
		req.Create = false // a snapshot serves an image that exists
		if !api.IsURL(req.File) {
			if _, err := os.Stat(req.File); err != nil {
				return fmt.Errorf("--snapshot: %w", err)
			}
		}
	}
	if overlay != "" {
		top, err := resolveFile(overlay)
		if err != nil {
			return err
		}
		req.Base, req.File = req.File, top // made when missing, of the base's size
	}
	return nil
}

// resolveBackingDirs returns the absolute paths of --backing-dir
// arguments (the daemon has another working directory), refusing what is
// not a directory.
func resolveBackingDirs(dirs []string) ([]string, error) {
	out := make([]string, 0, len(dirs))
	for _, dir := range dirs {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("--backing-dir %s: %w", dir, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("--backing-dir: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--backing-dir %s is not a directory", dir)
		}
		out = append(out, abs)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// openDisk asks the daemon to open req.File. When the daemon answers that
// the image is encrypted, it reads the passphrase (from keyFile, else the
// terminal), tries again, and clears it: the passphrase is read only for
// an image that needs one.
func openDisk(ctx context.Context, e *env, c *client.Client, req api.OpenRequest, keyFile string) (*api.Disk, error) {
	d, err := c.Open(ctx, req)
	if !errors.Is(err, &api.Error{Code: api.CodePassphraseRequired}) {
		return d, err
	}
	pass, err := readPassphrase(e, keyFile, fmt.Sprintf("Passphrase for %s: ", req.File), false)
	if err != nil {
		return nil, fmt.Errorf("%s is encrypted: %w", req.File, err)
	}
	defer clear(pass)
	req.Passphrase = pass
	return c.Open(ctx, req)
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
