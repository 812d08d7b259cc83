package listen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"
	"github.com/poolplane/poolplane/relay"
)

// maxLinger bounds what is read, and dropped, from a client after its
// lease ended, while waiting for it to close: closing a socket with unread
// bytes resets it, and the reset can overtake the last bytes sent (an
// error message) on their way to the client.
const maxLinger = 64 << 10

// clientConn is one accepted connection: the client side of its lease. Its
// goroutine (serve) reads the client and writes to the upstream through
// the relay; the relay's reader goroutine delivers upstream bytes to it as
// the lease's relay.Sink.
type clientConn struct {
	h   *Host
	l   *listener
	raw net.Conn // the accepted connection
	// nc is raw, or the TLS session on it; set before the relay starts,
	// and only by serve.
	nc net.Conn

	lease atomic.Pointer[relay.Lease] // set once acquired

	// ending: the host is ending the connection (shutdown).
	ending atomic.Bool
	// The grant of a TLS listener's client (grant.go); under gmu.
	gmu        sync.Mutex
	cert       *x509.Certificate
	release    func()
	stopRevoke func() bool
	gdone      bool // the connection ended: grants are released at once
	revoked    atomic.Bool

	upEOFOnce sync.Once
	upEOFc    chan struct{} // closed when the upstream half-closed (RAW)
	endOnce   sync.Once
	endedc    chan struct{} // closed when the lease ended from the upstream's side
}

var _ relay.Sink = (*clientConn)(nil)

// serve serves the connection to its end.
func (c *clientConn) serve() {
	defer func() {
		_ = c.nc.Close()
		c.endGrant()
		c.h.untrack(c)
		c.l.active.Add(-1)
		c.h.wg.Done()
	}()
	c.upEOFc = make(chan struct{})
	c.endedc = make(chan struct{})
	holder := "listener " + c.l.address + " from " + c.nc.RemoteAddr().String()
	p, perr := c.h.pool(c.l.pool)
	var handler protocol.Handler
	if perr == nil {
		handler = p.Protocol()
	}
	if c.l.tls.Load() {
		name, err := c.handshake(handler)
		if err != nil {
			return
		}
		holder = name + " via listener " + c.l.address
	}
	if perr != nil {
		c.refuse(nil, protocol.RefuseUnavailable, perr.Error())
		return
	}
	var opening []byte
	if o, ok := handler.(protocol.Opener); ok {
		_ = c.nc.SetDeadline(time.Now().Add(handshakeTimeout))
		read, done, err := o.Open(c.nc)
		if done || err != nil {
			if err != nil {
				c.h.logger.Debug("pool listener opening", "pool", c.l.pool, "remote", c.nc.RemoteAddr().String(), "error", err)
			}
			return
		}
		if err := c.nc.SetDeadline(time.Time{}); err != nil {
			return
		}
		opening = read
	}
	up, err := p.Acquire(c.h.stopCtx, holder)
	if err != nil {
		why := protocol.RefuseUnavailable
		if errors.Is(err, poolmgr.ErrExhausted) || errors.Is(err, poolmgr.ErrAcquireTimeout) {
			why = protocol.RefuseBusy
		}
		if c.h.stopCtx.Err() != nil {
			err = errors.New("poold is shutting down")
		}
		if len(opening) > 0 {
			// The refusal reads the opening from its start.
			c.nc = &replayConn{Conn: c.nc, r: io.MultiReader(bytes.NewReader(opening), c.nc)}
		}
		c.refuse(p.Protocol(), why, "pool "+c.l.pool+": "+err.Error())
		return
	}
	c.relay(up, opening)
}

// handshake runs a TLS listener's handshake and authorizes the client's
// certificate for the pool; a client that may not lease it is told so.
func (c *clientConn) handshake(handler protocol.Handler) (holder string, err error) {
	tc := tls.Server(c.nc, c.h.cfg.TLS)
	ctx, cancel := context.WithTimeout(c.h.stopCtx, handshakeTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.h.logger.Debug("pool listener handshake", "pool", c.l.pool, "remote", c.nc.RemoteAddr().String(), "error", err)
		return "", err
	}
	c.nc = tc
	certs := tc.ConnectionState().PeerCertificates
	var g Grant
	if len(certs) == 0 {
		err = errors.New("no client certificate")
	} else {
		g, err = c.h.cfg.Authorize(certs[0], c.l.pool)
	}
	if err != nil {
		c.refuse(handler, protocol.RefuseDenied, err.Error())
		return "", err
	}
	c.cert = certs[0]
	c.setGrant(g)
	return g.Holder, nil
}

