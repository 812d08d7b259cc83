// Package relay moves the bytes of one lease: a leased upstream connection
// on one side, a client side on the other (a gRPC lease stream today, a
// local socket tomorrow). It owns byte copying in both directions,
// backpressure, half-close, release and revocation, the end reasons, and
// the one decision whether a released connection may be reused.
//
// A Lease runs one reader goroutine (a goroutine of its own, or one the
// client side lends it: Options.Go), which copies upstream bytes to the
// client side (Sink); the client side's own goroutine writes client bytes
// to the upstream (Write) and ends the lease (Release or Abandon). Other
// goroutines may Cut a lease at any time: a blocked upstream read or write
// returns at once.
//
// The package imports no gRPC and no generated code: a client side maps
// its frames to these calls and Reason to its own wire values.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"
)

const (
	// SmallRead is the upstream read size for a client side that takes only
	// small frames, and on TLS upstreams: a gRPC client decoding with
	// grpc-go's proto codec must get an encoded frame that fits grpc-go's
	// 32 KiB buffer tier, or every message takes (and zeroes) a 1 MiB one.
	SmallRead = 32<<10 - 64
	// LargeRead is the largest upstream read: fewer, larger frames cost
	// less per byte at every step. With Headroom it is one of the
	// Buffers' sizes. On a TCP upstream a lease does not hold a buffer
	// while it waits for bytes (Reader).
	LargeRead = 256<<10 - Headroom
	// progressTick is how long an upstream write may go unreported: a
	// client waiting for its bytes to be delivered (the SDK's Close) counts
	// each report as progress.
	progressTick = 25 * time.Millisecond
	// tlsChunk is how much of a client frame goes to a TLS upstream in one
	// Write: a TLS record's worth, so progress is seen between records.
	tlsChunk = 16 << 10
)

// Reason says why a lease ended.
type Reason int

// End reasons; a client side maps them to its wire values.
const (
	// ReasonNone: the lease has not ended, or the stream carrying it did
	// (nothing is sent then).
	ReasonNone Reason = iota
	// Released: the client released the lease.
	Released
	// UpstreamEOF: the upstream closed its side, for a client side that
	// does not take half-closes.
	UpstreamEOF
	// UpstreamError: reading or writing the upstream failed.
	UpstreamError
	// Revoked: RevokeLease, or the pool closed the connection.
	Revoked
	// MaxLeaseDuration: the lease outlived lifecycle.max_lease_duration.
	MaxLeaseDuration
	// Shutdown: the server's grace period is over.
	Shutdown
)

// End describes how a lease ended, for the client side's last frame.
type End struct {
	Reason  Reason
	Message string // for humans: the upstream error
	// Reused: the connection went back to the pool (a protocol pool's
	// connection after its reset, which may still close it).
	Reused  bool
	Written int64 // client bytes written to the upstream in all
}

// Upstream is the leased connection as the relay uses it; *poolmgr.Conn
// implements it.
type Upstream interface {
	NetConn() net.Conn
	Done() <-chan struct{}
	CloseReason() poolmgr.CloseReason
	AddBytes(in, out int64)
	Release(reusable bool)
	// Discard closes the connection, counted under reason.
	Discard(reason poolmgr.CloseReason)
	// Protocol is the pool's protocol handler, nil for RAW.
	Protocol() protocol.Handler
	// ProtocolState is what the handler's Setup returned for the
	// connection.
	ProtocolState() any
	// ResetTimeout bounds a protocol pool's reset at release.
	ResetTimeout() time.Duration
}

// Sink is the client side of a lease: where the reader goroutine delivers
// upstream bytes and lease events. Calls come from the reader goroutine and
// from the goroutine of Write and Release, one at a time per Lease only if
// the sink serialises them itself. An error means the client side is gone.
type Sink interface {
	// Data delivers the n upstream bytes at (*bp)[Headroom:Headroom+n];
	// the sink owns bp (a Buffers buffer) from then on. written is the
	// count of client bytes written to the upstream so far.
	Data(bp *[]byte, n int, written int64) error
	// Progress reports client bytes written to the upstream while no
	// upstream bytes flow.
	Progress(written int64) error
	// CloseWrite reports the upstream's half-close: no upstream bytes
	// follow; client bytes still reach the upstream.
	CloseWrite() error
	// Ended is the lease's last event.
	Ended(End) error
}

