package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// LeaseInfo describes a leased connection, like net/http's GotConnInfo.
type LeaseInfo struct {
	// LeaseID is "pools/{pool}/leases/{lease}", for ListLeases and
	// RevokeLease.
	LeaseID string
	// UpstreamAddr is the upstream's "ip:port".
	UpstreamAddr string
	// Reused is true when the connection served an earlier lease.
	Reused bool
	// IdleTime is how long the connection was idle before this lease (0 when
	// new).
	IdleTime time.Duration
	// ConnAge is how long ago the connection was opened.
	ConnAge time.Duration
	// WaitTime is how long the lease waited for the connection.
	WaitTime time.Duration
	// Generation is the connection's pool generation.
	Generation uint64
	// Protocol is the pool's protocol. PROTOCOL_UNSPECIFIED (from a server
	// that predates it) and PROTOCOL_RAW mean RAW: Close is the caller's
	// word that the exchange is complete. With any other protocol the pool
	// follows the exchange and decides at release whether the connection
	// is reused: Close releases it, and the pool reads outstanding replies
	// and resets the connection, or closes it.
	Protocol poolv1.Protocol
}

// PoolDecidesReuse reports whether the pool follows the protocol and decides
// at release whether the connection is reused (Protocol is neither RAW nor
// UNSPECIFIED): then Close is all a client side needs, even one that cannot
// know whether its exchange was complete.
func (i LeaseInfo) PoolDecidesReuse() bool {
	return i.Protocol != poolv1.Protocol_PROTOCOL_UNSPECIFIED && i.Protocol != poolv1.Protocol_PROTOCOL_RAW
}

// Conn is a leased upstream connection: a net.Conn whose bytes travel over a
// gRPC stream to the pool's connection. Read, Write, the deadline setters,
// Close, Discard and CloseWrite are safe for concurrent use; concurrent Reads
// (and concurrent Writes) are serialised.
//
// Close releases the lease. On a pool without protocol knowledge (RAW), Close
// is the caller's word that the exchange is complete: the pool keeps the
// connection for the next lease only when, besides, it is clean: no Read or
// Write returned an error (a deadline included), no Read was in progress at
// Close, no received data is unread, the upstream did not close its side,
// no CloseWrite. So a library that closes a connection after a timeout or a
// cancelled request (net/http, go-redis) never hands a late reply to the
// next lease. Discard releases the connection for closing. Either way the
// Conn must be closed, or the stream it rides on leaks until the Client is
// closed.
//
// Every byte Write accepted reaches the upstream, or Close (or Discard)
// returns an error matching ErrUndelivered.
type Conn struct {
	s            *stream
	info         LeaseInfo // set before grantedc closes, then immutable
	laddr, raddr Addr

	grantedc chan struct{} // closed when the lease is granted
	datac    chan chunk    // unbuffered: the receive goroutine hands a chunk to Read

	endc    chan struct{} // closed when the lease ended remotely, after its last chunk
	endOnce sync.Once
	rerr    error // what Read returns after endc closes; set before
	werr    error // what Write returns after endc closes; set before
	// endWritten is the ended frame's upstream_written, -1 when the lease
	// ended without one (the stream broke); set before endc closes.
	endWritten int64

	eofc    chan struct{} // closed when the upstream half-closed (close_write)
	eofOnce sync.Once
	reading atomic.Int32 // Reads waiting for data (here, it fills eofOnce's padding)

	// sent counts the bytes queued for the upstream (0-RTT and Write);
	// written is the most upstream_written the server reported.
	sent    atomic.Int64
	written atomic.Int64

	closedc   chan struct{} // closed by Close or Discard
	closeOnce sync.Once

	unread atomic.Int64 // bytes received and not read yet
	dirty  atomic.Bool  // an error or timeout makes the connection unfit for reuse

	rmu  sync.Mutex // serialises Read; protects rbuf and rbp
	rbuf []byte     // the unread rest of a chunk
	rbp  *[]byte    // the pooled buffer rbuf is in, back to payloadBufs once read

	wmu     sync.Mutex // serialises Write, CloseWrite and the release; protects wclosed
	wclosed bool       // CloseWrite was called

	rdl, wdl deadline

	// trace is the lease's release tracing, nil without a ReleaseTracer:
	// a Conn costs no more without one.
	trace *connTrace
}

