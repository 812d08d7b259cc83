package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
)

const (
	// smallDataFrame is the largest data frame sent on a stream until
	// the server's header says it takes larger ones (an older poold does
	// not): on a new stream, 0-RTT data goes in frames of this size.
	smallDataFrame = leasewire.SmallFrame
	// maxFrame is the largest data frame Write sends to a server that
	// takes large ones; the SDK says it takes as large ones in return.
	// Fewer, larger messages cost less per byte on both sides.
	maxFrame = 256<<10 - 16
	// maxQueued is how many data bytes may wait for the sender before Write
	// blocks: two 32 KiB frames, so Write copies the next frame while the
	// sender hands the previous one to gRPC, or one larger frame. gRPC's
	// flow control does the rest.
	maxQueued = 64 << 10
)

var (
	// errDiscarded ends a stream the SDK gave up on (cache full, lease
	// abandoned); a Conn on it was closed already.
	errDiscarded = errors.New("client: lease stream discarded")
	// errEndedTimeout ends a stream whose ended frame did not arrive in time
	// after a release.
	errEndedTimeout = errors.New("client: no ended frame after release")
	// errWriteClosed is returned by Write after CloseWrite.
	errWriteClosed = errors.New("client: write after CloseWrite")
	// errReleaseStalled ends a stream whose released lease had bytes the
	// upstream stopped taking.
	errReleaseStalled = errors.New("client: release stalled: the upstream stopped taking written bytes")
)

// streamState is where a stream is in its lease cycle.
type streamState uint8

const (
	stIdle    streamState = iota // no lease: in the cache, or leaving it
	stOpening                    // open queued, waiting for granted
	stActive                     // granted; released and ended track the end
	stDead                       // broken or discarded; err says why
)

func (st streamState) String() string {
	switch st {
	case stIdle:
		return "idle"
	case stOpening:
		return "opening"
	case stActive:
		return "active"
	}
	return "dead"
}

// stream is one Lease RPC carrying leases one after another. A receive
// goroutine reads server frames and routes them to the current lease's Conn;
// a send goroutine drains a queue of client frames, so a Write can time out
// while gRPC's flow control holds a frame (a frame that cannot be held, see
// sendData, goes out on the caller's goroutine). The send goroutine runs only
// while frames are queued: the first frame queued starts it and it exits
// once the queue is empty, so an idle lease or warm stream has the receive
// goroutine alone. The receive goroutine is owned by the Client
// (Client.wg), waits for the send goroutine before it exits, and stops when
// the stream's context is cancelled.
//
// A lease ends when the release is queued and the server's ended frame has
// arrived, in either order; the stream is then idle and goes back to the
// Client's cache. Any unexpected frame, a late ended or a broken RPC kills
// the stream.
type stream struct {
	c      *Client
	ch     *channel // the connection the stream is on
	pool   string
	hint   *pickHint       // where the balancer placed the stream
	ctx    context.Context // owned by the stream, child of the Client's
	cancel context.CancelFunc
	rpc    grpc.BidiStreamingClient[poolv1.LeaseRequest, poolv1.LeaseResponse]

	progress  atomic.Uint64 // frames sent and received: a release waits while it moves
	frameSize atomic.Int32  // the largest data frame to send; see learnFrameSize
	openData  atomic.Bool   // the server takes open.data; see learnFrameSize
	donec     chan struct{} // closed when both goroutines have exited
	deadc     chan struct{} // closed when the stream died; err is set first

	spacec chan struct{}  // size 1: nudges a Write waiting for queue space
	sendWG sync.WaitGroup // the send goroutine, while one runs

	qmu    sync.Mutex // protects the following fields
	q      []*poolv1.LeaseRequest
	qbytes int // data bytes in q
	// sending: a send goroutine runs (it clears sending as it finds q
	// empty, and leaves it set after a failed Send: no other starts).
	sending bool
	// recvDone: the receive goroutine is exiting; no send goroutine
	// starts.
	recvDone bool

	mu       sync.Mutex // protects the following fields; taken before qmu
	state    streamState
	err      error       // why the stream died
	cur      *Conn       // the lease being opened or held
	released bool        // cur's release is queued
	ended    bool        // cur's ended frame arrived
	settling bool        // released and not ended: counted in Client.releasing
	timer    *time.Timer // discards the stream when ended is late
	timerAt  uint64      // progress when timer was last armed
}