// Options configure a Lease.
type Options struct {
	// ReadSize is the upstream read size, the largest Data: between
	// SmallRead and LargeRead.
	ReadSize int
	// HalfClose: the client side takes CloseWrite, so the upstream's EOF
	// does not end the lease.
	HalfClose bool
	// Reader is reused by the lease's reader goroutine (a client side with
	// leases one after another keeps one); nil allocates one.
	Reader *Reader
	// Done is called once when the reader goroutine exits (or, for a
	// started lease whose reader never ran, when it ends).
	Done func()
	// Splice is the client side's own socket, when it has one (a pool
	// listener's connection). On a lease with no protocol whose upstream
	// is a TCP or Unix socket and Splice a TCP socket, the reader copies
	// upstream bytes into it with its ReadFrom, which Linux does in the
	// kernel (splice(2)), instead of through the Sink's Data; the Sink
	// still gets CloseWrite and Ended.
	Splice net.Conn
	// Go runs the reader: it must call its argument once, on a goroutine
	// of its choosing, and may return before. nil starts a new goroutine.
	// A client side whose own goroutine has nothing to do while a lease is
	// held lends it, so a held lease costs no goroutine of its own.
	Go func(reader func())
	// ResetInline: a protocol pool's reset at release runs on the
	// goroutine of Release or Abandon, after the sink's Ended, instead of
	// on the reader's, which exits once it stops reading. For a client side
	// whose goroutine has nothing left to do after the release (a pool
	// listener's connection) it saves a hand-off between goroutines.
	ResetInline bool
}

// errCut is what an upstream write returns once the lease was cut.
var errCut = errors.New("relay: lease cut")

// Lease is one granted lease being relayed. Its methods other than Cut and
// Ended belong to the client side's goroutine.
type Lease struct {
	up   Upstream
	nc   net.Conn
	sink Sink
	opts Options

	// sess follows the exchange of a protocol pool's lease (nil for RAW).
	sess protocol.Session
	// reset is the decision Release and Abandon hand to the reader
	// goroutine of a protocol pool's lease once it stopped reading: reset
	// the connection (true) or leave it (false). Buffered. With
	// Options.ResetInline the reader does not wait for it: resetNow tells
	// Release or Abandon to reset the connection themselves.
	reset    chan bool
	resetNow bool
	// greeter is sess while it answers the client's opening (nil once
	// done, or for a protocol without one); the reader starts after it.
	// refused: the greeter refused the client, whose bytes are dropped.
	// Both belong to the client side's goroutine.
	greeter protocol.Greeter
	refused bool
	// handed: the connection went back to the pool (release, discard);
	// a later Cut must not touch it. Under handMu, which orders it
	// against Cut's deadline.
	handMu sync.Mutex
	handed bool
	// readerGo is set when the reader goroutine starts; closeOnce closes
	// stoppedc and readerc for a lease whose reader never ran.
	readerGo  atomic.Bool
	closeOnce sync.Once
	greetOnce sync.Once // endGreeting's work
	// clientEnded: the client ended the exchange in its protocol (Write).
	clientEnded bool
	// drainWait: the client half-closed a protocol pool's lease and waits
	// for the replies due (DrainReplies, HalfCloseDrain); the reader stops
	// once none is, closing drainedc, and with drainTell first tells the
	// client side (Sink.CloseWrite). Both are set before drainWait.
	drainWait atomic.Bool
	drainedc  chan struct{}
	drainTell bool
	// drainLate bounds HalfCloseDrain's wait (drain.go); upShut: the
	// reader half-closed the upstream when it ran out (the connection is
	// not reused).
	drainLate drainTimer
	upShut    bool

	stoppedc chan struct{} // closed when the reader stops reading
	readerc  chan struct{} // closed when the reader goroutine exits (after a reset)
	stopc    chan struct{} // closed by Release: a reader waiting after the upstream's EOF exits
	cutc     chan struct{} // closed by Cut
	cutOnce  sync.Once
	// cutReason is why the lease was cut; valid once cutc is closed.
	cutReason atomic.Int32

	// Set by the reader before it exits; read after readerc closes.
	readErr    error
	upEOF      bool // the upstream half-closed (CloseWrite was sent)
	readFailed bool // the upstream read failed or ended (not stopped by a deadline)

	started   atomic.Bool           // Start ran
	releasing atomic.Bool           // the client released: a read deadline stops the reader
	ended     atomic.Bool           // the end was sent (by the reader) or the lease is over
	finish    sync.Once             // the Release of up
	broken    bool                  // a write or close_write failed or half-closed: never reuse
	writeErr  atomic.Pointer[error] // the upstream write that failed, for the end's message
	bytesOut  atomic.Int64          // client bytes written to the upstream
	bytesIn   atomic.Int64

	// wmu is held by Write across an upstream write, its count and its
	// progress reports, and taken by the reader before it reports a remote
	// end: the end's count then includes a write the upstream answered
	// before it was counted, and no progress report follows the end.
	wmu sync.Mutex
	// The last progress report (maybeReport); under wmu.
	reported   int64
	reportedAt time.Time
}

