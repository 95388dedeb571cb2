package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format
)

func init() { register(newCreateCmd) }

func newCreateCmd(e *env) *cobra.Command {
	var (
		format, size, backing, backingFmt, cluster string
		options                                    []string
	)
	cmd := &cobra.Command{
		Use:   "create FILE [--size N]",
		Short: "Create a new, empty disk image",
		Long: `create makes a new image file (it must not exist yet).

-f names the format (raw or qcow2; default raw). A qcow2 image may have a
backing file (--backing, stored as given: a relative name is relative to the
new image's directory) whose format --backing-format records (default: probe
it now); without --size it takes the backing file's size. Format options go
in -o key=value[,key=value]: for qcow2 compat (0.10 or 1.1), refcount_bits,
lazy_refcounts (on/off) and extended_l2 (on/off).`,
		Example: `  vdisk create disk.img --size 10G
  vdisk create -f qcow2 disk.qcow2 --size 20G --cluster-size 64K
  vdisk create -f qcow2 top.qcow2 --backing base.qcow2 --backing-format qcow2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := image.CreateOptions{Format: format, BackingFile: backing, BackingFormat: backingFmt}
			if size != "" {
				n, err := parseSize(size)
				if err != nil {
					return fmt.Errorf("create: --size: %w", err)
				}
				opt.Size = n
			} else if backing == "" {
				return fmt.Errorf("create: --size is required without --backing")
			}
			if cluster != "" {
				n, err := parseBytes(cluster)
				if err != nil {
					return fmt.Errorf("create: --cluster-size: %w", err)
				}
				opt.ClusterSize = n
			}
			for _, o := range options {
				for _, kv := range strings.Split(o, ",") {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("create: -o %q: want key=value", kv)
					}
					if opt.Options == nil {
						opt.Options = map[string]string{}
					}
					opt.Options[k] = v
				}
			}
			if err := image.Create(args[0], opt); err != nil {
				return err
			}
			fa, err := image.Info(args[0], format)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "created %s: %s, %s", args[0], fa.Format, formatSize(fa.VirtualSize))
			if fa.BackingFile != "" {
				fmt.Fprintf(e.stdout, ", backing file %s (%s)", fa.BackingFile, fa.BackingFormat)
			}
			fmt.Fprintln(e.stdout)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&format, "format", "f", image.Raw, "image format: "+strings.Join(image.Formats(), ", "))
	fl.StringVar(&size, "size", "", "virtual size (e.g. 100M, 10G; a bare number means MiB)")
	fl.StringVarP(&backing, "backing", "b", "", "backing file (qcow2)")
	fl.StringVarP(&backingFmt, "backing-format", "F", "", "format of the backing file (default: probe)")
	fl.StringVar(&cluster, "cluster-size", "", "cluster size (qcow2; 512 to 2M, default 64K)")
	fl.StringSliceVarP(&options, "option", "o", nil, "format option key=value (repeatable, comma-separated)")
	return cmd
}
