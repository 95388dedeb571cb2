// Command ioflusher checks fuseexport.SetIOFlusher in a binary built
// without cgo: after the call, every thread (old ones, and ones created
// later) carries the mark. It prints "ok" or the first problem and exits 1.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"vdisk/internal/fuseexport"
)

// threads is how many goroutines pin their own OS thread and check it.
const threads = 16

func main() {
	if err := fuseexport.SetIOFlusher(); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var wg sync.WaitGroup
	errs := make(chan error, threads)
	start := make(chan struct{})
	for range threads {
		wg.Go(func() {
			// Each pinned goroutine owns a thread until it exits, so
			// the runtime must create threads after the call.
			runtime.LockOSThread()
			<-start
			on, err := fuseexport.IsIOFlusher()
			if err == nil && !on {
				err = fmt.Errorf("a thread lacks the PR_SET_IO_FLUSHER mark")
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	}
	fmt.Println("ok")
}