// New returns a lease relaying up to sink; Start starts it.
func New(up Upstream, sink Sink, opts Options) *Lease {
	if opts.Reader == nil {
		opts.Reader = new(Reader)
	}
	opts.ReadSize = min(max(opts.ReadSize, SmallRead), LargeRead)
	l := &Lease{up: up, nc: up.NetConn(), sink: sink, opts: opts,
		stoppedc: make(chan struct{}), readerc: make(chan struct{}),
		stopc: make(chan struct{}), cutc: make(chan struct{})}
	if h := up.Protocol(); h != nil {
		l.sess = h.NewSession(up.ProtocolState())
		l.reset = make(chan bool, 1)
		l.greeter, _ = l.sess.(protocol.Greeter)
	}
	return l
}

// Start starts the reader goroutine.
// A protocol's greeter answers the client's opening first: the reader
// starts once it is done.
func (l *Lease) Start() {
	l.started.Store(true)
	if l.greeter == nil {
		l.startReader()
	}
}

func (l *Lease) startReader() {
	l.readerGo.Store(true)
	if l.opts.Go != nil {
		l.opts.Go(l.relayUpstream)
		return
	}
	go l.relayUpstream()
}

// NotStarted marks a lease whose client side failed before Start: its
// Abandon does not wait for a reader.
func (l *Lease) NotStarted() { l.noReader() }

// noReader closes the reader's channels of a lease whose reader never ran.
func (l *Lease) noReader() {
	l.closeOnce.Do(func() {
		close(l.stoppedc)
		close(l.readerc)
	})
}

// greeting reports whether the protocol's greeter has the lease: the
// reader has not started.
func (l *Lease) greeting() bool { return l.sess != nil && !l.readerGo.Load() && l.started.Load() }

// Ended reports whether the lease ended from the upstream's side (or was
// cut): client bytes are dropped from then on.
func (l *Lease) Ended() bool { return l.ended.Load() || l.broken }

// Cut ends the lease from outside the relay (the client side's end,
// shutdown): blocked upstream reads and writes return at once, and the
// reader sends Ended with reason unless it is ReasonNone. The first cut's
// reason wins; Cut reports whether this call cut the lease. Safe for
// concurrent use.
func (l *Lease) Cut(reason Reason) bool {
	did := false
	l.cutOnce.Do(func() {
		did = true
		l.cutReason.Store(int32(reason))
		close(l.cutc)
		// A past deadline wakes the reader and a blocked write. Set after
		// the flag: Write arms its deadline, then checks the flag. Not
		// once the connection went back to the pool: it may be idle there,
		// or leased to another client (see release).
		l.handMu.Lock()
		if !l.handed {
			_ = l.nc.SetDeadline(time.Unix(1, 0))
		}
		l.handMu.Unlock()
	})
	return did
}

// Wait blocks until the reader goroutine has exited or done is closed.
func (l *Lease) Wait(done <-chan struct{}) {
	select {
	case <-l.readerc:
	case <-done:
	}
}

func (l *Lease) isCut() bool {
	select {
	case <-l.cutc:
		return true
	default:
		return false
	}
}

// remoteReason says why a lease ended other than by the client's release,
// after the upstream connection failed with err.
func (l *Lease) remoteReason(err error) Reason {
	if l.isCut() {
		if r := Reason(l.cutReason.Load()); r != ReasonNone {
			return r
		}
	}
	select {
	case <-l.up.Done():
		if l.up.CloseReason() == poolmgr.CloseMaxLeaseDuration {
			return MaxLeaseDuration
		}
		return Revoked
	default:
	}
	if errors.Is(err, io.EOF) && l.writeErr.Load() == nil {
		return UpstreamEOF
	}
	return UpstreamError
}

