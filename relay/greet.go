package relay

import (
	"net"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"
)

// A protocol's greeter (protocol.Greeter) answers the client's opening
// before anything is relayed; the reader starts once it is done.

// greet hands client bytes to the protocol's greeter until the opening is
// done, sends its replies to the client, and returns the bytes that follow
// the opening, for the upstream. Once done it starts the reader.
func (l *Lease) greet(bufs net.Buffers) net.Buffers {
	for i, b := range bufs {
		if l.refused {
			l.bytesOut.Add(int64(len(b))) // taken, and dropped: the client was refused
			continue
		}
		reply, took, done, err := l.greeter.Greet(l.nc, b)
		// Bytes the pool answers itself count as delivered: the client's
		// release waits for every byte it wrote to be taken.
		l.bytesOut.Add(int64(took))
		if len(reply) > 0 && l.toClient(reply) != nil {
			l.refused = true // the client side is gone
			return nil
		}
		if err != nil {
			l.refused = true
			l.bytesOut.Add(int64(len(b) - took))
			l.endRefused()
			continue
		}
		if done {
			l.greeter = nil
			l.startReader()
			rest := bufs[i:]
			rest[0] = b[took:]
			return rest
		}
	}
	return nil
}

// toClient sends bytes the pool answers itself to the client side.
func (l *Lease) toClient(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), l.opts.ReadSize)
		bp := Buffers.Get(Headroom + n)
		copy((*bp)[Headroom:], b[:n])
		if err := l.sink.Data(bp, n, l.bytesOut.Load()); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// endRefused ends the lease of a client the greeter refused, as a server
// closes the connection after its error message (or after a cancel
// request): the client side gets UpstreamEOF; the connection goes back as
// the greeter left it.
func (l *Lease) endRefused() {
	if !l.ended.CompareAndSwap(false, true) {
		return
	}
	reused := l.endGreeting()
	_ = l.sink.Ended(End{Reason: UpstreamEOF, Reused: reused, Written: l.bytesOut.Load()})
}

// endGreeting ends a lease whose reader never started (its client left
// during the opening, or was refused): the connection goes back as the
// greeter left it, or is closed.
func (l *Lease) endGreeting() (reused bool) {
	l.greetOnce.Do(func() { reused = l.endGreetingOnce() })
	return reused
}

func (l *Lease) endGreetingOnce() (reused bool) {
	l.noReader()
	if l.opts.Done != nil {
		defer l.opts.Done() // in place of the reader that never ran
	}
	cut := l.isCut() && Reason(l.cutReason.Load()) != ReasonNone
	if l.sess.State() == protocol.Idle && !l.broken && !cut {
		select {
		case <-l.up.Done():
		default:
			if err := l.nc.SetDeadline(time.Time{}); err == nil {
				l.release(true)
				return true
			}
		}
	}
	l.discard(poolmgr.CloseNotResettable)
	return false
}