// connTrace is what a Conn keeps for its ReleaseTracer.
type connTrace struct {
	tr        ReleaseTracer
	ctx       context.Context // what TraceLeaseStart returned
	grantedAt time.Time       // set before grantedc closes
	// parts counts the caller's release and the lease's end: the second
	// one traces the release.
	parts    atomic.Int32
	recvd    atomic.Int64 // bytes received from the upstream
	relClean bool         // the release asked for reuse; set before its parts add
	relErr   error        // what Close or Discard returned; set likewise
	// The ended frame's reason, message and reused flag, set before endc
	// closes (unspecified and false without one).
	endReason poolv1.EndReason
	endMsg    string
	endReused bool
}

var _ net.Conn = (*Conn)(nil)

func newConn(s *stream) *Conn {
	return &Conn{
		s:        s,
		grantedc: make(chan struct{}),
		datac:    make(chan chunk),
		endc:     make(chan struct{}),
		eofc:     make(chan struct{}),
		closedc:  make(chan struct{}),
		rdl:      makeDeadline(),
		wdl:      makeDeadline(),
		trace:    s.c.trace.forConn(),
	}
}

// traceRelease sets the context of the lease's release event; called by
// LeaseWith before it returns the Conn.
func (c *Conn) traceRelease(ctx context.Context) {
	if c.trace != nil {
		c.trace.ctx = ctx
	}
}

// traceEnd counts one of the two ends of a lease (the caller's release,
// the server's end) and traces the release after the second.
func (c *Conn) traceEnd() {
	t := c.trace
	if t == nil || t.parts.Add(1) != 2 {
		return
	}
	err := t.relErr
	if err == nil && t.endReason != poolv1.EndReason_END_REASON_RELEASED && t.endReason != poolv1.EndReason_END_REASON_UPSTREAM_EOF {
		err = c.rerr
	}
	ctx := t.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	t.tr.TraceRelease(ctx, TraceReleaseData{
		Pool:          c.s.pool,
		LeaseID:       c.info.LeaseID,
		UpstreamAddr:  c.info.UpstreamAddr,
		Reusable:      t.relClean,
		Reused:        t.endReused,
		EndReason:     t.endReason,
		EndMessage:    t.endMsg,
		BytesSent:     c.sent.Load(),
		BytesWritten:  max(c.endWritten, c.written.Load()),
		BytesReceived: t.recvd.Load(),
		Held:          time.Since(t.grantedAt),
		Err:           err,
	})
}

// grant records the granted frame; called once by the receive goroutine.
func (c *Conn) grant(g *poolv1.LeaseResponse_Granted) {
	c.info = LeaseInfo{
		LeaseID:      g.GetLeaseId(),
		UpstreamAddr: g.GetUpstreamAddr(),
		Reused:       g.GetReused(),
		IdleTime:     g.GetIdleTime().AsDuration(),
		ConnAge:      g.GetConnAge().AsDuration(),
		WaitTime:     g.GetWaitTime().AsDuration(),
		Generation:   g.GetGeneration(),
		Protocol:     g.GetProtocol(),
	}
	if c.trace != nil {
		c.trace.grantedAt = time.Now()
	}
	c.laddr = Addr{name: c.s.c.name + "/" + g.GetLeaseId()}
	c.raddr = Addr{name: g.GetUpstreamAddr()}
	if d := g.GetData(); len(d) > 0 {
		// The reply to a request that rode in the open: the first Read
		// finds it here, with no hand-off from the receive goroutine. No
		// Read runs before grantedc closes.
		c.confirm(g.GetUpstreamWritten())
		c.unread.Add(int64(len(d)))
		if c.trace != nil {
			c.trace.recvd.Add(int64(len(d)))
		}
		c.rbuf = d
	}
	close(c.grantedc)
}

// chunk is upstream bytes on their way to Read: b, in bp when it is a
// payloadBufs buffer (the codec's), which goes back once b is read.
type chunk struct {
	b  []byte
	bp *[]byte
}

