// Command hello is built by vmtest's own test: a static binary for the share.
package main

import "fmt"

func main() { fmt.Println("hello from the guest") }
