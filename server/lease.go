package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay"
)

const (
	// MaxDataFrame is the largest data frame a client may send.
	MaxDataFrame = 1 << 20
	// maxClientName bounds Open.client_name.
	maxClientName = 128
)

// frameSizeHeader is the server's header on Lease streams.
var frameSizeHeader = metadata.Pairs(leasewire.FrameSizeKey, strconv.Itoa(MaxDataFrame),
	leasewire.ServerFeaturesKey, leasewire.FeatureOpenData)

// leaseHeader returns the header of Lease streams: the frame size, the
// features the server takes, and the stream limit per connection when it
// is known (n > 0), so that a client holding more leases opens more
// connections.
func leaseHeader(n uint32) metadata.MD {
	if n == 0 {
		return frameSizeHeader
	}
	return metadata.Pairs(leasewire.FrameSizeKey, strconv.Itoa(MaxDataFrame),
		leasewire.ServerFeaturesKey, leasewire.FeatureOpenData,
		leasewire.MaxStreamsKey, strconv.FormatUint(uint64(n), 10))
}

// defaultGrantHold is how long granted may wait for the upstream's first
// bytes, to travel with them (leasewire.FeatureGrantedData): a reply that
// takes longer finds granted sent already.
const defaultGrantHold = time.Millisecond

// clientFrameSize returns the upstream read size for a Lease call: the
// client's leasewire.FrameSizeKey, at least relay.SmallRead and at most
// relay.LargeRead.
func clientFrameSize(ctx context.Context) int {
	v := metadata.ValueFromIncomingContext(ctx, leasewire.FrameSizeKey)
	if len(v) != 1 {
		return relay.SmallRead
	}
	n, err := strconv.Atoi(v[0])
	if err != nil {
		return relay.SmallRead
	}
	return min(max(n, relay.SmallRead), relay.LargeRead)
}

// poolSource is what the lease service needs of the core: the live pool by ID.
type poolSource interface {
	Pool(id string) (*poolmgr.Pool, error)
}

// LeaseServer implements poolv1.LeaseService: each Lease stream carries
// leases one after another, relaying bytes between the stream and the leased
// upstream connection. Its methods are safe for concurrent use.
type LeaseServer struct {
	poolv1.UnimplementedLeaseServiceServer

	pools  poolSource
	logger *slog.Logger
	header metadata.MD // of every Lease stream (leaseHeader)
	// grantHold bounds how long granted waits for the reply to a request
	// that rode in the open (defaultGrantHold).
	grantHold atomic.Int64
	caps      leaseCaps // leases held per principal, for Principal.MaxLeases
	// reauth authenticates a stream again when its principal is revoked
	// (revoke.go); nil without authentication.
	reauth auth.AuthFunc

	stopc    chan struct{} // closed by Shutdown: idle streams end, no new leases
	stopOnce sync.Once
	wg       sync.WaitGroup // the relay goroutines of every stream

	mu      sync.Mutex // protects streams
	streams map[*leaseStream]struct{}
}

var _ poolv1.LeaseServiceServer = (*LeaseServer)(nil)

// NewLeaseServer returns the lease service over the manager's pools.
func NewLeaseServer(m *poolmgr.Manager, logger *slog.Logger) *LeaseServer {
	return newLeaseServer(m, logger)
}

func newLeaseServer(pools poolSource, logger *slog.Logger) *LeaseServer {
	if logger == nil {
		logger = slog.Default()
	}
	s := &LeaseServer{pools: pools, logger: logger, header: frameSizeHeader, stopc: make(chan struct{}), streams: map[*leaseStream]struct{}{}}
	s.grantHold.Store(int64(defaultGrantHold))
	return s
}

// Shutdown stops granting leases: streams without a lease end at once with
// UNAVAILABLE, streams with one end when it is released. It does not wait;
// grpc.Server.GracefulStop waits for the streams, and Wait for the relay
// goroutines. Idempotent.
func (s *LeaseServer) Shutdown() {
	s.stopOnce.Do(func() { close(s.stopc) })
}

// Wait blocks until every relay goroutine has exited.
func (s *LeaseServer) Wait() { s.wg.Wait() }

