package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/stack"
)

// maxKeyFileSize bounds a key file (cryptsetup's default limit).
const maxKeyFileSize = 8 << 20

func init() { register(newLUKSCmd) }

func newLUKSCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "luks",
		Short: "Manage LUKS encryption headers of images",
		Long: "luks formats, inspects and manages the keyslots of LUKS1 and LUKS2 volumes,\n" +
			"compatible with cryptsetup. IMAGE is a raw file or any image format whose data\n" +
			"holds the LUKS volume. Passphrases come from a prompt without echo or from\n" +
			"--key-file FILE (- for stdin; the whole file is the key, as cryptsetup's),\n" +
			"never from the command line. The image must not be open elsewhere.",
	}
	cmd.AddCommand(newLUKSFormatCmd(e), newLUKSDumpCmd(e), newLUKSAddKeyCmd(e),
		newLUKSRemoveKeyCmd(e), newLUKSChangeKeyCmd(e))
	return cmd
}

// pbkdfFlags are the KDF cost flags of commands that make a keyslot.
type pbkdfFlags struct {
	kind       string
	hash       string
	iterTime   time.Duration
	iterations uint32
	memoryKiB  uint32
	parallel   uint32
}

func (f *pbkdfFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.kind, "pbkdf", "", "keyslot KDF: argon2id (LUKS2 default), argon2i or pbkdf2 (LUKS1)")
	fl.StringVar(&f.hash, "pbkdf-hash", "", "pbkdf2's hash (default sha256; LUKS1 uses the volume's)")
	fl.DurationVar(&f.iterTime, "iter-time", 0, "unlock time the KDF cost is benchmarked for (default 2s)")
	fl.Uint32Var(&f.iterations, "pbkdf-force-iterations", 0, "pbkdf2 iterations or argon2 time cost, no benchmark")
	fl.Uint32Var(&f.memoryKiB, "pbkdf-memory", 0, "argon2 memory cost in KiB (default 1 GiB, at most half the RAM)")
	fl.Uint32Var(&f.parallel, "pbkdf-parallel", 0, "argon2 threads (default min(4, CPUs))")
}

func (f *pbkdfFlags) options() stack.PBKDFOptions {
	return stack.PBKDFOptions{Type: f.kind, Hash: f.hash, IterTime: f.iterTime, Iterations: f.iterations,
		MemoryKiB: f.memoryKiB, Parallel: f.parallel}
}

// openLUKSImage opens IMAGE's data (any format, local or s3://) through
// the stack and reads its LUKS header. The caller closes the returned
// Device.
func openLUKSImage(ctx context.Context, path, format string, readOnly bool) (blockdev.Device, *stack.LUKSVolume, error) {
	d, v, err := stack.OpenLUKS(ctx, path, stack.Options{Format: format, ReadOnly: readOnly})
	if err != nil {
		return nil, nil, err
	}
	return d.Device, v, nil
}

// closeDev closes dev and returns the first of err and the close error.
func closeDev(dev blockdev.Device, err error) error {
	if cerr := dev.Close(); err == nil && cerr != nil && !errors.Is(cerr, blockdev.ErrClosed) {
		return cerr
	}
	return err
}

