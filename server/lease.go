package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
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
	"github.com/poolplane/poolplane/poolmgr"
)

const (
	// smallRelay is the upstream read size for a client that does not
	// say it takes larger data frames, and on TLS upstreams. Such a
	// client may decode with grpc-go's proto codec, and an encoded frame
	// must then fit grpc-go's 32 KiB buffer tier: one byte more and every
	// message takes (and zeroes) a 1 MiB buffer, a tenfold slowdown.
	smallRelay = 32<<10 - 64
	// largeRelay is the upstream read size, the largest data frame sent,
	// for a client that takes large frames: fewer, larger messages cost
	// less per byte at every step of the relay. With the headroom it is one
	// of bufPool's sizes (codec.go). On a TCP upstream a lease does not
	// hold the buffer while it waits for bytes (upstreamReader).
	largeRelay = 256<<10 - relayHeadroom
	// MaxDataFrame is the largest data frame a client may send.
	MaxDataFrame = 1 << 20
	// maxClientName bounds Open.client_name.
	maxClientName = 128
)

// frameSizeKey is the metadata key by which each side of a Lease stream
// says how large a data frame it takes: the largest payload, in decimal
// bytes. The client sends it with the call, the server in its header. A
// side that does not send it (an older one) is sent frames of at most
// smallRelay bytes.
const frameSizeKey = "poolplane-max-data-frame"

// frameSizeHeader is the server's header on Lease streams.
var frameSizeHeader = metadata.Pairs(frameSizeKey, strconv.Itoa(MaxDataFrame))

// clientFrameSize returns the upstream read size for a Lease call: the
// client's frameSizeKey, at least smallRelay and at most largeRelay.
func clientFrameSize(ctx context.Context) int {
	v := metadata.ValueFromIncomingContext(ctx, frameSizeKey)
	if len(v) != 1 {
		return smallRelay
	}
	n, err := strconv.Atoi(v[0])
	if err != nil {
		return smallRelay
	}
	return min(max(n, smallRelay), largeRelay)
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
	caps   leaseCaps // leases held per principal, for Principal.MaxLeases
	// reauth authenticates a stream again when its principal is revoked
	// (revoke.go); nil without authentication.
	reauth auth.AuthFunc

	stopc    chan struct{} // closed by Shutdown: idle streams end, no new leases
	stopOnce sync.Once
	wg       sync.WaitGroup // the relay goroutines of every stream
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
	return &LeaseServer{pools: pools, logger: logger, stopc: make(chan struct{})}
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

// errShutdown ends idle streams when the server stops.
var errShutdown = status.Error(codes.Unavailable, "server shutting down")

// Lease serves one lease stream. The handler goroutine waits while the
// stream's receive loop (one goroutine) reads client frames, acquires, writes
// to the upstream and releases, and a reader goroutine per lease copies
// upstream bytes to the stream. Only one of them sends at a time: granted and
// ended{RELEASED} are sent by the receive loop while no reader runs.
func (s *LeaseServer) Lease(stream poolv1.LeaseService_LeaseServer) error {
	ctx := stream.Context()
	ls := &leaseStream{srv: s, stream: stream, ctx: ctx, principal: PrincipalFromContext(ctx),
		donec: make(chan struct{}), idlec: make(chan struct{}, 1), frameSize: clientFrameSize(ctx)}
	// Tell the client it may send large data frames (an older poold does
	// not, and its client keeps to small ones). The header goes out with
	// the first response.
	if err := stream.SetHeader(frameSizeHeader); err != nil {
		return err
	}
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
		}
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
	// what the client accepts, at most largeRelay.
	frameSize int

	lease *lease      // the current lease, or nil; owned by the receive loop
	req   inFrame     // the receive loop's frame
	iov   net.Buffers // the receive loop's writev scratch

	// upstream is the reader goroutine's, reused by each lease's reader
	// in turn (one runs at a time).
	upstream upstreamReader
}

// send sends one frame, a *poolv1.LeaseResponse or an *outData, unless the
// handler has already returned.
func (ls *leaseStream) send(m any) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.finished {
		return errShutdown
	}
	return ls.stream.SendMsg(m)
}

// setBusy marks a lease being opened (true) or ended (false) and reports
// whether the server is shutting down.
func (ls *leaseStream) setBusy(b bool) (stopping bool) {
	ls.mu.Lock()
	ls.busy = b
	stopping = ls.stopping
	ls.mu.Unlock()
	if !b {
		select {
		case ls.idlec <- struct{}{}:
		default:
		}
	}
	return stopping
}

// lease is one granted lease on a stream.
type lease struct {
	conn    *poolmgr.Conn
	nc      net.Conn
	readerc chan struct{} // closed when the reader goroutine exits

	// Set by the reader before it exits; read after readerc closes.
	readErr error

	capc      *atomic.Int64 // the principal's lease count, decremented at release; nil without a cap
	releasing atomic.Bool   // the client released: a read deadline stops the reader
	ended     atomic.Bool   // ended was sent (by the reader) or the lease is over
	finish    sync.Once     // the Release of conn
	broken    bool          // a write or close_write failed or half-closed: never reuse
	bytesOut  atomic.Int64
	bytesIn   atomic.Int64
}