// newStream opens a Lease RPC for pool on replica (any when "" or not
// ready; not avoid if another is ready), on a connection with room for
// it, and starts its goroutines. The RPC's context is the stream's own;
// ctx only bounds the call.
func (c *Client) newStream(ctx context.Context, pool, replica, avoid string) (*stream, error) {
	for {
		ch, err := c.reserveStream()
		if err != nil {
			return nil, err
		}
		s, stalled, err := c.openStream(ctx, ch, pool, replica, avoid)
		switch {
		case stalled:
			c.stalled(ch) // at the server's limit: try another connection
			continue
		case err != nil:
			c.releaseStream(ch)
			return nil, err
		}
		return s, nil
	}
}

// openStream opens a Lease RPC on ch. It gives up, reporting stalled, when
// the RPC waits stallWait on a ready connection: it waits for stream quota
// the server did not advertise.
func (c *Client) openStream(ctx context.Context, ch *channel, pool, replica, avoid string) (s *stream, stalled bool, err error) {
	hint := &pickHint{want: replica, avoid: avoid}
	sctx, cancel := context.WithCancel(withPickHint(c.ctx, hint))
	stop := context.AfterFunc(ctx, cancel)
	var stall atomic.Bool
	t := time.AfterFunc(c.stallWait, func() {
		if ch.ready() {
			stall.Store(true)
			cancel()
		}
	})
	rpc, err := ch.leases.Lease(metadata.AppendToOutgoingContext(sctx, frameSizeMD...), leaseCallOption())
	t.Stop()
	if !stop() {
		cancel()
		return nil, false, leaseCtxErr(pool, ctx.Err())
	}
	if stall.Load() {
		cancel()
		return nil, true, nil
	}
	if err != nil {
		cancel()
		if c.ctx.Err() != nil {
			return nil, false, ErrClientClosed
		}
		return nil, false, fromStatus(err)
	}
	s = &stream{
		c:      c,
		ch:     ch,
		pool:   pool,
		hint:   hint,
		ctx:    sctx,
		cancel: cancel,
		rpc:    rpc,
		donec:  make(chan struct{}),
		deadc:  make(chan struct{}),
		spacec: make(chan struct{}, 1),
		state:  stOpening,
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return nil, false, ErrClientClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	s.frameSize.Store(smallDataFrame)
	go s.recvLoop()
	return s, false, nil
}

// exit is deferred by the receive goroutine: it waits for the send
// goroutine (the stream's context is cancelled by then, so a Send in
// progress returns) and frees the stream's place on its connection.
func (s *stream) exit() {
	s.qmu.Lock()
	s.recvDone = true
	s.qmu.Unlock()
	s.sendWG.Wait()
	s.c.releaseStream(s.ch) // the RPC is over: its stream is free
	close(s.donec)
	s.c.wg.Done()
}

// replica returns the address of the replica the stream is on, or "" when
// the SDK's balancer is not in use.
func (s *stream) replica() string { return s.hint.addr() }

// idleKey names the cache the stream belongs in when it is idle.
func (s *stream) idleKey() idleKey { return idleKey{s.pool, s.replica()} }

// claim marks an idle stream opening; false means it died meanwhile.
func (s *stream) claim() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stIdle {
		return false
	}
	s.state = stOpening
	return true
}

func (s *stream) isIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stIdle
}

