package engine

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/poolplane/poolplane/protocol"
)

// connState is where a connection is, guarded by the pool's mutex.
type connState uint8

const (
	connIdle     connState = iota // in Pool.idle
	connLeased                    // in Pool.leased
	connChecking                  // held by the pool outside both sets (peek, probe, hand-over)
	connClosed                    // discarded; its net.Conn is closed or about to be
)

// tlsDrainWait bounds the read that lets crypto/tls consume post-handshake
// records (TLS 1.3 session tickets) found pending on an idle socket.
const tlsDrainWait = time.Millisecond

// Conn is a leased connection. The pool keeps one Conn per upstream
// connection and hands the same *Conn to each of its leases, so an acquire
// allocates nothing: a holder must not use a Conn after releasing it.
//
// NetConn, Info, Done, AddBytes and Release are safe for concurrent use.
type Conn struct {
	pool    *Pool
	nc      net.Conn
	tc      *tls.Conn       // nc as a TLS client, or nil
	raw     syscall.RawConn // the socket under nc, or nil (then nothing is peeked)
	addr    string          // the resolved "ip:port" dialed
	host    string          // the endpoint's host
	gen     uint64
	created time.Time
	jitter  float64       // in [0,1): share of lifetime_jitter cut from this connection's life
	done    chan struct{} // closed when the pool closes the connection
	handler protocol.Handler
	proto   Protocol // the protocol handler follows (ProtocolRaw: handler is nil)
	pstate  any      // what handler's Setup returned for the connection's sessions
	// closeReason is why the pool closed it; set before done closes.
	closeReason CloseReason

	// peekFn is c.peekSocket, bound once so a peek allocates nothing.
	// peekN and peekErrno are its results; only the connection's current
	// owner peeks.
	peekFn    func(fd uintptr) bool
	peekBuf   [1]byte
	peekN     int
	peekErrno syscall.Errno

	// active is true while leased; the first Release clears it, making
	// Release idempotent without the lock.
	active atomic.Bool

	// Guarded by pool.mu.
	state     connState
	expiresAt time.Time   // cache of expiryLocked
	expVer    uint64      // the Pool.cfgVer expiresAt was computed for
	retire    CloseReason // >= 0: close at the next release for this reason (DNS)
	idleSince time.Time   // when it last went idle; zero when handed over directly
	lastCheck time.Time   // last health check (or creation)
	leaseIdx  int
	leaseSeq  uint64
	uses      int
	// Set when leased, read by the holder.
	holder   string
	since    time.Time
	reused   bool
	idleTime time.Duration
	waitTime time.Duration
	age      time.Duration
}

var _ net.Conn = (*tls.Conn)(nil)

func (p *Pool) newConn(nc net.Conn, a upstreamAddr, gen uint64, now time.Time, jitter float64) *Conn {
	c := &Conn{
		pool:      p,
		nc:        nc,
		addr:      a.addr,
		host:      a.host,
		gen:       gen,
		created:   now,
		jitter:    jitter,
		done:      make(chan struct{}),
		retire:    -1,
		leaseIdx:  -1,
		lastCheck: now,
		state:     connChecking,
	}
	under := nc
	switch tc := nc.(type) {
	case *tls.Conn:
		c.tc = tc
	case *preReadConn:
		c.tc = tc.Conn
	}
	if c.tc != nil {
		under = c.tc.NetConn()
	}
	if sc, ok := under.(syscall.Conn); ok && peekSupported {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.peekFn = c.peekSocket
		}
	}
	return c
}

// expiredLocked reports whether c has reached its (jittered) max lifetime.
func (p *Pool) expiredLocked(c *Conn, now time.Time) bool {
	return !now.Before(p.expiryLocked(c))
}

// expiryLocked returns when c reaches its max lifetime, cached until the
// configuration changes.
func (p *Pool) expiryLocked(c *Conn) time.Time {
	if c.expVer != p.cfgVer || c.expiresAt.IsZero() {
		lc := &p.cfg.Lifecycle
		c.expiresAt = c.created.Add(lc.MaxLifetime - time.Duration(c.jitter*float64(lc.LifetimeJitter)))
		c.expVer = p.cfgVer
	}
	return c.expiresAt
}

func (c *Conn) closeNet() {
	_ = c.nc.Close() // the connection is being discarded; its close error tells nothing
}

