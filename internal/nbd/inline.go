package nbd

import (
	"sync/atomic"
	"time"

	"vdisk/internal/nbd/wire"
)

// Inline execution. Handing a request to another goroutine costs more
// than a read or write that the page cache answers in a microsecond or
// two, so while the device answers quickly the request reader runs small
// READs and WRITEs itself and only hands off the rest. The decision
// follows a moving average of how long the Device took for READs and
// WRITEs (the device call alone, not the reply): one slow
// operation (a cache miss, a remote backend) turns inline execution off
// until fast operations bring the average down again. Flush, trim, zero,
// cache and block status always run on their own goroutine.
const (
	// inlineMaxLatency is the average operation time below which the
	// reader runs operations itself.
	inlineMaxLatency = 20 * time.Microsecond
	// inlineMaxLength is the largest READ or WRITE run inline.
	inlineMaxLength = 64 << 10
	// latencyShift sets the moving average's weight: 1/8 per sample.
	latencyShift = 3
)

// latency is a moving average of operation times, updated by every worker.
type latency struct{ ns atomic.Int64 }

func (l *latency) observe(d time.Duration) {
	old := l.ns.Load()
	l.ns.Store(old + (int64(d)-old)>>latencyShift) // a lost update only skews a heuristic
}

func (l *latency) fast() bool { return l.ns.Load() < int64(inlineMaxLatency) }

// inline reports whether the reader should run req itself.
func (c *conn) inline(req wire.Request) bool {
	return !c.srv.noInline && (req.Type == wire.CmdRead || req.Type == wire.CmdWrite) && req.Length <= inlineMaxLength && c.lat.fast()
}