// EndLeases ends every lease still held with END_REASON_SHUTDOWN and closes
// its upstream connection, for the end of a shutdown's grace period: each
// client is told why before its stream goes. It waits until the ended
// frames are sent, at most until ctx ends.
func (s *LeaseServer) EndLeases(ctx context.Context) {
	s.mu.Lock()
	var cut []*relay.Lease
	for ls := range s.streams {
		if l := ls.cur.Load(); l != nil && l.Cut(relay.Shutdown) {
			cut = append(cut, l)
		}
	}
	s.mu.Unlock()
	for _, l := range cut {
		l.Wait(ctx.Done())
	}
}

// errShutdown ends idle streams when the server stops.
var errShutdown = status.Error(codes.Unavailable, "server shutting down")

// Lease serves one lease stream. The handler goroutine waits while the
// stream's receive loop (one goroutine) reads client frames, acquires, writes
// to the upstream and releases, and each lease's relay reader copies
// upstream bytes to the stream; the reader runs on the handler goroutine
// while it waits (lendReader), so a held lease costs the stream's two
// goroutines and no third. Only one of them sends at a time: granted and
// ended{RELEASED} are sent by the receive loop while no reader runs.
func (s *LeaseServer) Lease(stream poolv1.LeaseService_LeaseServer) error {
	ctx := stream.Context()
	ls := &leaseStream{srv: s, stream: stream, ctx: ctx, principal: PrincipalFromContext(ctx), out: newOutData(),
		donec: make(chan struct{}), idlec: make(chan struct{}, 1), frameSize: clientFrameSize(ctx),
		halfClose: clientTakes(ctx, leasewire.FeatureHalfClose), grantedData: clientTakes(ctx, leasewire.FeatureGrantedData)}
	if s.reauth == nil {
		// The handler goroutine waits for the stream's end; meanwhile it
		// runs the reader of each lease (lendReader). With reauth it
		// watches for revocation instead, and readers run on their own.
		ls.runc = make(chan func())
	}
	// Tell the client it may send large data frames (an older poold does
	// not, and its client keeps to small ones), and how many streams a
	// connection takes. The header goes out with the first response.
	if err := stream.SetHeader(s.header); err != nil {
		return err
	}
	s.mu.Lock()
	s.streams[ls] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, ls)
		s.mu.Unlock()
	}()
	// When the stream ends (the client went away or cancelled, or the
	// server stops), a lease whose upstream write is blocked is cut, so the
	// receive loop sees the end and closes the connection at once.
	stopCut := context.AfterFunc(ctx, func() {
		if l := ls.cur.Load(); l != nil {
			l.Cut(relay.ReasonNone)
		}
	})
	defer stopCut()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ls.err = ls.recvLoop()
		close(ls.donec)
	}()
	if done, err := ls.wait(); done {
		return err
	}
	for {
		ls.mu.Lock()
		ls.stopping = true
		if !ls.busy {
			// No lease and none being opened: end the stream now. The
			// receive loop sends nothing more and exits when RecvMsg fails.
			ls.finished = true
			ls.mu.Unlock()
			return errShutdown
		}
		ls.mu.Unlock()
		select {
		case <-ls.donec:
			return ls.err
		case <-ls.idlec:
		case reader := <-ls.runc:
			reader()
		}
	}
}

// lendReader runs a lease's relay reader on the handler goroutine, which
// has nothing else to do while the lease is held, so a held lease costs no
// goroutine (and stack) of its own. When the handler is not waiting (a
// protocol pool's reset still runs on it, it returned, or it watches for
// revocation) the reader gets a goroutine of its own.
func (ls *leaseStream) lendReader(reader func()) {
	select {
	case ls.runc <- reader:
	default:
		go reader()
	}
}