// relayUpstream copies upstream bytes to the sink until the upstream ends
// or the client releases. On an upstream end it sends Ended itself and
// closes the connection, so the client learns of it at once. After the
// upstream's EOF, a client side that takes half-closes gets CloseWrite and
// the lease goes on (the client's bytes still reach the upstream): the
// reader then waits for the release, a cut or the pool closing the
// connection.
func (l *Lease) relayUpstream() {
	defer func() {
		close(l.readerc)
		if l.opts.Done != nil {
			l.opts.Done()
		}
	}()
	stopped := l.readUpstream()
	l.drainLate.stop() // before the connection can go to another lease
	if !stopped || l.sess == nil {
		close(l.stoppedc)
		return
	}
	close(l.stoppedc)
	if l.opts.ResetInline {
		return // Release or Abandon decide, and reset the connection themselves
	}
	select {
	case ok := <-l.reset:
		if ok {
			l.resetUpstream()
		}
	case <-l.up.Done():
		l.release(false) // the pool closed it
	}
}

// readUpstream is the reader's loop; it reports whether it stopped for the
// client side (Release, Abandon), which then decides what becomes of the
// connection, rather than ending the lease itself.
func (l *Lease) readUpstream() (stopped bool) {
	if dst := l.spliceTo(); dst != nil {
		n, err := dst.ReadFrom(l.nc) // until the upstream's EOF (nil) or an error
		l.bytesIn.Add(n)
		if err == nil {
			err = io.EOF
		}
		return l.readEnded(err)
	}
	r := l.opts.Reader
	r.Reset(l.nc, l.opts.ReadSize)
	for {
		bp, n, err := r.Read()
		if n > 0 {
			l.bytesIn.Add(int64(n))
			if l.sess != nil {
				l.sess.Reply((*bp)[Headroom : Headroom+n])
			}
			if serr := l.sink.Data(bp, n, l.bytesOut.Load()); serr != nil {
				l.readErr = serr
				return true // the client side is gone: Abandon follows
			}
		}
		if l.drainWait.Load() {
			if l.drainedNow(err) {
				close(l.drainedc)
				if l.drainTell && !l.releasing.Load() {
					// A failed send: the client side is gone, Abandon follows.
					_ = l.sink.CloseWrite()
				}
				return true // the client side's Release follows
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && l.drainLate.fired() {
				// HalfCloseDrain's replies did not come within the pool's
				// reset_timeout: the half-close goes to the upstream after
				// all, as on a RAW pool, and the lease goes on.
				l.drainWait.Store(false)
				l.halfCloseUpstream()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// A drain's wake-up, with replies still due: read on.
				// The deadline is cleared before the release and the cut
				// are checked, as both set their flag before their
				// deadline.
				if l.nc.SetReadDeadline(time.Time{}) == nil && !l.releasing.Load() && !l.isCut() {
					continue
				}
			}
		}
		if err != nil {
			return l.readEnded(err)
		}
	}
}

// readEnded handles the end of the reader's loop with err (never nil):
// see readUpstream.
func (l *Lease) readEnded(err error) (stopped bool) {
	l.readErr = err
	deadline := errors.Is(err, os.ErrDeadlineExceeded)
	l.readFailed = !deadline
	if l.releasing.Load() && deadline && !l.isCut() {
		return true // stopped by Release, which sends the end
	}
	if deadline && l.sess != nil && l.isCut() && Reason(l.cutReason.Load()) == ReasonNone {
		// The client side ended (its Abandon follows): a protocol
		// pool may still reset the connection.
		return true
	}
	if errors.Is(err, io.EOF) && l.opts.HalfClose && !l.isCut() {
		l.upEOF = true
		if l.sink.CloseWrite() != nil {
			return true
		}
		select {
		case <-l.stopc:
			return true // released: Release sends the end
		case <-l.cutc:
		case <-l.up.Done():
		}
	}
	reason := l.remoteReason(err)
	if l.releasing.Load() && !l.isCut() {
		return true // Release is ending the lease and sends the end
	}
	if !l.ended.CompareAndSwap(false, true) {
		return true // Abandon ended it
	}
	// Closing the connection ends a write in progress; once Write has
	// let go of wmu, the count is final.
	_ = l.nc.Close()
	l.wmu.Lock()
	written := l.bytesOut.Load()
	l.wmu.Unlock()
	l.release(false)
	msg := ""
	switch {
	case reason != UpstreamError:
	case l.writeErr.Load() != nil:
		msg = (*l.writeErr.Load()).Error()
	default:
		msg = err.Error()
	}
	_ = l.sink.Ended(End{Reason: reason, Message: msg, Written: written})
	return false
}

// ClientEnded reports that the client ended the exchange in its protocol
// (a PostgreSQL Terminate, which the pool answers by ending the lease):
// it sends nothing more, so its side may release the lease without
// waiting for its EOF. It belongs to the goroutine of Write.
func (l *Lease) ClientEnded() bool { return l.clientEnded }

func empty(bufs net.Buffers) bool {
	for _, b := range bufs {
		if len(b) > 0 {
			return false
		}
	}
	return true
}

// Write writes client bytes to the upstream, counting them as they go. A
// write that blocks (the upstream reads slowly or not at all) waits as long
// as it takes, as TCP would, reporting progress to the sink every
// progressTick, until the lease is cut, which wakes it at once. On a TCP
// or Unix socket the bytes go out with one writev; on a TLS connection in
// records of at most tlsChunk bytes. bufs is consumed. A failed write
// closes the connection (the reader reports the end) and later Writes drop
// their bytes.
func (l *Lease) Write(bufs net.Buffers) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.Ended() {
		return // the lease ended upstream; the client has not seen it yet
	}
	if l.greeter != nil || l.refused {
		if bufs = l.greet(bufs); len(bufs) == 0 {
			return
		}
	}
	if l.sess != nil {
		for i, b := range bufs {
			if k := l.sess.Request(b); k < len(b) {
				// The rest is the pool's to answer (and the client sends
				// nothing after it): taken, as if written.
				withheld := len(b) - k
				for _, r := range bufs[i+1:] {
					withheld += len(r)
				}
				l.bytesOut.Add(int64(withheld))
				l.clientEnded = true
				bufs[i] = b[:k]
				bufs = bufs[:i+1]
				break
			}
		}
	}
	if empty(bufs) {
		return // nothing left for the upstream: no write at all
	}
	var err error
	switch l.nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		err = l.writeVec(bufs)
	default:
		err = l.writeChunks(bufs)
	}
	if err != nil {
		l.broken = true
		if !errors.Is(err, errCut) && !l.isCut() {
			werr := err // its own variable: only a failed write allocates it
			l.writeErr.Store(&werr)
		}
		_ = l.nc.Close() // the reader reports the end
	}
}