// open starts a lease on a stream marked opening and waits for granted.
func (s *stream) open(ctx context.Context, o *poolv1.LeaseRequest_Open, first []byte) (*Conn, error) {
	conn := newConn(s)
	s.mu.Lock()
	if s.state != stOpening {
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	s.cur = conn
	s.released, s.ended = false, false
	s.mu.Unlock()

	size := len(first)
	conn.sent.Store(int64(size))
	if len(first) > 0 && len(first) <= s.maxData() && s.openData.Load() {
		// The request rides in the open (and its reply, if quick, in
		// granted): one message each way. o is the caller's, for every
		// attempt: this attempt's open is a copy.
		o = &poolv1.LeaseRequest_Open{Pool: o.GetPool(), AcquireTimeout: o.GetAcquireTimeout(),
			ClientName: o.GetClientName(), Data: slices.Clone(first)}
		first = nil
	}
	reqs := make([]*poolv1.LeaseRequest, 0, 1+(len(first)+smallDataFrame-1)/smallDataFrame)
	reqs = append(reqs, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: o}})
	for b := first; len(b) > 0; {
		k := min(len(b), s.maxData())
		reqs = append(reqs, dataReq(b[:k]))
		b = b[k:]
	}
	// An idle stream's earlier data went out before its last lease ended,
	// so a small open does not wait on flow control.
	s.sendInline(s.queue(reqs...), size <= smallDataFrame, len(reqs))

	select {
	case <-conn.grantedc:
		return conn, nil
	case <-s.deadc:
		select {
		case <-conn.grantedc:
			return conn, nil // granted, then broken: Read reports it
		default:
		}
		return nil, s.deadErr()
	case <-ctx.Done():
		// The server may be acquiring: the stream's state is unknown.
		s.fail(errDiscarded)
		<-s.donec
		return nil, leaseCtxErr(o.GetPool(), ctx.Err())
	}
}

// Data frames are pooled in three size classes: the send goroutine puts a
// frame back once rpc.Send returns, since grpc-go encodes the message in
// SendMsg and keeps no reference to it afterwards (the SDK installs no stats
// handler; one passed with WithDialOptions sees the message only during
// SendMsg). Bulk writes then copy each frame into a reused buffer instead of
// a fresh, zeroed allocation, and a 64-byte write saves four allocations.
const (
	smallFrame = 1 << 10
	midFrame   = 32 << 10
)

var (
	smallFrames = sync.Pool{New: func() any { return newFrame(smallFrame) }}
	midFrames   = sync.Pool{New: func() any { return newFrame(midFrame) }}
	largeFrames = sync.Pool{New: func() any { return newFrame(maxFrame) }}
)

func newFrame(size int) any {
	return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: make([]byte, 0, size)}}}
}

// dataReq copies b (at most maxFrame bytes) into a pooled data frame.
func dataReq(b []byte) *poolv1.LeaseRequest {
	pool := &largeFrames
	switch {
	case len(b) <= smallFrame:
		pool = &smallFrames
	case len(b) <= midFrame:
		pool = &midFrames
	}
	req := pool.Get().(*poolv1.LeaseRequest)
	d := req.GetData()
	d.Data = append(d.Data[:0], b...)
	return req
}

// putFrame returns a sent data frame to its pool; other frames are left to
// the garbage collector.
func putFrame(req *poolv1.LeaseRequest) {
	d := req.GetData()
	if d == nil {
		return
	}
	switch cap(d.Data) {
	case smallFrame:
		d.Data = d.Data[:0]
		smallFrames.Put(req)
	case midFrame:
		d.Data = d.Data[:0]
		midFrames.Put(req)
	case maxFrame:
		d.Data = d.Data[:0]
		largeFrames.Put(req)
	}
}

// frameSizeMD is the SDK's metadata on Lease calls: the frame size it
// takes and the features it speaks.
var frameSizeMD = []string{leasewire.FrameSizeKey, strconv.Itoa(maxFrame),
	leasewire.FeaturesKey, leasewire.FeatureHalfClose + "," + leasewire.FeatureGrantedData}

