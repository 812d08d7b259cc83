package relay

import (
	"time"

	"github.com/poolplane/poolplane/poolmgr"
)

// The hand-back: the one place a lease gives its connection back to the
// pool, ordered against Cut, which must not touch a connection the pool
// has again.

// release hands the connection back once.
func (l *Lease) release(reusable bool) {
	l.finish.Do(func() {
		// A cut that comes later leaves the connection alone; one that
		// came first may have left its past deadline on it, after a
		// reset cleared the deadlines.
		if !l.handOver() {
			reusable = false
		}
		l.up.AddBytes(l.bytesIn.Load(), l.bytesOut.Load())
		l.up.Release(reusable)
	})
}

// handOver marks the connection as the pool's again, for Cut, clearing a
// cut's deadline; false means the deadline could not be cleared.
func (l *Lease) handOver() bool {
	l.handMu.Lock()
	defer l.handMu.Unlock()
	l.handed = true
	if l.isCut() {
		return l.nc.SetDeadline(time.Time{}) == nil
	}
	return true
}

// discard closes the connection once, counted under reason.
func (l *Lease) discard(reason poolmgr.CloseReason) {
	l.finish.Do(func() {
		l.handOver()
		l.up.AddBytes(l.bytesIn.Load(), l.bytesOut.Load())
		l.up.Discard(reason)
	})
}