func (l *Lease) writeVec(iov net.Buffers) error {
	for len(iov) > 0 {
		now := time.Now()
		l.maybeReport(now)
		if err := l.nc.SetWriteDeadline(now.Add(progressTick)); err != nil {
			return err
		}
		if l.isCut() {
			return errCut // Cut sets its deadline before the flag is read here
		}
		var n int64
		var err error
		if len(iov) == 1 {
			var k int
			k, err = l.nc.Write(iov[0])
			n = int64(k)
			iov[0] = iov[0][k:]
			if len(iov[0]) == 0 {
				iov = iov[:0]
			}
		} else {
			w := iov                 // escapes to WriteTo: declared here, so a one-buffer write allocates nothing
			n, err = w.WriteTo(l.nc) // consumes what it wrote
			iov = w
		}
		l.bytesOut.Add(n)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || l.isCut() {
			return err
		}
	}
	l.maybeReport(time.Now())
	return nil
}

// writeChunks writes to a connection that cannot take write deadlines and
// go on (crypto/tls fails for good after one), in chunks, reporting
// progress between them.
func (l *Lease) writeChunks(bufs net.Buffers) error {
	for _, b := range bufs {
		for len(b) > 0 {
			l.maybeReport(time.Now())
			k := min(len(b), tlsChunk)
			n, err := l.nc.Write(b[:k])
			l.bytesOut.Add(int64(n))
			if err != nil {
				return err
			}
			b = b[k:]
		}
	}
	l.maybeReport(time.Now())
	return nil
}