// deliver hands one chunk to Read, waiting until a Read takes it (so gRPC's
// flow control holds back a slow reader), the Conn is closed (the chunk is
// dropped) or the stream dies.
func (c *Conn) deliver(ch chunk) {
	if len(ch.b) == 0 {
		putPayload(ch.bp)
		return
	}
	c.unread.Add(int64(len(ch.b)))
	if c.trace != nil {
		c.trace.recvd.Add(int64(len(ch.b)))
	}
	select {
	case c.datac <- ch:
	case <-c.closedc:
		putPayload(ch.bp)
	case <-c.s.ctx.Done():
		putPayload(ch.bp)
	}
}

// remoteEnd ends the lease from the server's side: Read returns rerr once
// the data before it is read, Write returns werr. e is the ended frame, or
// nil when the lease ended without one (the stream broke).
func (c *Conn) remoteEnd(rerr, werr error, e *poolv1.LeaseResponse_Ended) {
	c.endOnce.Do(func() {
		c.rerr, c.werr = rerr, werr
		c.endWritten = -1
		if e != nil {
			c.endWritten = int64(e.GetUpstreamWritten())
			if t := c.trace; t != nil {
				t.endReason, t.endMsg, t.endReused = e.GetReason(), e.GetMessage(), e.GetReused()
			}
		}
		c.dirty.Store(true)
		close(c.endc)
		c.traceEnd()
	})
}

// upstreamEOF records the upstream's half-close: Read returns io.EOF once
// the data before it is read; Write goes on. Called by the receive
// goroutine, after every chunk before it was taken by a Read.
func (c *Conn) upstreamEOF() {
	c.eofOnce.Do(func() {
		c.dirty.Store(true)
		close(c.eofc)
	})
}

// confirm records the server's report of client bytes written upstream.
func (c *Conn) confirm(w uint64) {
	for {
		old := c.written.Load()
		if int64(w) <= old || c.written.CompareAndSwap(old, int64(w)) {
			return
		}
	}
}

// Read reads upstream bytes into b. It returns io.EOF after the upstream
// closed its side and every byte before was read; an *EndedError after the
// server ended the lease for another reason (an upstream error, a revocation,
// max_lease_duration, shutdown); an *Error or ErrClientClosed when the stream
// broke; os.ErrDeadlineExceeded at the read deadline; net.ErrClosed after
// Close or Discard, which also unblock a pending Read. A chunk larger than b
// is kept for the next Read. Read does not allocate.
func (c *Conn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	switch {
	case isClosed(c.closedc):
		return 0, net.ErrClosed
	case isClosed(c.rdl.wait()):
		c.dirty.Store(true)
		return 0, os.ErrDeadlineExceeded
	}
	if len(c.rbuf) > 0 {
		return c.copyOut(b, c.rbuf), nil
	}
	if len(b) == 0 {
		return 0, nil
	}
	c.reading.Add(1)
	defer c.reading.Add(-1)
	select {
	case ch := <-c.datac:
		c.rbp = ch.bp
		return c.copyOut(b, ch.b), nil
	case <-c.eofc:
		return 0, io.EOF
	case <-c.endc:
		return 0, c.rerr
	case <-c.closedc:
		return 0, net.ErrClosed
	case <-c.rdl.wait():
		c.dirty.Store(true)
		return 0, os.ErrDeadlineExceeded
	}
}

// copyOut copies chunk into b and keeps the rest; a pooled buffer read to
// its end goes back. c.rmu is held.
func (c *Conn) copyOut(b, chunk []byte) int {
	n := copy(b, chunk)
	if n < len(chunk) {
		c.rbuf = chunk[n:]
	} else {
		c.rbuf = nil
		putPayload(c.rbp)
		c.rbp = nil
	}
	c.unread.Add(-int64(n))
	return n
}

