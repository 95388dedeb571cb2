package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"vdisk/internal/api"
	"vdisk/internal/convert"
	"vdisk/internal/image"
	"vdisk/internal/stack"
)

type convertOptions struct {
	srcFormat   string
	dstFormat   string
	sparse      bool
	compress    bool
	progress    bool
	noCreate    bool
	workers     int
	writers     int
	clusterSize string
	backingDirs []string
	options     []string
	s3          api.S3Options
	crypt       cryptFlags
}

func init() { register(newConvertCmd) }

func newConvertCmd(e *env) *cobra.Command {
	var o convertOptions
	c := &cobra.Command{
		Use:   "convert SRC DST",
		Short: "Copy an image into another, in any format",
		Long: `Convert copies the disk in SRC into a new image DST.

SRC's format is probed unless -f names it; DST's is -O (default raw). Holes
and zero ranges of the source are skipped, so DST stays sparse (--sparse=false
allocates every byte). Copies run in parallel (-W). A progress bar shows on a
terminal, or with -p. SRC or DST may be raw images in an object store
(s3://bucket/prefix, with --s3-endpoint): convert uploads and downloads. DST must not exist, unless -n says to write into an
existing image of the same size.`,
		Example: `  vdisk convert disk.qcow2 disk.img
  vdisk convert -O qcow2 -p disk.img disk.qcow2`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConvert(cmd.Context(), e, o, args[0], args[1])
		},
	}
	f := c.Flags()
	f.StringVarP(&o.srcFormat, "format", "f", "", "source format (default: probe)")
	f.StringVarP(&o.dstFormat, "output-format", "O", image.Raw, "destination format")
	f.BoolVar(&o.sparse, "sparse", true, "leave zero ranges unallocated in the destination")
	f.BoolVarP(&o.compress, "compress", "c", false, "compress the destination's data (qcow2: zlib, or zstd with -o compression_type=zstd; vmdk: streamOptimized)")
	f.BoolVarP(&o.progress, "progress", "p", false, "show a progress bar even when not on a terminal")
	f.BoolVarP(&o.noCreate, "no-create", "n", false, "write into an existing DST instead of creating it")
	f.IntVarP(&o.workers, "workers", "W", convert.DefaultWorkers, "reads in flight")
	f.IntVar(&o.writers, "writers", convert.DefaultWriters, "writes in flight")
	f.StringVar(&o.clusterSize, "cluster-size", "", "destination cluster size (formats that have one)")
	f.StringSliceVarP(&o.options, "option", "o", nil, "destination format option key=value, as vdisk create takes (e.g. subformat=streamOptimized for vmdk)")
	addS3Flags(f, &o.s3)
	o.crypt.add(f)
	f.StringArrayVar(&o.backingDirs, "backing-dir", nil, "also follow files the source image names (backing files, parents, extents) inside this directory tree (repeatable); by default only the image's own directory is trusted")
	return c
}

