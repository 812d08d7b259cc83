package relay

import (
	"errors"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"
)

// A protocol pool's connection is reset at release for the next lease:
// on the reader's goroutine once the client side has its end, or with
// Options.ResetInline on the client side's own.

// resettable reports, once the reader stopped, whether a protocol pool's
// connection may be reset for another lease: nothing failed or was cut
// short on it, and the session can be brought back.
func (l *Lease) resettable() bool {
	if l.sess == nil || l.broken || l.upEOF || l.readFailed || l.upShut {
		return false
	}
	if l.isCut() && Reason(l.cutReason.Load()) != ReasonNone {
		return false
	}
	select {
	case <-l.up.Done():
		return false
	default:
	}
	return true
}

// resetUpstream runs the protocol's reset within the pool's reset_timeout
// and hands the connection back: to the idle set when it came back clean,
// closed otherwise. It runs on the reader goroutine after the client side
// has its end, so no client waits for it.
func (l *Lease) resetUpstream() {
	err := l.nc.SetDeadline(time.Now().Add(l.up.ResetTimeout()))
	if err == nil {
		err = l.sess.Reset(l.nc)
	}
	if err == nil {
		err = l.nc.SetDeadline(time.Time{})
	}
	switch {
	case err == nil:
		l.release(true)
	case errors.Is(err, protocol.ErrOutstanding):
		l.discard(poolmgr.CloseOutstanding)
	default:
		l.discard(poolmgr.CloseResetFailed)
	}
}

// tellReader hands the reset decision to the reader goroutine, or with
// Options.ResetInline keeps it for resetInline.
func (l *Lease) tellReader(reset bool) {
	if l.opts.ResetInline {
		l.resetNow = reset
		return
	}
	l.reset <- reset
}

// resetInline runs the reset decided for Options.ResetInline.
func (l *Lease) resetInline() {
	if l.resetNow {
		l.resetNow = false
		l.resetUpstream()
	}
}