// Write sends b to the upstream. It copies b into frames of at most 256 KiB
// (32 KiB to an older poold) and returns once every byte is queued for the
// stream, so b may be reused at once. It returns fewer bytes and an error
// on: os.ErrDeadlineExceeded at the write deadline; net.ErrClosed after
// Close or Discard (which unblock a pending Write); an error after
// CloseWrite; an *EndedError after the lease ended; an *Error or
// ErrClientClosed when the stream broke. Any error makes the connection
// unfit for reuse.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return 0, errWriteClosed
	}
	n := 0
	for {
		if err := c.writeErr(); err != nil {
			c.dirty.Store(true)
			return n, err
		}
		if n == len(b) {
			return n, nil
		}
		k := min(len(b)-n, c.s.maxData())
		if err := c.s.sendData(c, dataReq(b[n:n+k]), k); err != nil {
			c.dirty.Store(true)
			return n, err
		}
		c.sent.Add(int64(k))
		n += k
	}
}

// writeErr says why Write cannot go on, or nil.
func (c *Conn) writeErr() error {
	switch {
	case isClosed(c.closedc):
		return net.ErrClosed
	case isClosed(c.endc):
		return c.werr
	case isClosed(c.s.deadc):
		return c.s.deadErr()
	case isClosed(c.wdl.wait()):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// unconfirmedInline bounds the bytes the server has not confirmed behind a
// frame the caller's goroutine sends (sendsInline). gRPC's Send waits only
// while the stream's frames not yet written to the connection use up its
// write quota (64 KiB, each frame's bytes plus its framing, well under 64
// bytes): 256 unconfirmed bytes are at most 256 frames, under 17 KiB. The
// bound is not 0 because the server's count may lag a write it has just
// made: the upstream's reply can overtake it.
const unconfirmedInline = 256

// sendsInline reports whether a frame of c may be sent on the caller's
// goroutine: gRPC's Send cannot hold it on flow control.
func (c *Conn) sendsInline() bool { return c.sent.Load()-c.written.Load() <= unconfirmedInline }

// CloseWrite half-closes the connection: on a RAW pool the upstream sees
// EOF (TCP FIN), Read goes on until the upstream's own EOF, and the
// connection is not reused. On a pool with a protocol (a poold that
// follows the exchange, Info().PoolDecidesReuse) the upstream is not told:
// Read returns the replies due, then io.EOF, and Close lets the pool reset
// the connection for another lease. Later Writes fail. It returns
// net.ErrClosed after Close.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case isClosed(c.closedc):
		return net.ErrClosed
	case c.wclosed:
		return nil
	case isClosed(c.endc):
		return nil // the lease is over already
	}
	c.wclosed = true
	c.dirty.Store(true)
	c.s.enqueue(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_CloseWrite_{CloseWrite: &poolv1.LeaseRequest_CloseWrite{}}})
	return nil
}

// Close releases the lease, reusable when the connection is clean (see
// Conn). It unblocks pending Reads and Writes with net.ErrClosed. When the
// server has confirmed every byte Write accepted (a reply carries the
// confirmation), Close returns at once; otherwise it waits until the server
// has written them to the upstream, for as long as they make progress, and
// returns an error matching ErrUndelivered when the upstream took none for
// the release timeout (the connection is then closed) or the lease ended
// first. Later calls return nil.
func (c *Conn) Close() error {
	return c.release(true, false)
}

// CloseIdle is Close for a relay whose own reader waits on the Conn for
// bytes it does not expect, such as poolctl forward after its client
// closed at the end of a complete exchange: a Read in progress does not
// make the connection unfit for reuse. Everything else about Close holds.
func (c *Conn) CloseIdle() error {
	return c.release(true, true)
}

// Discard releases the lease and tells the pool to close the connection,
// for example after a protocol error the SDK cannot see. It is Close
// otherwise, and is idempotent with it: whichever runs first decides.
func (c *Conn) Discard() error {
	return c.release(false, false)
}