func runConvert(ctx context.Context, e *env, o convertOptions, srcPath, dstPath string) (err error) {
	if o.workers < 1 || o.writers < 1 {
		return fmt.Errorf("convert: -W %d --writers %d: want at least 1 of each", o.workers, o.writers)
	}
	var cluster int64
	if o.clusterSize != "" {
		if cluster, err = parseBytes(o.clusterSize); err != nil {
			return fmt.Errorf("convert: --cluster-size: %w", err)
		}
	}
	src, err := stack.Open(ctx, srcPath, stack.Options{Format: o.srcFormat, ReadOnly: true, BackingDirs: o.backingDirs, S3: stackS3(o.s3), Log: e.log,
		Passphrase: o.crypt.passphrase(e), KeepEncrypted: o.crypt.noDecrypt})
	if err != nil {
		return fmt.Errorf("convert: source: %w", err)
	}
	defer src.Device.Close()
	size := src.Device.Size()

	fopts, err := parseOptions(o.options)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if o.compress {
		if fopts, err = compressOptions(o, fopts); err != nil {
			return err
		}
	}
	if !o.noCreate {
		if _, err := os.Lstat(dstPath); err == nil {
			return fmt.Errorf("convert: %s exists; remove it, or pass -n to write into it", dstPath)
		}
		start := time.Now()
		copt := stack.CreateOptions{Format: o.dstFormat, Size: size, ClusterSize: cluster, Options: fopts, S3: stackS3(o.s3)}
		if handled, err := stack.Stream(ctx, dstPath, src.Device, copt); handled {
			if err != nil {
				return fmt.Errorf("convert: %w", err)
			}
			fmt.Fprintf(e.stdout, "converted %s (%s, %s) to %s (%s, written in one pass) in %s\n",
				srcPath, src.Format, formatSize(size), dstPath, o.dstFormat, time.Since(start).Round(time.Millisecond))
			return nil
		} else if err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	}
	created := false
	if !o.noCreate {
		if _, err := os.Lstat(dstPath); err == nil {
			return fmt.Errorf("convert: %s exists; remove it, or pass -n to write into it", dstPath)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("convert: %w", err)
		}
		if err := stack.Create(ctx, dstPath, stack.CreateOptions{Format: o.dstFormat, Size: size, ClusterSize: cluster, Options: fopts, S3: stackS3(o.s3)}); err != nil {
			return fmt.Errorf("convert: create destination: %w", err)
		}
		created = true
		defer func() {
			if err != nil {
				stack.Remove(dstPath, stackS3(o.s3))
			}
		}()
	}
	dst, err := stack.Open(ctx, dstPath, stack.Options{Format: o.dstFormat, S3: stackS3(o.s3), Log: e.log})
	if err != nil {
		return fmt.Errorf("convert: destination: %w", err)
	}
	defer func() {
		if cerr := dst.Device.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("convert: close destination: %w", cerr)
		}
	}()

	opt := convert.Options{Workers: o.workers, Writers: o.writers, Sparse: o.sparse, DstZeroed: created, Compress: o.compress}
	var bar *progressbar.ProgressBar
	if o.progress || isTerminal(e.stderr) {
		bar = newBar(e, true, size, fmt.Sprintf("%s → %s", srcPath, dstPath))
		opt.Progress = func(n int64) { _ = bar.Add64(n) }
	}
	start := time.Now()
	st, err := convert.Copy(ctx, dst.Device, src.Device, opt)
	if err != nil {
		return err
	}
	if bar != nil {
		_ = bar.Finish()
	}
	took := time.Since(start)
	fmt.Fprintf(e.stdout, "converted %s (%s, %s) to %s (%s): %s data, %s zero, in %s (%s/s)\n",
		srcPath, src.Format, formatSize(size), dstPath, dst.Format,
		formatSize(st.Data), formatSize(st.Zero), took.Round(time.Millisecond),
		formatSize(int64(float64(size)/max(took.Seconds(), 1e-9))))
	return nil
}

// parseBytes parses a byte count with an optional binary suffix; unlike
// parseSize a bare number means bytes.
func parseBytes(s string) (int64, error) {
	if s != "" && s[len(s)-1] >= '0' && s[len(s)-1] <= '9' {
		s += "B"
	}
	return parseSize(s)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// compressOptions checks -c against the destination format and returns its
// options: vmdk compresses as the streamOptimized subformat (written in
// one pass), qcow2 cluster by cluster.
func compressOptions(o convertOptions, fopts map[string]string) (map[string]string, error) {
	if o.noCreate {
		return nil, fmt.Errorf("convert: -c needs a new destination, not -n")
	}
	f, err := image.Lookup(o.dstFormat)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	switch f.Name {
	case "qcow2":
	case "vmdk":
		if fopts == nil {
			fopts = map[string]string{}
		}
		if sf, ok := fopts["subformat"]; ok && sf != "streamOptimized" {
			return nil, fmt.Errorf("convert: -c with vmdk writes the streamOptimized subformat, not %s", sf)
		}
		fopts["subformat"] = "streamOptimized"
	default:
		return nil, fmt.Errorf("convert: -c: %s cannot store compressed data (qcow2 and vmdk can)", f.Name)
	}
	return fopts, nil
}