func newLUKSFormatCmd(e *env) *cobra.Command {
	var (
		opt      stack.LUKSFormatOptions
		keyBits  int
		kf       pbkdfFlags
		keyFile  string
		format   string
		force    bool
		digestIt uint32
	)
	cmd := &cobra.Command{
		Use:   "format IMAGE",
		Short: "Write a new LUKS header (the data is lost)",
		Long: "format writes a new LUKS volume over IMAGE's data with one keyslot (0), like\n" +
			"cryptsetup luksFormat: LUKS2 with aes-xts-plain64, a 512-bit key, 4096-byte\n" +
			"sectors and argon2id benchmarked for 2 s unless told otherwise. An image that\n" +
			"already holds a LUKS header needs --force.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt.KeySize = keyBits / 8
			if keyBits%8 != 0 {
				return fmt.Errorf("--key-size %d is not a whole number of bytes", keyBits)
			}
			opt.PBKDF = kf.options()
			opt.DigestIterations = digestIt
			d, err := stack.Open(cmd.Context(), args[0], stack.Options{Format: format, KeepEncrypted: true})
			if err != nil {
				return err
			}
			dev := d.Device
			if stack.IsLUKS(dev) && !force {
				return closeDev(dev, fmt.Errorf("%s already holds a LUKS header; --force overwrites it (and loses its data)", args[0]))
			}
			pass, err := readPassphrase(e, keyFile, "Enter passphrase for the new volume: ", true)
			if err != nil {
				return closeDev(dev, err)
			}
			defer clear(pass)
			v, err := stack.FormatLUKS(d, pass, opt)
			if err != nil {
				return closeDev(dev, fmt.Errorf("%s: %w", args[0], err))
			}
			in := v.Info()
			fmt.Fprintf(e.stdout, "formatted %s: LUKS%d, %s, %d-bit key, keyslot 0\n",
				args[0], in.Version, in.Segments[0].Cipher, in.Keyslots[0].KeySize*8)
			return closeDev(dev, nil)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opt.Type, "type", "luks2", "luks2 or luks1")
	fl.StringVar(&opt.Cipher, "cipher", "aes-xts-plain64", "data cipher: aes-xts-plain64, aes-cbc-essiv:sha256, ...")
	fl.IntVar(&keyBits, "key-size", 0, "volume key size in bits (default 512 for XTS, 256 for CBC)")
	fl.IntVar(&opt.SectorSize, "sector-size", 0, "LUKS2 encryption sector size (default 4096)")
	fl.StringVar(&opt.Hash, "hash", "sha256", "hash of the AF splitter and the key digest (and LUKS1's PBKDF2)")
	fl.StringVar(&opt.Label, "label", "", "LUKS2 label")
	fl.Int64Var(&opt.MetadataSize, "luks2-metadata-size", 0, "size of each LUKS2 header copy in bytes (default 16384)")
	fl.Int64Var(&opt.KeyslotsSize, "luks2-keyslots-size", 0, "LUKS2 keyslots area in bytes (default: data at 16 MiB)")
	fl.Uint32Var(&digestIt, "digest-iterations", 0, "PBKDF2 iterations of the volume key digest (default benchmarked)")
	fl.StringVar(&keyFile, "key-file", "", "read the passphrase from FILE (- for stdin)")
	fl.StringVar(&format, "format", "", "IMAGE's format (default probed)")
	fl.BoolVar(&force, "force", false, "overwrite an existing LUKS header")
	kf.add(cmd)
	return cmd
}

func newLUKSDumpCmd(e *env) *cobra.Command {
	var (
		format string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "dump IMAGE",
		Short: "Print a LUKS header (no secrets)",
		Long: "dump prints the LUKS header: version, segments, keyslots with their KDF costs,\n" +
			"tokens and digests; never salts, digests or key material. --json prints\n" +
			"luks.Info. A damaged primary LUKS2 header is reported (header copy: secondary).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dev, v, err := openLUKSImage(cmd.Context(), args[0], format, true)
			if err != nil {
				return err
			}
			in := v.Info()
			if asJSON {
				err = printJSON(e.stdout, in)
			} else {
				err = in.WriteText(e.stdout)
			}
			return closeDev(dev, err)
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "IMAGE's format (default probed)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newLUKSAddKeyCmd(e *env) *cobra.Command {
	var (
		kf               pbkdfFlags
		keyFile, newFile string
		format           string
		slot             int
	)
	cmd := &cobra.Command{
		Use:   "add-key IMAGE",
		Short: "Add a passphrase in a new keyslot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "-" && newFile == "-" {
				return errors.New("--key-file and --new-key-file cannot both be stdin")
			}
			dev, v, err := openLUKSImage(cmd.Context(), args[0], format, false)
			if err != nil {
				return err
			}
			pass, np, err := readOldAndNew(e, keyFile, newFile, "Enter any existing passphrase: ")
			if err != nil {
				return closeDev(dev, err)
			}
			defer clear(pass)
			defer clear(np)
			opt := stack.KeyslotOptions{PBKDF: kf.options()}
			if cmd.Flags().Changed("key-slot") {
				opt.Keyslot = &slot
			}
			n, err := v.AddKey(pass, np, opt)
			if err != nil {
				return closeDev(dev, fmt.Errorf("%s: %w", args[0], err))
			}
			fmt.Fprintf(e.stdout, "added keyslot %d\n", n)
			return closeDev(dev, nil)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&keyFile, "key-file", "", "read an existing passphrase from FILE (- for stdin)")
	fl.StringVar(&newFile, "new-key-file", "", "read the new passphrase from FILE (- for stdin)")
	fl.IntVar(&slot, "key-slot", 0, "use this keyslot (default the first free)")
	fl.StringVar(&format, "format", "", "IMAGE's format (default probed)")
	kf.add(cmd)
	return cmd
}

