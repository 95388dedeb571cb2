package ublk

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// completion is a handled request: its tag and the result to commit.
type completion struct {
	tag    uint16
	result int32
}

// pool runs a queue's requests on a fixed set of goroutines, so that one
// slow request does not hold up the others, and hands the results back to
// the queue's thread, which alone may commit them: each result goes on a
// list, and an eventfd the queue polls through its ring wakes it.
//
// submit and completed are called by the queue's thread only; close waits
// for the workers.
type pool struct {
	handle func(tag uint16) int32
	work   chan uint16
	wg     sync.WaitGroup
	doneFD int // eventfd: readable when done is not empty

	mu   sync.Mutex
	done []completion

	closeOnce sync.Once
}

// newPool starts workers goroutines for a queue of depth tags.
func newPool(workers, depth int, handle func(uint16) int32) (*pool, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	p := &pool{handle: handle, work: make(chan uint16, depth), doneFD: fd}
	for range workers {
		p.wg.Go(p.run)
	}
	return p, nil
}

func (p *pool) run() {
	for tag := range p.work {
		c := completion{tag: tag, result: p.handle(tag)}
		p.mu.Lock()
		p.done = append(p.done, c)
		p.mu.Unlock()
		// The counter cannot overflow: the queue drains it on every wakeup.
		unix.Write(p.doneFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// submit queues tag for a worker. It never blocks: the channel holds a
// whole queue's depth, and a tag is in at most once.
func (p *pool) submit(tag uint16) { p.work <- tag }

// completed resets the eventfd and takes the results so far. A result
// added after the reset sets the eventfd again, so none is missed.
func (p *pool) completed() []completion {
	var b [8]byte
	unix.Read(p.doneFD, b[:]) // EAGAIN when already reset: fine
	p.mu.Lock()
	defer p.mu.Unlock()
	done := p.done
	p.done = nil
	return done
}

// close stops the workers after the requests they hold and releases the
// eventfd. Results not yet taken are dropped: the queue is going away.
func (p *pool) close() {
	p.closeOnce.Do(func() {
		close(p.work)
		p.wg.Wait()
		unix.Close(p.doneFD)
	})
}
