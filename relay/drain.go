package relay

import (
	"errors"
	"os"
	"time"

	"github.com/poolplane/poolplane/protocol"
)

// A client that half-closes a protocol pool's lease has sent its last
// request but may still read: a pool listener then lets the replies due
// reach it before the release, as the server would have (DrainReplies).

// DrainReplies waits, on a protocol pool's lease whose client sent its last
// bytes (it half-closed), until the replies due have reached the client,
// the reader stopped for another reason (an upstream error or EOF, a cut),
// or the pool's reset_timeout passed; Release follows (and its reset
// deals with replies still due, as for a client that left). A client that
// is gone rather than half-closed looks the same on the socket: the bound
// keeps it from holding the connection for a reply that may never come
// (BLPOP with no timeout). It returns at once for a lease whose reader
// has not started, or without a protocol. It belongs to the client side's
// goroutine, after its last Write.
func (l *Lease) DrainReplies() {
	if l.sess == nil || !l.readerGo.Load() || l.ended.Load() {
		return
	}
	l.drainedc = make(chan struct{})
	l.drainWait.Store(true)
	// Wake the reader to look: nothing may be due at all.
	if l.nc.SetReadDeadline(time.Unix(1, 0)) != nil {
		return
	}
	t := time.NewTimer(l.up.ResetTimeout())
	defer t.Stop()
	select {
	case <-l.drainedc:
	case <-l.stoppedc:
	case <-t.C:
	}
}

// drainedNow reports, on the reader's goroutine while DrainReplies waits,
// that no reply is due any more (the read ended with err, nil or a
// deadline; another error ends the lease as usual).
func (l *Lease) drainedNow(err error) bool {
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	if d, ok := l.sess.(protocol.Drainer); ok {
		return d.Drained()
	}
	return l.sess.State() != protocol.Outstanding
}
