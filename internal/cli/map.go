package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/image"
	"vdisk/internal/stack"
)

func init() { register(newMapCmd) }

// errMapUnmappable is what qemu-img map says of a data run it cannot
// show in its table (compressed clusters have no offset), in its words.
//
//lint:ignore ST1005 qemu-img's message, word for word
var errMapUnmappable = errors.New("File contains external, encrypted or compressed clusters.")

func newMapCmd(e *env) *cobra.Command {
	var (
		output, format      string
		asJSON              bool
		startOpt, lengthOpt string
		backingDirs         []string
		s3o                 api.S3Options
	)
	cmd := &cobra.Command{
		Use:   "map IMAGE",
		Short: "Show where each range of an image's disk comes from, as qemu-img map",
		Long: `map prints the runs of an image's disk, as qemu-img map does: for each, the
layer of the backing chain that holds it (depth 0 is the image itself),
whether it is present in a layer, reads as zeroes, is data, is compressed,
and the offset of its bytes in their file when they are stored as they are.

--output=json prints qemu-img map --output=json's list (with qemu 10's
"compressed"); the default prints qemu-img map's table of the data runs,
which fails, as qemu's does, on compressed clusters. The files the image
names are followed under the trust policy (--backing-dir). An image holding
a LUKS volume is mapped as stored, below the encryption (no passphrase is
needed): the runs of its format, LUKS header included. s3:// images work
too.`,
		Example: `  vdisk map --output=json disk.qcow2
  vdisk map --start-offset 1G --max-length 64M disk.qcow2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				output = "json"
			}
			if output != "human" && output != "json" {
				return fmt.Errorf("map: --output %q: want human or json", output)
			}
			start, maxLen := int64(0), int64(-1)
			var err error
			if startOpt != "" {
				if start, err = mapBytes(startOpt); err != nil {
					return fmt.Errorf("map: --start-offset %q: want a byte offset (suffixes k, M, G, ... allowed)", startOpt)
				}
			}
			if lengthOpt != "" {
				if maxLen, err = mapBytes(lengthOpt); err != nil {
					return fmt.Errorf("map: --max-length %q: want a byte count (suffixes k, M, G, ... allowed)", lengthOpt)
				}
			}
			dirs, err := resolveBackingDirs(backingDirs)
			if err != nil {
				return err
			}
			d, err := stack.OpenMap(cmd.Context(), args[0], stack.Options{Format: format, BackingDirs: dirs, S3: stackS3(s3o), Log: e.log})
			if err != nil {
				return err
			}
			defer d.Device.Close()
			end := d.Device.Size()
			if maxLen >= 0 && maxLen < end-start {
				end = start + maxLen
			}
			w := bufio.NewWriter(e.stdout)
			err = writeMap(w, output == "json", start, end, args[0], func(fn func(image.MapEntry) error) error {
				if start >= end {
					return nil // nothing to map: one empty run, as qemu prints
				}
				return image.Map(d.Device, start, end-start, fn)
			})
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&output, "output", "human", "output format: human (qemu-img map's table) or json")
	f.BoolVar(&asJSON, "json", false, "print JSON (--output=json)")
	f.StringVarP(&format, "format", "f", "", "image format (default: probe)")
	f.StringVarP(&startOpt, "start-offset", "s", "", "first byte of the disk to map")
	f.StringVarP(&lengthOpt, "max-length", "l", "", "map at most this many bytes")
	f.StringArrayVar(&backingDirs, "backing-dir", nil, "also follow files the image names (backing files, parents, extents) inside this directory tree (repeatable); by default only the image's own directory is trusted")
	addS3Flags(f, &s3o)
	return cmd
}

// writeMap writes the map of [start, end) that walk produces, as
// qemu-img map does: a JSON list, or the human table of the runs that
// hold data. name names a raw top layer whose device has no name (an
// s3:// image). An empty range maps as one empty run, as qemu's does.
func writeMap(w io.Writer, asJSON bool, start, end int64, name string, walk func(func(image.MapEntry) error) error) error {
	if asJSON {
		fmt.Fprint(w, "[")
	} else {
		fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	}
	var (
		prev   image.MapEntry
		have   bool
		dumped bool // an entry was written: the human table's rule below applies
	)
	dump := func(e image.MapEntry, last bool) error {
		if asJSON {
			fmt.Fprintf(w, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t, "compressed": %t`,
				e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data, e.Compressed)
			if e.HasOffset {
				fmt.Fprintf(w, `, "offset": %d`, e.Offset)
			}
			fmt.Fprint(w, "}")
			if !last {
				fmt.Fprint(w, ",\n")
			}
			return nil
		}
		if dumped && (!e.Data || e.Zero) {
			// qemu's table merges 0, ZERO and ZERO|DATA after the
			// first entry: such an entry prints nothing.
			e.Data, e.Zero = false, true
		}
		dumped = true
		if e.Data && !e.HasOffset {
			return errMapUnmappable
		}
		if e.Data && !e.Zero {
			file := e.File
			if file == "" && e.Depth == 0 {
				file = name
			}
			fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", hex0(e.Start), hex0(e.Length), hex0(e.Offset), file)
		}
		return nil
	}
	err := walk(func(e image.MapEntry) error {
		if have {
			if err := dump(prev, false); err != nil {
				return err
			}
		}
		prev, have = e, true
		return nil
	})
	if err != nil {
		return err
	}
	if !have {
		prev = image.MapEntry{Start: start}
	}
	if err := dump(prev, true); err != nil {
		return err
	}
	if asJSON {
		fmt.Fprintln(w, "]")
	}
	return nil
}

// mapBytes parses a byte count as qemu-img map's options take it: a
// number, with an optional binary suffix (k, M, G, ...); 0 is allowed.
func mapBytes(s string) (int64, error) {
	if strings.Trim(s, "0") == "" && s != "" {
		return 0, nil
	}
	n, err := parseBytes(s)
	if err == nil && n < 0 {
		err = fmt.Errorf("negative")
	}
	return n, err
}

// hex0 is C's "%#x": 0x-prefixed hex, but a bare 0.
func hex0(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
