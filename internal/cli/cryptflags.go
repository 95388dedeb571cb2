package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"vdisk/internal/stack"
)

// cryptFlags are the flags that unlock encrypted (LUKS) images.
type cryptFlags struct {
	keyFile       string
	noDecrypt     bool
	allowDiscards bool
}

func (c *cryptFlags) add(f *pflag.FlagSet) {
	f.StringVar(&c.keyFile, "key-file", "", "passphrase of an encrypted image, from this file (- for stdin); default: ask on the terminal")
	f.BoolVar(&c.noDecrypt, "no-decrypt", false, "serve an encrypted image as stored (ciphertext and LUKS header)")
	f.BoolVar(&c.allowDiscards, "allow-discards", false, "pass trims through the encryption (reveals which blocks are unused)")
}

// passphrase returns the function that asks for an image's passphrase.
func (c *cryptFlags) passphrase(e *env) stack.Passphrase {
	return func(name string) ([]byte, error) {
		return readPassphrase(e, c.keyFile, fmt.Sprintf("Passphrase for %s: ", name), false)
	}
}