func (c *Conn) release(reusable, idleReader bool) error {
	var err error
	c.closeOnce.Do(func() {
		// A Read waiting for data at Close means the caller expected more:
		// the exchange is not complete (net/http closes a connection under
		// its reader when a request is cancelled).
		reading := c.reading.Load() > 0 && !idleReader
		close(c.closedc)
		c.rdl.set(time.Time{})
		c.wdl.set(time.Time{})
		c.wmu.Lock() // a pending Write has left; no data follows the release
		clean := reusable && !reading && !c.dirty.Load() && !c.wclosed && c.unread.Load() == 0
		c.s.release(c, clean, c.sendsInline())
		c.wmu.Unlock()
		if sent := c.sent.Load(); sent > c.written.Load() {
			err = c.awaitDelivery(sent)
		}
		if t := c.trace; t != nil {
			t.relClean, t.relErr = clean, err
			c.traceEnd()
		}
	})
	return err
}

// awaitDelivery waits for the lease's ended frame, which the server sends
// once every byte before the release was written to the upstream, while
// the stream makes progress; after the Client's releaseTimeout without any,
// it discards the stream, which closes the upstream connection at once.
func (c *Conn) awaitDelivery(sent int64) error {
	s := c.s
	timer := time.NewTimer(s.c.releaseTimeout)
	defer timer.Stop()
	last := s.progress.Load()
	for {
		select {
		case <-c.endc:
			if w := c.endWritten; w >= sent {
				return nil
			} else if w >= 0 {
				var ee *EndedError
				if errors.As(c.werr, &ee) {
					return fmt.Errorf("%w: the upstream took %d of %d bytes: %w", ErrUndelivered, w, sent, ee)
				}
				return fmt.Errorf("%w: the upstream took %d of %d bytes", ErrUndelivered, w, sent)
			}
			return fmt.Errorf("%w: %d of %d bytes confirmed before the stream broke: %w", ErrUndelivered, c.written.Load(), sent, c.werr)
		case <-timer.C:
			if p := s.progress.Load(); p != last {
				last = p
				timer.Reset(s.c.releaseTimeout)
				continue
			}
			s.c.warn("poolplane: release stalled: closing the upstream connection", "pool", s.pool, "lease", c.info.LeaseID,
				"sent", sent, "written", c.written.Load(), "timeout", s.c.releaseTimeout)
			s.fail(errReleaseStalled)
			<-c.endc
			return fmt.Errorf("%w: the upstream took %d of %d bytes and then nothing for %s", ErrUndelivered, c.written.Load(), sent, s.c.releaseTimeout)
		}
	}
}

// Info describes the lease. Safe for concurrent use.
func (c *Conn) Info() LeaseInfo { return c.info }

// LocalAddr returns an Addr of network "poolplane" naming the client and the
// lease: "<client name>/pools/<pool>/leases/<lease>".
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr returns an Addr of network "poolplane" holding the upstream's
// "ip:port".
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets the read and write deadlines; see SetReadDeadline and
// SetWriteDeadline.
func (c *Conn) SetDeadline(t time.Time) error {
	if isClosed(c.closedc) {
		return net.ErrClosed
	}
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets when Read fails with os.ErrDeadlineExceeded: a past
// time fails Reads at once, including a pending one; the zero time means
// none. A timeout leaves the Conn usable but unfit for reuse. It returns
// net.ErrClosed after Close.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if isClosed(c.closedc) {
		return net.ErrClosed
	}
	c.rdl.set(t)
	return nil
}

// SetWriteDeadline sets when Write fails with os.ErrDeadlineExceeded, like
// SetReadDeadline. Bytes Write reported as written are still sent.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if isClosed(c.closedc) {
		return net.ErrClosed
	}
	c.wdl.set(t)
	return nil
}

// Addr is the net.Addr of either end of a Conn. Its network is "poolplane".
type Addr struct {
	name string
}

var _ net.Addr = Addr{}

// Network returns "poolplane".
func (Addr) Network() string { return "poolplane" }

// String returns the address: the client name and lease for LocalAddr, the
// upstream's "ip:port" for RemoteAddr.
func (a Addr) String() string { return a.name }

// deadline is a deadline whose channel closes when it passes, after
// net.Pipe's pipeDeadline: setting one wakes the calls waiting on the old
// channel if it is in the past.
type deadline struct {
	mu     sync.Mutex // guards timer and cancel
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passed; never nil
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

// set sets the deadline; the zero time clears it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed when the deadline passes.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