// learnFrameSize sets the stream's data frame size from the server's
// header, which arrives with its first response; without the header (or
// if the stream broke first) it stays smallDataFrame. The header also
// carries the server's stream limit, for the Client. Only the receive
// goroutine calls it, before it reads a frame, hence before a lease is
// granted and written to.
func (s *stream) learnFrameSize() {
	md, err := s.rpc.Header()
	if err != nil {
		return
	}
	s.c.learnStreamLimit(md.Get(leasewire.MaxStreamsKey))
	for _, v := range md.Get(leasewire.ServerFeaturesKey) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(f) == leasewire.FeatureOpenData {
				s.openData.Store(true)
			}
		}
	}
	v := md.Get(leasewire.FrameSizeKey)
	if len(v) != 1 {
		return
	}
	if n, err := strconv.Atoi(v[0]); err == nil {
		s.frameSize.Store(int32(min(max(n, smallDataFrame), maxFrame)))
	}
}

// maxData returns the largest data frame Write may send on the stream.
func (s *stream) maxData() int { return int(s.frameSize.Load()) }

// enqueue queues control frames (and 0-RTT data) without waiting.
func (s *stream) enqueue(reqs ...*poolv1.LeaseRequest) {
	if s.queue(reqs...) {
		go s.sendLoop()
	}
}

// queue queues frames and reports whether the caller must run the send
// loop (none runs). A caller that knows its frames cannot wait on gRPC's
// flow control runs it on its own goroutine (sendInline): a small open on
// an idle stream, a release or a small data frame behind bytes the server
// (nearly) all confirmed (Conn.sendsInline). The loop then sends just
// those frames, as nothing else is queued behind them, and a lease per
// request costs no goroutine of its own.
func (s *stream) queue(reqs ...*poolv1.LeaseRequest) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for _, r := range reqs {
		s.q = append(s.q, r)
		s.qbytes += len(r.GetData().GetData())
	}
	return s.startSenderLocked()
}

// sendInline runs the send loop that queue asked for, when start: on the
// caller's goroutine when inline, for the n frames it queued (a send
// goroutine takes any queued behind them), else on a goroutine of its own.
func (s *stream) sendInline(start, inline bool, n int) {
	switch {
	case !start:
	case inline:
		s.sendFrames(n)
	default:
		go s.sendLoop()
	}
}

// startSenderLocked reports whether the caller, which has just queued
// frames, must start the send goroutine: none runs and the stream lives.
func (s *stream) startSenderLocked() bool {
	if s.sending || s.recvDone {
		return false
	}
	s.sending = true
	s.sendWG.Add(1) // before recvDone is set: exit's Wait comes after
	return true
}

// sendData queues one data frame of c, waiting while maxQueued bytes are
// queued already. It fails at c's write deadline, c's close, or the lease's
// end. A small frame behind bytes the server (nearly) all confirmed goes
// out on the caller's goroutine, as a small open does (Conn.sendsInline): a
// held lease's request then costs no goroutine of its own.
func (s *stream) sendData(c *Conn, req *poolv1.LeaseRequest, n int) error {
	for {
		if err := c.writeErr(); err != nil {
			return err
		}
		s.qmu.Lock()
		if s.qbytes < maxQueued {
			inline := len(s.q) == 0 && n <= smallDataFrame && c.sendsInline()
			s.q = append(s.q, req)
			s.qbytes += n
			start := s.startSenderLocked()
			s.qmu.Unlock()
			s.sendInline(start, inline, 1)
			return nil
		}
		s.qmu.Unlock()
		select {
		case <-s.spacec:
		case <-c.wdl.wait():
		case <-c.closedc:
		case <-c.endc:
		case <-s.deadc:
		}
	}
}