// leaseStream is the state of one Lease stream.
type leaseStream struct {
	srv    *LeaseServer
	stream poolv1.LeaseService_LeaseServer
	ctx    context.Context

	err   error         // the stream's result, set before donec closes
	donec chan struct{} // closed when the receive loop returns
	idlec chan struct{} // size 1: a nudge to the handler that busy was cleared

	mu       sync.Mutex // protects the following fields and serialises Send
	busy     bool       // a lease is being opened or is held
	stopping bool       // the server is shutting down
	finished bool       // the handler returned: send nothing more
	// principal is the caller (nil without authentication): each open
	// checks its pool patterns and lease cap. Replaced when an auth file
	// reload revokes it (revoke.go).
	principal *Principal
	pool      string // the pool of the lease being opened or held

	// frameSize is the upstream read size, the largest data frame sent:
	// what the client accepts, at most relay.LargeRead.
	frameSize int
	// halfClose: the client takes close_write frames (FeatureHalfClose).
	halfClose bool
	// grantedData: the client takes the first upstream bytes in granted
	// (FeatureGrantedData).
	grantedData bool
	// grant is a granted frame held for the upstream's first bytes, sent
	// with them or before any other frame, or by grantTimer after
	// grantHold; under mu.
	grant      *poolv1.LeaseResponse
	grantTimer *time.Timer
	// granting is set while grant is held, so that the data frames of a
	// lease whose granted went out take no extra lock (Data).
	granting atomic.Bool

	lease *lease // the current lease, or nil; owned by the receive loop
	// cur is lease's relay for the goroutines that cut it (the stream's
	// end, EndLeases); set and cleared by the receive loop.
	cur atomic.Pointer[relay.Lease]
	req inFrame     // the receive loop's frame
	iov net.Buffers // the receive loop's writev scratch

	// reader is the relay's upstream reader, reused by each lease in turn
	// (one runs at a time).
	reader relay.Reader
	// out is the reader goroutine's data frame, reused.
	out *outData
	// runc hands a lease's reader to the handler goroutine while it
	// waits (lendReader); nil when the handler watches for revocation.
	runc chan func()
}

// send sends one frame, a *poolv1.LeaseResponse or an *outData, unless the
// handler has already returned; a granted frame held for the upstream's
// first bytes goes first.
func (ls *leaseStream) send(m any) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.finished {
		return errShutdown
	}
	if err := ls.sendGrantLocked(); err != nil {
		return err
	}
	return ls.stream.SendMsg(m)
}

// holdGrant holds granted g for the upstream's first bytes, at most the
// server's grantHold.
func (ls *leaseStream) holdGrant(g *poolv1.LeaseResponse) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.grant = g
	ls.granting.Store(true)
	if ls.grantTimer == nil {
		ls.grantTimer = time.AfterFunc(time.Duration(ls.srv.grantHold.Load()), ls.grantLate)
	} else {
		ls.grantTimer.Reset(time.Duration(ls.srv.grantHold.Load()))
	}
}

// grantLate sends a granted frame still held when grantHold is over. A
// failed send means the stream is ending: its receive loop sees that.
func (ls *leaseStream) grantLate() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.finished {
		_ = ls.sendGrantLocked()
	}
}

// sendGrantLocked sends a held granted frame.
func (ls *leaseStream) sendGrantLocked() error {
	g := ls.grant
	if g == nil {
		return nil
	}
	ls.grant = nil
	ls.granting.Store(false)
	ls.grantTimer.Stop()
	return ls.stream.SendMsg(g)
}

// sendWithGrant sends upstream bytes in the held granted frame and reports
// whether there was one.
func (ls *leaseStream) sendWithGrant(b []byte, written int64) (bool, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	g := ls.grant
	if g == nil || ls.finished {
		return false, nil
	}
	ls.grant = nil
	ls.granting.Store(false)
	ls.grantTimer.Stop()
	gr := g.GetGranted()
	gr.Data, gr.UpstreamWritten = b, uint64(written)
	err := ls.stream.SendMsg(g)
	gr.Data = nil // b is a relay buffer, back in its pool once sent
	return true, err
}

// setBusy marks a lease being opened (true) or ended (false) and reports
// whether the server is shutting down.
func (ls *leaseStream) setBusy(b bool) (stopping bool) {
	ls.mu.Lock()
	ls.busy = b
	stopping = ls.stopping
	ls.mu.Unlock()
	select {
	case <-ls.srv.stopc:
		// The handler may be running a reader and not have seen it yet.
		stopping = true
	default:
	}
	if !b {
		select {
		case ls.idlec <- struct{}{}:
		default:
		}
	}
	return stopping
}

// clientTakes reports whether the Lease call's metadata lists feature
// under leasewire.FeaturesKey.
func clientTakes(ctx context.Context, feature string) bool {
	for _, v := range metadata.ValueFromIncomingContext(ctx, leasewire.FeaturesKey) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(f) == feature {
				return true
			}
		}
	}
	return false
}

