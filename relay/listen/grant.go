package listen

import (
	"context"
	"time"

	"github.com/poolplane/poolplane/relay"
)

// A TLS listener's client holds a Grant for as long as its connection
// lasts: its Release runs when the connection ends, and when its Revoked
// ends the client is authorized again, with the certificate it presented.

// setGrant keeps g for the connection, and watches its revocation.
func (c *clientConn) setGrant(g Grant) {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	if c.release != nil {
		c.release() // the grant g replaces
	}
	c.release = g.Release
	c.stopRevoke = nil
	if c.gdone {
		c.releaseLocked()
		return
	}
	if g.Revoked != nil {
		c.stopRevoke = context.AfterFunc(g.Revoked, c.reauthorize)
	}
}

// reauthorize decides again whether the client may lease the pool, once
// its grant was revoked: a new grant replaces it, or the lease ends
// (relay.Revoked) and the connection with it.
func (c *clientConn) reauthorize() {
	c.gmu.Lock()
	done := c.gdone
	// What the revoked grant counted goes first: the client's connection
	// is counted again by the new grant.
	c.releaseLocked()
	c.gmu.Unlock()
	if done {
		return
	}
	g, err := c.h.cfg.Authorize(c.cert, c.l.pool)
	if err == nil {
		c.setGrant(g)
		return
	}
	c.h.logger.Info("pool listener: the client's grant was revoked", "pool", c.l.pool, "remote", c.raw.RemoteAddr().String(), "error", err)
	c.revoked.Store(true) // before the cut: a lease acquired meanwhile is cut as it starts
	if l := c.lease.Load(); l != nil {
		l.Cut(relay.Revoked)
	}
	_ = c.raw.SetDeadline(time.Unix(1, 0))
}

// endGrant releases the grant as the connection ends.
func (c *clientConn) endGrant() {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	c.gdone = true
	if c.stopRevoke != nil {
		c.stopRevoke()
		c.stopRevoke = nil
	}
	c.releaseLocked()
}

func (c *clientConn) releaseLocked() {
	if c.release != nil {
		c.release()
		c.release = nil
	}
}
