package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/internal/api"
	"vdisk/internal/image"
	_ "vdisk/internal/image/all" // every format
	"vdisk/internal/stack"
)

func init() { register(newCreateCmd) }

func newCreateCmd(e *env) *cobra.Command {
	var (
		format, size, backing, backingFmt, cluster string
		options                                    []string
		encrypt, keyFile, cipher                   string
		kf                                         pbkdfFlags
		s3o                                        api.S3Options
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
lazy_refcounts (on/off) and extended_l2 (on/off).

--encrypt luks2|luks1 puts a LUKS volume on top of any format: --size is then
the size of the decrypted disk, and the image is larger by the LUKS header.
The passphrase comes from a prompt (asked twice) or --key-file.

FILE may be s3://bucket/prefix (raw, with --s3-endpoint): a chunked image in
an object store, --cluster-size being its chunk size (default 4M).`,
		Example: `  vdisk create disk.img --size 10G
  vdisk create -f qcow2 disk.qcow2 --size 20G --cluster-size 64K
  vdisk create -f qcow2 top.qcow2 --backing base.qcow2 --backing-format qcow2
  vdisk create --encrypt luks2 --key-file key.txt secret.img --size 1G`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := stack.CreateOptions{Format: format, BackingFile: backing, BackingFormat: backingFmt, S3: stackS3(s3o)}
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
			var err error
			if opt.Options, err = parseOptions(options); err != nil {
				return fmt.Errorf("create: %w", err)
			}
			if format == stack.LUKS && encrypt == "" {
				encrypt = "luks2" // qemu-img create -f luks: LUKS on a raw file
			}
			if encrypt != "" {
				if encrypt != "luks2" && encrypt != "luks1" {
					return fmt.Errorf("create: --encrypt %q: want luks2 or luks1", encrypt)
				}
				if size == "" {
					return fmt.Errorf("create: --encrypt needs --size")
				}
				pass, err := readPassphrase(e, keyFile, "Enter passphrase for the new volume: ", true)
				if err != nil {
					return fmt.Errorf("create: %w", err)
				}
				opt.Encrypt = stack.EncryptOptions{Type: encrypt, Passphrase: pass,
					LUKS: stack.LUKSFormatOptions{Cipher: cipher, PBKDF: kf.options()}}
			}
			if err := stack.Create(cmd.Context(), args[0], opt); err != nil {
				return err
			}
			fa, err := stack.Info(cmd.Context(), args[0], format, opt.S3)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "created %s: %s, %s", args[0], fa.Format, formatSize(fa.VirtualSize))
			if fa.BackingFile != "" {
				fmt.Fprintf(e.stdout, ", backing file %s (%s)", fa.BackingFile, fa.BackingFormat)
			}
			if encrypt != "" {
				fmt.Fprintf(e.stdout, ", encrypted (%s), %s decrypted", encrypt, formatSize(opt.Size))
			}
			fmt.Fprintln(e.stdout)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&format, "format", "f", image.Raw, "image format: "+strings.Join(image.Formats(), ", ")+", or luks (qemu's name for LUKS on raw)")
	fl.StringVar(&size, "size", "", "virtual size (e.g. 100M, 10G; a bare number means MiB)")
	fl.StringVarP(&backing, "backing", "b", "", "backing file (qcow2)")
	fl.StringVarP(&backingFmt, "backing-format", "F", "", "format of the backing file (default: probe)")
	fl.StringVar(&cluster, "cluster-size", "", "cluster size (qcow2; 512 to 2M, default 64K)")
	fl.StringSliceVarP(&options, "option", "o", nil, "format option key=value (repeatable, comma-separated)")
	fl.StringVar(&encrypt, "encrypt", "", "encrypt the image: luks2 or luks1")
	fl.StringVar(&keyFile, "key-file", "", "passphrase for --encrypt, from this file (- for stdin)")
	fl.StringVar(&cipher, "cipher", "", "cipher for --encrypt (default aes-xts-plain64)")
	kf.add(cmd)
	addS3Flags(fl, &s3o)
	return cmd
}

// parseOptions parses -o key=value[,key=value] flags; nil when there are
// none.
func parseOptions(flags []string) (map[string]string, error) {
	var m map[string]string
	for _, o := range flags {
		for _, kv := range strings.Split(o, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("-o %q: want key=value", kv)
			}
			if m == nil {
				m = map[string]string{}
			}
			m[k] = v
		}
	}
	return m, nil
}