// lease is one granted lease on a stream.
type lease struct {
	conn  *poolmgr.Conn
	relay *relay.Lease
	capc  *atomic.Int64 // the principal's lease count, decremented at its end; nil without a cap
}

// uncap takes the lease off its principal's count, once.
func (l *lease) uncap() {
	if l.capc != nil {
		l.capc.Add(-1)
		l.capc = nil
	}
}

// The leaseStream is the relay's Sink: it turns lease events into frames.
var _ relay.Sink = (*leaseStream)(nil)

// Data sends upstream bytes as a data frame by reference (codec.go).
func (ls *leaseStream) Data(bp *[]byte, n int, written int64) error {
	if ls.granting.Load() {
		if sent, err := ls.sendWithGrant((*bp)[relay.Headroom:relay.Headroom+n], written); sent || err != nil {
			relay.Buffers.Put(bp) // SendMsg encoded the frame: the bytes are copied
			return err
		}
	}
	buf := mem.NewBuffer(bp, relay.Buffers)
	ls.out.set(buf, n, uint64(written))
	err := ls.send(ls.out)
	ls.out.free()
	buf.Free()
	return err
}

// Progress sends a data frame with no bytes, reporting written bytes.
func (ls *leaseStream) Progress(written int64) error {
	return ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{UpstreamWritten: uint64(written)}}})
}

// CloseWrite sends close_write.
func (ls *leaseStream) CloseWrite() error {
	return ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_CloseWrite_{CloseWrite: &poolv1.LeaseResponse_CloseWrite{}}})
}

// Ended sends ended.
func (ls *leaseStream) Ended(e relay.End) error {
	return ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{
		Reason: endReasons[e.Reason], Message: e.Message, Reused: e.Reused, UpstreamWritten: uint64(e.Written)}}})
}

// endReasons maps the relay's end reasons to the wire's.
var endReasons = [...]poolv1.EndReason{
	relay.ReasonNone:       poolv1.EndReason_END_REASON_UNSPECIFIED,
	relay.Released:         poolv1.EndReason_END_REASON_RELEASED,
	relay.UpstreamEOF:      poolv1.EndReason_END_REASON_UPSTREAM_EOF,
	relay.UpstreamError:    poolv1.EndReason_END_REASON_UPSTREAM_ERROR,
	relay.Revoked:          poolv1.EndReason_END_REASON_REVOKED,
	relay.MaxLeaseDuration: poolv1.EndReason_END_REASON_MAX_LEASE_DURATION,
	relay.Shutdown:         poolv1.EndReason_END_REASON_SHUTDOWN,
}

func protocolError(msg string) error {
	return newStatus(codes.InvalidArgument, poolv1.ErrorReason_PROTOCOL_VIOLATION, msg, nil)
}