func nudge(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sendLoop sends queued frames in order until the queue is empty or the
// stream dies.
func (s *stream) sendLoop() { s.sendFrames(-1) }

// sendFrames is the send loop: after limit frames (limit >= 0) it hands what
// is still queued to a send goroutine.
func (s *stream) sendFrames(limit int) {
	handed := false
	defer func() {
		if !handed {
			s.sendWG.Done()
		}
	}()
	for sent := 0; ; sent++ {
		s.qmu.Lock()
		if len(s.q) == 0 || s.ctx.Err() != nil {
			s.sending = false
			s.qmu.Unlock()
			return
		}
		if sent == limit {
			handed = true // the goroutine's loop is this one, continued
			s.qmu.Unlock()
			go s.sendLoop()
			return
		}
		req := s.q[0]
		copy(s.q, s.q[1:])
		s.q[len(s.q)-1] = nil
		s.q = s.q[:len(s.q)-1]
		if d := req.GetData(); d != nil {
			s.qbytes -= len(d.GetData())
			nudge(s.spacec)
		}
		s.qmu.Unlock()
		err := s.rpc.Send(req)
		putFrame(req) // encoded by Send: the buffer is free again
		s.progress.Add(1)
		if err != nil {
			// io.EOF: the server ended the RPC and the receive loop gets
			// its status. Anything else breaks the stream here.
			if !errors.Is(err, io.EOF) {
				s.fail(fromStatus(err))
			}
			return
		}
	}
}

// recvLoop reads server frames until the stream dies. It reuses one message:
// the lease codec (and proto) copy a data frame's bytes into a fresh chunk,
// so a chunk handed to a Conn stays valid.
func (s *stream) recvLoop() {
	defer s.exit()
	s.learnFrameSize()
	m := new(respFrame)
	for {
		if err := s.rpc.RecvMsg(m); err != nil {
			s.fail(s.recvErr(err))
			return
		}
		s.progress.Add(1)
		bp := m.pooled
		m.pooled = nil // the payload's buffer goes on with it (handle)
		if err := s.handle(&m.LeaseResponse, bp); err != nil {
			s.fail(err)
			return
		}
	}
}

// recvErr maps the error that ended the RPC.
func (s *stream) recvErr(err error) error {
	if s.c.ctx.Err() != nil {
		return ErrClientClosed
	}
	if errors.Is(err, io.EOF) {
		return &Error{Code: codes.Unavailable, Message: "lease stream ended by the server", err: io.ErrUnexpectedEOF}
	}
	return fromStatus(err)
}

// handle routes one server frame; an error kills the stream. bp is the
// pooled buffer of a data frame's bytes (respFrame.pooled), or nil.
func (s *stream) handle(m *poolv1.LeaseResponse, bp *[]byte) error {
	switch f := m.GetFrame().(type) {
	case *poolv1.LeaseResponse_Granted_:
		s.mu.Lock()
		if s.state != stOpening {
			st := s.state
			s.mu.Unlock()
			return protocolError("granted on a stream that is %s", st)
		}
		s.state = stActive
		c := s.cur
		s.mu.Unlock()
		c.grant(f.Granted)
	case *poolv1.LeaseResponse_Data_:
		c, err := s.liveConn("data")
		if err != nil {
			return err
		}
		c.confirm(f.Data.GetUpstreamWritten())
		c.deliver(chunk{f.Data.GetData(), bp})
	case *poolv1.LeaseResponse_CloseWrite_:
		c, err := s.liveConn("close_write")
		if err != nil {
			return err
		}
		c.upstreamEOF()
	case *poolv1.LeaseResponse_Ended_:
		s.mu.Lock()
		if s.state != stActive || s.ended {
			st := s.state
			s.mu.Unlock()
			return protocolError("ended on a stream that is %s", st)
		}
		s.ended = true
		c := s.cur
		done := s.released
		if done {
			s.finishLocked()
		}
		s.mu.Unlock()
		c.confirm(f.Ended.GetUpstreamWritten())
		rerr, werr := endErrs(f.Ended)
		c.remoteEnd(rerr, werr, f.Ended)
		if done {
			s.c.putIdle(s)
		}
	default:
		return protocolError("empty frame")
	}
	return nil
}

// liveConn returns the Conn of a granted lease that has not ended, for a
// frame of the kind named, or a protocol error.
func (s *stream) liveConn(frame string) (*Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stActive || s.ended {
		return nil, protocolError("%s on a stream that is %s", frame, s.state)
	}
	return s.cur, nil
}

// endErrs maps an ended frame to what Read and Write return afterwards.
func endErrs(e *poolv1.LeaseResponse_Ended) (rerr, werr error) {
	switch e.GetReason() {
	case poolv1.EndReason_END_REASON_RELEASED:
		return net.ErrClosed, net.ErrClosed
	case poolv1.EndReason_END_REASON_UPSTREAM_EOF:
		return io.EOF, &EndedError{Reason: e.GetReason(), Message: e.GetMessage()}
	}
	err := &EndedError{Reason: e.GetReason(), Message: e.GetMessage()}
	return err, err
}

// finishLocked ends the current lease: the stream is idle.
func (s *stream) finishLocked() {
	s.state = stIdle
	s.cur = nil
	s.released, s.ended = false, false
	s.settleLocked()
	if s.timer != nil {
		s.timer.Stop()
	}
}

// settleLocked takes a release that waited for ended off the Client's
// count, once.
func (s *stream) settleLocked() {
	if s.settling {
		s.settling = false
		s.c.settled()
	}
}

// release queues c's release. The stream goes back to the cache once the
// server's ended has arrived too; if it does not come within the Client's
// endedTimeout the stream is discarded. On a dead stream it waits for the
// stream's goroutines. inline: the server confirmed (nearly) every byte c
// wrote, so no frame waits on flow control (Conn.sendsInline) and the
// caller sends the release itself.
func (s *stream) release(c *Conn, reusable, inline bool) {
	s.mu.Lock()
	if s.cur != c || s.state != stActive || s.released {
		dead := s.state == stDead
		s.mu.Unlock()
		if dead {
			<-s.donec
		}
		return
	}
	s.released = true
	start := s.queue(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: reusable}}})
	done := s.ended
	if done {
		s.finishLocked()
	} else {
		s.settling = true
		s.c.releasing.Add(1)
		s.timerAt = s.progress.Load()
		if s.timer == nil {
			s.timer = time.AfterFunc(s.c.endedTimeout, s.endedLate)
		} else {
			s.timer.Reset(s.c.endedTimeout)
		}
	}
	s.mu.Unlock()
	s.sendInline(start, inline, 1) // before the stream can carry another lease
	if done {
		s.c.putIdle(s)
	}
}