// release hands the connection back once.
func (l *lease) release(reusable bool) {
	l.finish.Do(func() {
		l.conn.AddBytes(l.bytesIn.Load(), l.bytesOut.Load())
		l.conn.Release(reusable)
		if l.capc != nil {
			l.capc.Add(-1)
		}
	})
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
			if l.ended.Load() || l.broken {
				continue // the lease ended upstream; the client has not seen it yet
			}
			var err error
			if ls.iov, err = writePayload(l.nc, p, ls.iov); err != nil {
				l.broken = true
				_ = l.nc.Close() // the reader reports the end
				continue
			}
			l.bytesOut.Add(int64(n))
		case *poolv1.LeaseRequest_CloseWrite_:
			l := ls.lease
			if l == nil {
				return protocolError("close_write before open")
			}
			if l.ended.Load() || l.broken {
				continue
			}
			l.broken = true
			if cw, ok := l.nc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
				_ = l.nc.Close()
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
	ctx := ls.ctx
	var cancel context.CancelFunc
	if d := o.GetAcquireTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return invalidArgument("open.acquire_timeout", "must be a non-negative duration")
		}
		if t := d.AsDuration(); t > 0 && t < p.Config().Limits.AcquireTimeout {
			ctx, cancel = context.WithTimeout(ctx, t)
		}
	}
	capc, err := ls.srv.caps.take(principal)
	if err != nil {
		if cancel != nil {
			cancel()
		}
		return err
	}
	c, err := p.Acquire(ctx, holder)
	if cancel != nil {
		cancel()
	}
	if err != nil {
		if capc != nil {
			capc.Add(-1)
		}
		if cancel != nil && errors.Is(err, context.DeadlineExceeded) && ls.ctx.Err() == nil {
			st := p.Stats()
			err = &poolmgr.AcquireError{Err: poolmgr.ErrAcquireTimeout, Pool: id, Snapshot: poolmgr.Snapshot{
				Max: st.Max, Total: st.Total, InUse: st.InUse, Idle: st.Idle, Waiters: st.Waiters}}
		}
		return toStatus(err)
	}
	info := c.Info()
	l := &lease{conn: c, nc: c.NetConn(), readerc: make(chan struct{}), capc: capc}
	ls.lease = l
	err = ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Granted_{Granted: &poolv1.LeaseResponse_Granted{
		LeaseId:      "pools/" + id + "/leases/" + info.LeaseID,
		UpstreamAddr: info.UpstreamAddr,
		Reused:       info.Reused,
		IdleTime:     durationpb.New(info.IdleTime),
		ConnAge:      durationpb.New(info.ConnAge),
		WaitTime:     durationpb.New(info.WaitTime),
		Generation:   info.Generation,
	}}})
	if err != nil {
		close(l.readerc)
		return err // recvLoop's defer abandons the lease
	}
	ls.srv.wg.Add(1)
	go func() {
		defer ls.srv.wg.Done()
		ls.relayUpstream(l)
	}()
	return nil
}

// relayUpstream copies upstream bytes into data frames until the upstream
// ends or the client releases. On an upstream end it sends ended itself and
// closes the connection, so the client learns of it at once.
func (ls *leaseStream) relayUpstream(l *lease) {
	defer close(l.readerc)
	msg := newOutData()
	r := &ls.upstream
	r.reset(l.nc, ls.frameSize)
	for {
		// A fresh buffer per read: gRPC holds the last one until it is
		// written (the codec sends it by reference), then it goes back to
		// relayBufs.
		bp, n, err := r.read()
		if n > 0 {
			buf := mem.NewBuffer(bp, relayBufs)
			l.bytesIn.Add(int64(n))
			msg.set(buf, n)
			serr := ls.send(msg)
			msg.free()
			buf.Free()
			if serr != nil {
				l.readErr = serr
				return
			}
		}
		if err == nil {
			continue
		}
		l.readErr = err
		if l.releasing.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
			return // stopped by release: the receive loop sends ended
		}
		reason := poolv1.EndReason_END_REASON_UPSTREAM_ERROR
		select {
		case <-l.conn.Done():
			reason = poolv1.EndReason_END_REASON_REVOKED
		default:
			if errors.Is(err, io.EOF) {
				reason = poolv1.EndReason_END_REASON_UPSTREAM_EOF
			}
		}
		if l.releasing.Load() {
			return // the receive loop is ending the lease and sends ended
		}
		l.ended.Store(true)
		l.release(false)
		msg := ""
		if reason == poolv1.EndReason_END_REASON_UPSTREAM_ERROR {
			msg = err.Error()
		}
		_ = ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{Reason: reason, Message: msg}}})
		return
	}
}

// release ends the current lease at the client's request: it stops the
// reader, returns the connection and sends ended (unless the reader already
// ended the lease).
func (ls *leaseStream) release(l *lease, reusable bool) error {
	l.releasing.Store(true)
	alreadyEnded := l.ended.Load()
	if !alreadyEnded {
		// Wake the reader without closing the connection.
		if err := l.nc.SetReadDeadline(time.Unix(1, 0)); err != nil {
			l.broken = true
			_ = l.nc.Close()
		}
	}
	<-l.readerc
	ls.lease = nil
	clean := reusable && !l.broken && errors.Is(l.readErr, os.ErrDeadlineExceeded) && !alreadyEnded && !l.ended.Load()
	if clean {
		if err := l.nc.SetReadDeadline(time.Time{}); err != nil {
			clean = false
		}
	}
	sendEnded := !alreadyEnded && !l.ended.Load()
	l.ended.Store(true)
	l.release(clean)
	var err error
	if sendEnded {
		err = ls.send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{
			Reason: poolv1.EndReason_END_REASON_RELEASED, Reused: clean}}})
	}
	if ls.setBusy(false) && err == nil {
		return errShutdown
	}
	return err
}

// abandon closes the connection of a lease whose stream ended without
// release.
func (ls *leaseStream) abandon(l *lease) {
	l.releasing.Store(true)
	l.ended.Store(true)
	_ = l.nc.Close()
	<-l.readerc
	l.release(false)
	ls.lease = nil
}
