// Package imageops holds the operations that work on whole images and
// their backing chains, as qemu-img's subcommands of the same names do:
// commit (merge an overlay into a layer below it), rebase (move an overlay
// onto another backing file), compare (two images of any formats), measure
// (the size a conversion needs) and dd (copy a range). Each works
// on Devices the caller opened (internal/stack opens them by name) and
// reads the layers' allocation through image.Layer, so it copies exactly
// what qemu-img would.
package imageops