// recvLoop reads client frames until the stream ends.
func (ls *leaseStream) recvLoop() (err error) {
	req := &ls.req
	defer func() {
		req.free()
		if l := ls.lease; l != nil {
			// The stream died without release: the connection's state is
			// unknown, so it is closed, not reused.
			ls.abandon(l)
		}
	}()
	for {
		// The lease codec decodes data frames by reference (codec.go):
		// their bytes are written to the upstream, then freed here.
		req.free()
		if err := ls.stream.RecvMsg(req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch f := req.Frame.(type) {
		case *poolv1.LeaseRequest_Open_:
			if ls.lease != nil {
				return protocolError("open while a lease is held: send release first")
			}
			if ls.setBusy(true) {
				return errShutdown
			}
			if err := ls.open(f.Open); err != nil {
				return err
			}
			if d := f.Open.GetData(); len(d) > 0 {
				// As a data frame right behind the open.
				ls.lease.relay.Write(net.Buffers{d})
			}
		case *poolv1.LeaseRequest_Data_:
			l := ls.lease
			if l == nil {
				return protocolError("data before open")
			}
			p := req.payload
			if len(p) == 0 { // decoded by plain proto: no lease codec
				p = mem.BufferSlice{mem.SliceBuffer(f.Data.GetData())}
			}
			n := p.Len()
			if n > MaxDataFrame {
				return protocolError("data frame larger than 1 MiB")
			}
			ls.iov = ls.iov[:0]
			for _, b := range p {
				ls.iov = append(ls.iov, b.ReadOnlyData())
			}
			l.relay.Write(ls.iov) // consumes a copy of the slice header
			clear(ls.iov)
		case *poolv1.LeaseRequest_CloseWrite_:
			l := ls.lease
			if l == nil {
				return protocolError("close_write before open")
			}
			if !l.relay.HalfCloseDrain() {
				l.relay.CloseWrite()
			}
		case *poolv1.LeaseRequest_Release_:
			l := ls.lease
			if l == nil {
				return protocolError("release without a lease")
			}
			if err := ls.release(l, f.Release.GetReusable()); err != nil {
				return err
			}
		default:
			return protocolError("empty frame")
		}
	}
}

// open acquires a connection, sends granted and starts the reader.
func (ls *leaseStream) open(o *poolv1.LeaseRequest_Open) error {
	id := strings.TrimPrefix(o.GetPool(), "pools/")
	if err := poolmgr.ValidatePoolID(id); err != nil {
		return invalidArgument("open.pool", err.Error())
	}
	holder := o.GetClientName()
	if err := validateClientName(holder); err != nil {
		return invalidArgument("open.client_name", err.Error())
	}
	if len(o.GetData()) > MaxDataFrame {
		return protocolError("open.data larger than 1 MiB")
	}
	principal, err := ls.openAs(id)
	if err != nil {
		return err
	}
	if err := checkPoolOf(principal, id); err != nil {
		return err
	}
	p, err := ls.srv.pools.Pool(id)
	if err != nil {
		return toStatus(err)
	}
	var timeout time.Duration // the client's acquire_timeout; the pool caps it
	if d := o.GetAcquireTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return invalidArgument("open.acquire_timeout", "must be a non-negative duration")
		}
		timeout = d.AsDuration()
	}
	caps := &ls.srv.caps
	if principal != nil && principal.caps != nil {
		caps = principal.caps // shared with the pool listeners
	}
	capc, err := caps.take(principal)
	if err != nil {
		return err
	}
	c, err := p.AcquireWithin(ls.ctx, holder, timeout)
	if err != nil {
		if capc != nil {
			capc.Add(-1)
		}
		return toStatus(err)
	}
	info := c.Info()
	l := &lease{conn: c, capc: capc}
	ls.srv.wg.Add(1)
	l.relay = relay.New(c, ls, relay.Options{ReadSize: ls.frameSize, HalfClose: ls.halfClose,
		Reader: &ls.reader, Done: ls.srv.wg.Done, Go: ls.lendReader})
	ls.lease = l
	ls.cur.Store(l.relay)
	if ls.ctx.Err() != nil {
		l.relay.Cut(relay.ReasonNone) // the stream ended while acquiring
	}
	g := &poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Granted_{Granted: &poolv1.LeaseResponse_Granted{
		LeaseId:      "pools/" + id + "/leases/" + info.LeaseID,
		UpstreamAddr: info.UpstreamAddr,
		Reused:       info.Reused,
		IdleTime:     durationpb.New(info.IdleTime),
		ConnAge:      durationpb.New(info.ConnAge),
		WaitTime:     durationpb.New(info.WaitTime),
		Generation:   info.Generation,
		Protocol:     protocolToProto(info.Protocol),
	}}}
	if ls.grantedData && len(o.GetData()) > 0 {
		// A request rode in the open: granted waits briefly for its reply.
		ls.holdGrant(g)
		l.relay.Start()
		return nil
	}
	err = ls.send(g)
	if err != nil {
		l.relay.NotStarted()
		ls.srv.wg.Done()
		return err // recvLoop's defer abandons the lease
	}
	l.relay.Start()
	return nil
}

// release ends the current lease at the client's request (the relay
// decides reuse and sends ended).
func (ls *leaseStream) release(l *lease, reusable bool) error {
	err := l.relay.Release(reusable)
	ls.lease = nil
	ls.cur.Store(nil)
	l.uncap()
	if ls.setBusy(false) && err == nil {
		return errShutdown
	}
	return err
}

// abandon closes the connection of a lease whose stream ended without
// release.
func (ls *leaseStream) abandon(l *lease) {
	l.relay.Abandon()
	ls.lease = nil
	ls.cur.Store(nil)
	l.uncap()
}