// relay relays the lease of up until the client or the upstream ends it.
// A pool with a protocol decides reuse itself: the client's close
// releases the lease, and the pool resets the connection. On a RAW pool
// the close is a half-close passed on to the upstream (a reply may still
// be on its way), and the connection is not reused.
func (c *clientConn) relay(up *poolmgr.Conn, opening []byte) {
	decides := up.Protocol() != nil
	c.h.wg.Add(1) // the relay's reader goroutine
	// The reset runs on this goroutine once the client is gone, and the
	// reader on one of the host's.
	opts := relay.Options{ReadSize: relay.SmallRead, HalfClose: !decides, Done: c.h.wg.Done,
		ResetInline: true, Go: c.h.spawn}
	if !decides {
		opts.Splice = c.nc // a RAW pool: upstream bytes go to the client in the kernel where they can
	}
	l := relay.New(up, c, opts)
	c.lease.Store(l)
	switch {
	case c.h.stopCtx.Err() != nil:
		l.Cut(relay.Shutdown) // EndLeases ran while acquiring
	case c.revoked.Load():
		l.Cut(relay.Revoked) // the grant was revoked while acquiring
	}
	l.Start()
	if len(opening) > 0 {
		l.Write(net.Buffers{opening})
	}
	if !decides {
		// A RAW pool: client bytes go to the upstream in the kernel where
		// they can, until the client's EOF.
		if ok, err := l.ReadFrom(c.nc); ok {
			c.clientDone(l, decides, err)
			return
		}
	}
	var r relay.Reader
	r.Reset(c.nc, relay.SmallRead)
	for {
		bp, n, err := r.Read()
		if n > 0 {
			l.Write(net.Buffers{(*bp)[relay.Headroom : relay.Headroom+n]})
			relay.Buffers.Put(bp)
			if err == nil && l.ClientEnded() {
				err = io.EOF // its goodbye: what follows is only its close
			}
		}
		if err != nil {
			c.clientDone(l, decides, err)
			return
		}
	}
}

// clientDone ends the lease once reading the client ended with err: the
// client's EOF (io.EOF, or nil after ReadFrom) releases it, or on a RAW
// pool half-closes the upstream and releases it once the upstream ends
// too; anything else abandons it.
func (c *clientConn) clientDone(l *relay.Lease, decides bool, err error) {
	if err != nil && !errors.Is(err, io.EOF) || c.remoteEnded() {
		l.Abandon()
		return
	}
	if decides {
		if !l.ClientEnded() {
			// A half-close: the replies due still reach the client, as
			// from the server itself, before the lease goes.
			l.DrainReplies()
		}
		_ = l.Release(true)
		return
	}
	select {
	case <-c.upEOFc:
	default:
		l.CloseWrite()
		select {
		case <-c.upEOFc:
		case <-c.endedc:
		}
	}
	_ = l.Release(false)
}

func (c *clientConn) remoteEnded() bool {
	select {
	case <-c.endedc:
		return true
	default:
		return false
	}
}

// end ends the connection's lease for a shutdown: the upstream connection
// is closed, and blocked reads and writes of the client return.
func (c *clientConn) end() {
	c.ending.Store(true) // before the cut: Ended must not give the client more time
	if l := c.lease.Load(); l != nil {
		l.Cut(relay.Shutdown)
	}
	_ = c.raw.SetDeadline(time.Unix(1, 0))
}

// refuse tells a client the pool turned away why, in its protocol where it
// has one, and lets it go.
func (c *clientConn) refuse(handler protocol.Handler, why protocol.Refusal, msg string) {
	c.l.refused.Add(1)
	_ = c.nc.SetDeadline(time.Now().Add(c.h.cfg.RefuseTimeout))
	if r, ok := handler.(protocol.Refuser); ok {
		if err := r.Refuse(c.nc, why, msg); err != nil {
			return
		}
	}
	linger(c.nc)
}

// replayConn is a connection whose first bytes were read already: Read
// reads them again, then the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite half-closes the connection, when it can.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// linger half-closes nc and reads until the client closes (or nc's
// deadline), so the last bytes sent reach it before the close.
func linger(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	var buf [512]byte
	for n := 0; n < maxLinger; {
		k, err := nc.Read(buf[:])
		n += k
		if err != nil {
			return
		}
	}
}

// Data writes upstream bytes to the client; a client that reads slowly
// slows the upstream reads down.
func (c *clientConn) Data(bp *[]byte, n int, _ int64) error {
	_, err := c.nc.Write((*bp)[relay.Headroom : relay.Headroom+n])
	relay.Buffers.Put(bp)
	return err
}

// Progress does nothing: a socket client learns of progress from TCP.
func (c *clientConn) Progress(int64) error { return nil }

// CloseWrite passes the upstream's half-close on to the client.
func (c *clientConn) CloseWrite() error {
	c.upEOFOnce.Do(func() { close(c.upEOFc) })
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Ended ends the client's connection when the lease ended from the
// upstream's side (or was cut): the client reads what was sent, then its
// EOF; serve goes on reading until the client closes, within the refuse
// timeout.
func (c *clientConn) Ended(e relay.End) error {
	if e.Reason == relay.Released {
		// The client's own close: the connection closes now, before a
		// protocol pool's reset (serve's own Close is then a no-op).
		_ = c.nc.Close()
		return nil
	}
	c.endOnce.Do(func() { close(c.endedc) })
	if c.ending.Load() {
		// The host is ending every lease: no time to linger.
		return c.raw.SetDeadline(time.Unix(1, 0))
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	return c.nc.SetReadDeadline(time.Now().Add(c.h.cfg.RefuseTimeout))
}