// endedLate discards the stream if it still waits for ended and made no
// progress since the timer was armed; with progress it waits again.
func (s *stream) endedLate() {
	s.mu.Lock()
	late := s.state == stActive && s.released && !s.ended
	if p := s.progress.Load(); late && p != s.timerAt {
		s.timerAt = p
		s.timer.Reset(s.c.endedTimeout)
		late = false
	}
	s.mu.Unlock()
	if late {
		s.c.warn("poolplane: no ended frame after a release: discarding the stream", "pool", s.pool, "timeout", s.c.endedTimeout)
		s.fail(errEndedTimeout)
	}
}

// fail kills the stream once: it records err, cancels the RPC (its
// goroutines then exit), ends the current lease's Conn with err and drops
// the stream from the cache.
func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.state == stDead {
		s.mu.Unlock()
		return
	}
	s.state = stDead
	s.err = err
	c := s.cur
	s.cur = nil
	s.settleLocked()
	if s.timer != nil {
		s.timer.Stop()
	}
	close(s.deadc)
	s.mu.Unlock()
	s.cancel()
	if c != nil {
		c.remoteEnd(err, err, nil)
	}
	s.c.removeIdle(s)
}

// deadErr returns why the stream died.
func (s *stream) deadErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// String describes the stream for debugging.
func (s *stream) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("stream(%s, %s)", s.pool, s.state)
}