// maybeReport reports progress when bytes were written since the last
// report and the last is progressTick old: a client waiting for its bytes
// to be delivered sees them move however slowly the upstream reads, while
// a fast exchange sends no report (its replies carry the count).
func (l *Lease) maybeReport(now time.Time) {
	w := l.bytesOut.Load()
	if w == l.reported || now.Sub(l.reportedAt) < progressTick {
		return
	}
	if l.reportedAt.IsZero() {
		l.reportedAt = now // the first write of the lease starts the clock
		return
	}
	l.reported, l.reportedAt = w, now
	_ = l.sink.Progress(w) // a failed send is the client side's end, seen next
}

// CloseWrite half-closes the upstream for writing (TCP FIN); reads go on.
// The connection is never reused afterwards.
func (l *Lease) CloseWrite() {
	if l.Ended() {
		return
	}
	l.broken = true
	if cw, ok := l.nc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		_ = l.nc.Close()
	}
}

// Release ends the lease at the client's request: it stops the reader,
// decides whether the connection is reused, returns it to the pool and
// sends Ended (unless the reader already ended the lease). Every Write
// before it has finished, so every client byte before the release was
// written. This is the one place where reuse is decided: the client's
// word (reusable), no error, EOF, cut or half-close seen on the lease, a
// reader stopped cleanly, and the pool's own checks in Release.
func (l *Lease) Release(reusable bool) error {
	if l.greeting() {
		reused := l.endGreeting()
		if !l.ended.CompareAndSwap(false, true) {
			return nil
		}
		return l.sink.Ended(End{Reason: Released, Reused: reused, Written: l.bytesOut.Load()})
	}
	l.releasing.Store(true)
	close(l.stopc)
	if !l.ended.Load() {
		// Wake the reader without closing the connection.
		if err := l.nc.SetReadDeadline(time.Unix(1, 0)); err != nil {
			l.broken = true
			_ = l.nc.Close()
		}
	}
	<-l.stoppedc
	sendEnd := l.ended.CompareAndSwap(false, true)
	if l.sess != nil {
		reused := false
		if sendEnd && l.resettable() {
			reused = l.decideReset()
		} else {
			l.tellReader(false)
			if l.upShut {
				// A half-close's replies did not come in time (HalfCloseDrain).
				l.discard(poolmgr.CloseOutstanding)
			}
			l.release(false) // a no-op when the reader ended the lease, or after discard
		}
		if !sendEnd {
			return nil
		}
		err := l.sink.Ended(End{Reason: Released, Reused: reused, Written: l.bytesOut.Load()})
		l.resetInline()
		return err
	}
	clean := reusable && !l.broken && !l.upEOF && !l.isCut() && errors.Is(l.readErr, os.ErrDeadlineExceeded)
	if clean {
		if err := l.nc.SetDeadline(time.Time{}); err != nil {
			clean = false
		}
	}
	clean = clean && sendEnd
	l.release(clean)
	if !sendEnd {
		return nil
	}
	return l.sink.Ended(End{Reason: Released, Reused: clean, Written: l.bytesOut.Load()})
}

// decideReset hands a protocol pool's connection to the reader goroutine
// for its reset, or closes it when its session cannot be reset; it reports
// whether the reset runs. The client's own word on reuse does not count:
// the pool knows where the exchange stands.
func (l *Lease) decideReset() bool {
	if l.sess.State() == protocol.NotResettable {
		l.discard(poolmgr.CloseNotResettable)
		l.tellReader(false)
		return false
	}
	if c, ok := l.sess.(protocol.Cleaner); ok && c.Clean() && l.nc.SetDeadline(time.Time{}) == nil {
		// Nothing to reset: back to the pool now, as a RAW lease goes.
		l.release(true)
		l.tellReader(false)
		return true
	}
	l.tellReader(true)
	return true
}

// Abandon ends a lease whose client side went away without a release: the
// connection's state is unknown, so it is closed, not reused.
//
// On a protocol pool, the exchange's state is known: the connection is
// reset for another lease when its session allows, as on Release.
func (l *Lease) Abandon() {
	if l.greeting() {
		l.ended.Store(true)
		l.endGreeting()
		return
	}
	l.releasing.Store(true)
	l.ended.Store(true)
	l.Cut(ReasonNone) // wakes a reader waiting after the upstream's EOF
	if l.sess != nil && l.started.Load() {
		<-l.stoppedc
		if l.resettable() {
			l.decideReset()
			l.resetInline()
			return
		}
		l.tellReader(false)
		if l.upShut {
			l.discard(poolmgr.CloseOutstanding) // as in Release
		}
	}
	_ = l.nc.Close()
	<-l.readerc
	l.release(false)
}