func newLUKSRemoveKeyCmd(e *env) *cobra.Command {
	var keyFile, format string
	cmd := &cobra.Command{
		Use:   "remove-key IMAGE",
		Short: "Remove the keyslot a passphrase opens",
		Long: "remove-key removes the keyslot the passphrase opens and overwrites its key\n" +
			"material. It refuses to remove the last keyslot (the data would be lost).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dev, v, err := openLUKSImage(cmd.Context(), args[0], format, false)
			if err != nil {
				return err
			}
			pass, err := readPassphrase(e, keyFile, "Enter the passphrase to remove: ", false)
			if err != nil {
				return closeDev(dev, err)
			}
			defer clear(pass)
			n, err := v.RemoveKey(pass)
			if err != nil {
				return closeDev(dev, fmt.Errorf("%s: %w", args[0], err))
			}
			fmt.Fprintf(e.stdout, "removed keyslot %d\n", n)
			return closeDev(dev, nil)
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", "", "read the passphrase from FILE (- for stdin)")
	cmd.Flags().StringVar(&format, "format", "", "IMAGE's format (default probed)")
	return cmd
}

func newLUKSChangeKeyCmd(e *env) *cobra.Command {
	var (
		kf               pbkdfFlags
		keyFile, newFile string
		format           string
	)
	cmd := &cobra.Command{
		Use:   "change-key IMAGE",
		Short: "Change the passphrase of a keyslot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "-" && newFile == "-" {
				return errors.New("--key-file and --new-key-file cannot both be stdin")
			}
			dev, v, err := openLUKSImage(cmd.Context(), args[0], format, false)
			if err != nil {
				return err
			}
			pass, np, err := readOldAndNew(e, keyFile, newFile, "Enter the passphrase to change: ")
			if err != nil {
				return closeDev(dev, err)
			}
			defer clear(pass)
			defer clear(np)
			n, err := v.ChangeKey(pass, np, stack.KeyslotOptions{PBKDF: kf.options()})
			if err != nil {
				return closeDev(dev, fmt.Errorf("%s: %w", args[0], err))
			}
			fmt.Fprintf(e.stdout, "changed the passphrase of keyslot %d\n", n)
			return closeDev(dev, nil)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&keyFile, "key-file", "", "read the current passphrase from FILE (- for stdin)")
	fl.StringVar(&newFile, "new-key-file", "", "read the new passphrase from FILE (- for stdin)")
	fl.StringVar(&format, "format", "", "IMAGE's format (default probed)")
	kf.add(cmd)
	return cmd
}

// readPassphrase returns a passphrase: the whole of keyFile ("-" reads
// e.stdin), or what the user types at the terminal on e.stdin without echo,
// after prompt on e.stderr (twice when confirm is set). The caller wipes it
// (clear) when done. It never comes from the command line, and it is never
// logged.
func readPassphrase(e *env, keyFile, prompt string, confirm bool) ([]byte, error) {
	switch keyFile {
	case "":
	case "-":
		return readKey(e.stdin, "stdin")
	default:
		f, err := os.Open(keyFile)
		if err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		defer f.Close()
		return readKey(f, keyFile)
	}
	in, ok := e.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return nil, errors.New("no terminal to ask for the passphrase on: use --key-file FILE (- for stdin)")
	}
	ask := func(p string) ([]byte, error) {
		fmt.Fprint(e.stderr, p)
		b, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return nil, fmt.Errorf("read passphrase: %w", err)
		}
		return b, nil
	}
	p, err := ask(prompt)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, errors.New("empty passphrase")
	}
	if confirm {
		again, err := ask("Verify passphrase: ")
		defer clear(again)
		if err != nil || !bytes.Equal(p, again) {
			clear(p)
			if err == nil {
				err = errors.New("passphrases do not match")
			}
			return nil, err
		}
	}
	return p, nil
}

// readKey reads a whole key file, at most maxKeyFileSize bytes.
func readKey(r io.Reader, name string) ([]byte, error) {
	b, err := api.ReadWiped(io.LimitReader(r, maxKeyFileSize+1))
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("key file %s: %w", name, err)
	}
	if len(b) > maxKeyFileSize {
		clear(b)
		return nil, fmt.Errorf("key file %s is larger than %d bytes", name, maxKeyFileSize)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("key file %s is empty", name)
	}
	return b, nil
}

// readOldAndNew reads an existing passphrase (asked with prompt) and a new
// one (asked twice on a terminal); the caller clears both.
func readOldAndNew(e *env, keyFile, newFile, prompt string) (pass, np []byte, err error) {
	if pass, err = readPassphrase(e, keyFile, prompt, false); err != nil {
		return nil, nil, err
	}
	if np, err = readPassphrase(e, newFile, "Enter the new passphrase: ", true); err != nil {
		clear(pass)
		return nil, nil, err
	}
	return pass, np, nil
}
