package relay

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolplane/poolplane/protocol"
)

// A client that half-closes a protocol pool's lease has sent its last
// request but may still read: the replies due reach it before the release,
// as they would from the server itself, and the connection is reset for
// another lease rather than half-closed. A pool listener waits for them
// (DrainReplies); a lease stream's client is told once they are through
// (HalfCloseDrain).

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

// HalfCloseDrain is CloseWrite for a protocol pool's lease whose client side
// takes half-closes (Options.HalfClose): the upstream is not half-closed.
// The reader relays the replies due, then sends Sink.CloseWrite and stops
// reading; the Release that follows resets the connection for another lease.
// It does not wait: the client side goes on reading its frames, so its
// release, or its end, stops a reader still waiting for a reply that may
// never come (BLPOP with no timeout), and the pool's reset_timeout bounds
// the wait: a client killed mid-request looks the same on the socket as
// one that half-closed. Replies still due by then get the half-close sent
// to the upstream after all, as on a RAW pool: the reader relays what
// follows, and the connection is not reused. It reports false, having done
// nothing, for a lease without a protocol or HalfClose, whose reader has
// not started, or that ended: the caller then calls CloseWrite. It belongs
// to the client side's goroutine, after its last Write.
func (l *Lease) HalfCloseDrain() bool {
	if l.sess == nil || !l.opts.HalfClose || !l.readerGo.Load() || l.Ended() {
		return false
	}
	l.drainedc = make(chan struct{})
	l.drainTell = true
	l.drainWait.Store(true)
	// Wake the reader to look: nothing may be due at all. If the deadline
	// cannot be set the connection is closed, and the reader ends the
	// lease.
	if l.nc.SetReadDeadline(time.Unix(1, 0)) != nil {
		_ = l.nc.Close()
		return true
	}
	l.drainLate.start(l.up.ResetTimeout(), func() { _ = l.nc.SetReadDeadline(time.Unix(1, 0)) })
	return true
}

// halfCloseUpstream half-closes the upstream for writing, on the reader's
// goroutine: the connection is not reused (upShut).
func (l *Lease) halfCloseUpstream() {
	l.upShut = true
	if cw, ok := l.nc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		_ = l.nc.Close()
	}
}

// drainTimer wakes the reader once a drain has waited too long. Its stop,
// on the reader's goroutine before the connection can serve another lease,
// guarantees that the wake-up (a read deadline on the connection) never
// reaches a later lease.
type drainTimer struct {
	mu    sync.Mutex
	t     *time.Timer
	done  bool // stopped: the wake-up no longer runs
	fires atomic.Bool
}

// start arms the timer to call wake after d, unless stopped first.
func (dt *drainTimer) start(d time.Duration, wake func()) {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if dt.done {
		return
	}
	dt.t = time.AfterFunc(d, func() {
		dt.mu.Lock()
		defer dt.mu.Unlock()
		if !dt.done {
			dt.fires.Store(true)
			wake()
		}
	})
}

// fired reports whether the timer went off.
func (dt *drainTimer) fired() bool { return dt.fires.Load() }

// stop disarms the timer; once it returns, wake does not run any more.
func (dt *drainTimer) stop() {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	dt.done = true
	if dt.t != nil {
		dt.t.Stop()
	}
}