// alive reports whether the connection, owned by the caller and not in use,
// is still usable: no EOF, no reset, no unread bytes. It never blocks on the
// network (a TLS connection with pending records waits at most tlsDrainWait).
func (c *Conn) alive() bool {
	if c.raw == nil {
		return true
	}
	if pc, ok := c.nc.(*preReadConn); ok && len(pc.pending) > 0 {
		return false // stray bytes, read while dialing
	}
	if !c.peek() {
		return false
	}
	if c.peekN <= 0 {
		return true
	}
	if c.tc == nil {
		return false // stray bytes
	}
	// TLS 1.3 servers send session tickets after the handshake; they wait
	// on the socket until the first Read. Let crypto/tls consume them: any
	// application data means the connection is not clean.
	// Socket deadlines are wall-clock time, so time.Now here, not Env.Now.
	if err := c.tc.SetReadDeadline(time.Now().Add(tlsDrainWait)); err != nil {
		return false
	}
	n, err := c.tc.Read(c.peekBuf[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	if c.tc.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	return c.peek() && c.peekN <= 0
}

// peek runs one non-blocking MSG_PEEK read on the socket. It reports false
// for EOF or an error other than "would block"; peekN > 0 means unread bytes.
func (c *Conn) peek() bool {
	c.peekN, c.peekErrno = 0, 0
	if err := c.raw.Read(c.peekFn); err != nil {
		return false
	}
	switch {
	case c.peekErrno == syscall.EAGAIN || c.peekErrno == syscall.EWOULDBLOCK:
		c.peekN = 0
		return true
	case c.peekErrno != 0:
		return false
	case c.peekN == 0:
		return false // EOF
	}
	return true
}

// NetConn returns the upstream connection (a *tls.Conn for TLS pools). The
// holder may read, write and set deadlines on it during the lease, and must
// have stopped (no Read or Write in progress) before Release.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Info describes the acquire that granted the current lease.
func (c *Conn) Info() AcquireInfo {
	return AcquireInfo{
		LeaseID:      c.pool.leaseID(c.leaseSeq),
		Reused:       c.reused,
		IdleTime:     c.idleTime,
		ConnAge:      c.age,
		WaitTime:     c.waitTime,
		UpstreamAddr: c.addr,
		Generation:   c.gen,
		Protocol:     c.proto,
	}
}

// Done is closed when the pool closes the connection under the lease:
// Revoke, max_lease_duration, or the pool's Close.
func (c *Conn) Done() <-chan struct{} { return c.done }

// CloseReason says why the pool closed the connection under the lease:
// CloseRevoked, CloseMaxLeaseDuration, CloseClosed (the pool's Close) and
// so on. Valid once Done is closed.
func (c *Conn) CloseReason() CloseReason {
	select {
	case <-c.done:
		return c.closeReason
	default:
		return -1
	}
}

// AddBytes counts relayed bytes (in: from the upstream; out: to it) in the
// pool's stats. It uses atomics and takes no lock.
func (c *Conn) AddBytes(in, out int64) {
	if in > 0 {
		c.pool.bytesIn.Add(uint64(in))
	}
	if out > 0 {
		c.pool.bytesOut.Add(uint64(out))
	}
}

// ResetTimeout is the pool's reset_timeout: how long a protocol pool's
// reset at release may take.
func (c *Conn) ResetTimeout() time.Duration {
	return time.Duration(c.pool.resetTimeout.Load())
}

// Protocol is the pool's protocol as it was when the connection was set up
// (nil for RAW): a generation bump retires connections of another.
func (c *Conn) Protocol() protocol.Handler { return c.handler }

// ProtocolState is what the protocol's Setup returned for the connection
// (a PostgreSQL backend's parameters and key), for its sessions.
func (c *Conn) ProtocolState() any { return c.pstate }

// Release ends the lease. The connection goes back to the idle set (or to
// the next waiter) only if reusable is true, no upstream bytes are pending
// unread, it is within its lifetime, its generation is current, the pool is
// active, reuses connections and is within its limits; otherwise it is
// closed. Release is idempotent within a lease, and does nothing after the
// pool closed the connection (Revoke, max_lease_duration, Close).
func (c *Conn) Release(reusable bool) {
	if !c.active.CompareAndSwap(true, false) {
		return
	}
	c.release(reusable && (c.raw == nil || c.alive()), CloseDirty)
}

// Discard ends the lease and closes the connection, counted under reason
// (a protocol pool's failed reset, for example). Like Release, it is
// idempotent within a lease.
func (c *Conn) Discard(reason CloseReason) {
	if !c.active.CompareAndSwap(true, false) {
		return
	}
	c.release(false, reason)
}

func (c *Conn) release(reusable bool, dirtyReason CloseReason) {
	dirty := !reusable
	p := c.pool
	p.mu.Lock()
	if c.state != connLeased {
		p.mu.Unlock() // closed by the pool meanwhile
		return
	}
	now := p.env.Now()
	p.st.holdTime.observe(now.Sub(c.since))
	p.unleaseLocked(c)
	reason, bad := dirtyReason, dirty
	if !bad && p.cfg.Reuse == SingleUse {
		reason, bad = CloseSingleUse, true
	}
	if !bad {
		reason, bad = p.putLocked(c, now)
	} else {
		p.notifyLocked()
	}
	if !bad {
		p.mu.Unlock()
		return
	}
	p.discardLocked(c, reason)
	p.mu.Unlock()
	p.closeConn(c)
}
