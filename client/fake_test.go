package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// fakeServer is an in-process LeaseService and StatsService that follows
// lease.proto like the real server: granted, data, ended; ended after a
// release unless the upstream ended first; a release after the server's
// ended is accepted silently. Each lease gets a fresh upstream from
// newUpstream (a net.Pipe by default); the test gets the far end from
// leases.
type fakeServer struct {
	poolv1.UnimplementedLeaseServiceServer
	poolv1.UnimplementedStatsServiceServer

	addr string

	// Set before the first call.
	newUpstream func() (near, far net.Conn, err error)
	// onOpen, if set, runs for every open; an error ends the stream.
	onOpen func(ctx context.Context, o *poolv1.LeaseRequest_Open) error
	// zeroRTT makes the fake read the frame after open (which must be
	// data) before it grants.
	zeroRTT bool
	// noEnded suppresses the ended frame after a release.
	noEnded bool
	// endAfterRelease ends the stream with UNAVAILABLE right after ended.
	endAfterRelease bool
	// dataBeforeGranted sends a data frame before granted.
	dataBeforeGranted bool
	// noWriteReports leaves client bytes written unconfirmed until ended,
	// as when the upstream's reply overtakes poold's count.
	noWriteReports bool
	// endedDelay holds the ended frame after a release that long, as a
	// paused or distant server does.
	endedDelay time.Duration
	// token, if set, is the bearer token every call must carry.
	token string
	// health is the fake's gRPC health service; "" is SERVING at start.
	health *health.Server

	streams   atomic.Int32
	leaseN    atomic.Int64
	leases    chan *fakeLease // every granted lease
	releases  chan bool       // the reusable flag of every release
	cws       chan struct{}   // a close_write frame arrived
	zeroData  chan []byte     // the 0-RTT data
	streamEnd chan error      // every Lease handler's result
}

// fakeLease is one granted lease of the fake.
type fakeLease struct {
	near, far net.Conn
	revoked   atomic.Bool
	releasing atomic.Bool
	ended     atomic.Bool
	written   atomic.Int64 // client bytes written to near, as poold's upstream_written
	wmu       sync.Mutex   // held across a write to near and its count, as poold's relay does
	readerc   chan struct{}
}

// revoke ends the lease from the server's side with END_REASON_REVOKED.
func (l *fakeLease) revoke() {
	l.revoked.Store(true)
	l.near.Close()
}

func newFake(t testing.TB, opts ...grpc.ServerOption) *fakeServer {
	t.Helper()
	f := &fakeServer{
		newUpstream: func() (net.Conn, net.Conn, error) { a, b := net.Pipe(); return a, b, nil },
		leases:      make(chan *fakeLease, 1<<16),
		releases:    make(chan bool, 1<<16),
		cws:         make(chan struct{}, 16),
		zeroData:    make(chan []byte, 16),
		streamEnd:   make(chan error, 1<<16),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	auth := func(ctx context.Context) error {
		if f.token == "" {
			return nil
		}
		md, _ := metadata.FromIncomingContext(ctx)
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
			return fakeStatus(codes.Unauthenticated, "UNAUTHENTICATED", "bad token", nil)
		}
		return nil
	}
	srv := grpc.NewServer(append([]grpc.ServerOption{
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if info.FullMethod == healthpb.Health_Watch_FullMethodName {
				return h(srv, ss) // public, as on poold
			}
			if err := auth(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := auth(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
	}, opts...)...)
	poolv1.RegisterLeaseServiceServer(srv, f)
	poolv1.RegisterStatsServiceServer(srv, f)
	f.health = health.NewServer()
	healthpb.RegisterHealthServer(srv, f.health)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f
}

// fakeStatus builds a status error like the server's newStatus.
func fakeStatus(code codes.Code, reason, msg string, md map[string]string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	all := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: "poolplane.dev", Metadata: md}}, details...)
	st, err := st.WithDetails(all...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func (f *fakeServer) Lease(stream grpc.BidiStreamingServer[poolv1.LeaseRequest, poolv1.LeaseResponse]) (err error) {
	f.streams.Add(1)
	defer func() { f.streamEnd <- err }()
	var (
		sendMu sync.Mutex
		cur    *fakeLease
	)
	send := func(m *poolv1.LeaseResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	// ended counts what was written once no write is in progress, as
	// poold does: a write the upstream answered before it was counted is
	// counted.
	ended := func(l *fakeLease, r poolv1.EndReason) *poolv1.LeaseResponse {
		l.wmu.Lock()
		w := l.written.Load()
		l.wmu.Unlock()
		return &poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{
			Reason: r, UpstreamWritten: uint64(w)}}}
	}
	// write writes client bytes to the lease's upstream and reports them
	// written, as poold does; nothing is written or reported after the
	// lease ended upstream.
	write := func(l *fakeLease, b []byte) {
		l.wmu.Lock()
		defer l.wmu.Unlock()
		if l.ended.Load() {
			return
		}
		n, _ := l.near.Write(b)
		if n > 0 {
			w := l.written.Add(int64(n))
			if f.noWriteReports {
				return
			}
			send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{UpstreamWritten: uint64(w)}}})
		}
	}
	defer func() {
		if cur != nil {
			cur.releasing.Store(true)
			cur.near.Close()
			<-cur.readerc
		}
	}()
	protocol := func(msg string) error {
		return fakeStatus(codes.InvalidArgument, "PROTOCOL_VIOLATION", msg, nil)
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch fr := req.GetFrame().(type) {
		case *poolv1.LeaseRequest_Open_:
			if cur != nil {
				return protocol("open while a lease is held")
			}
			if f.onOpen != nil {
				if err := f.onOpen(stream.Context(), fr.Open); err != nil {
					return err
				}
			}
			var early []byte
			if f.zeroRTT {
				next, err := stream.Recv()
				if err != nil {
					return err
				}
				early = next.GetData().GetData()
				if early == nil {
					return protocol("want 0-RTT data")
				}
				f.zeroData <- early
			}
			near, far, err := f.newUpstream()
			if err != nil {
				return fakeStatus(codes.Unavailable, "UPSTREAM_UNAVAILABLE", err.Error(), nil)
			}
			l := &fakeLease{near: near, far: far, readerc: make(chan struct{})}
			cur = l
			if f.dataBeforeGranted {
				send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: []byte("x")}}})
			}
			n := f.leaseN.Add(1)
			pool := strings.TrimPrefix(fr.Open.GetPool(), "pools/")
			if err := send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Granted_{Granted: &poolv1.LeaseResponse_Granted{
				LeaseId:      fmt.Sprintf("pools/%s/leases/%d", pool, n),
				UpstreamAddr: "192.0.2.1:6379",
				Reused:       n > 1,
				IdleTime:     durationpb.New(time.Second),
				ConnAge:      durationpb.New(time.Minute),
				WaitTime:     durationpb.New(time.Millisecond),
				Generation:   3,
			}}}); err != nil {
				close(l.readerc) // no reader started: the deferred wait must not block
				return err
			}
			f.leases <- l
			go func() {
				defer close(l.readerc)
				buf := make([]byte, 32<<10)
				for {
					n, err := l.near.Read(buf)
					if n > 0 {
						if send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: append([]byte(nil), buf[:n]...)}}}) != nil {
							return
						}
					}
					if err != nil {
						if l.releasing.Load() {
							return
						}
						l.ended.Store(true)
						l.near.Close() // wakes a write blocked on the upstream
						reason := poolv1.EndReason_END_REASON_UPSTREAM_ERROR
						switch {
						case l.revoked.Load():
							reason = poolv1.EndReason_END_REASON_REVOKED
						case errors.Is(err, io.EOF):
							reason = poolv1.EndReason_END_REASON_UPSTREAM_EOF
						}
						send(ended(l, reason))
						return
					}
				}
			}()
			if len(early) > 0 {
				write(l, early)
			}
		case *poolv1.LeaseRequest_Data_:
			if cur == nil {
				return protocol("data before open")
			}
			write(cur, fr.Data.GetData())
		case *poolv1.LeaseRequest_CloseWrite_:
			if cur == nil {
				return protocol("close_write before open")
			}
			f.cws <- struct{}{}
			if cw, ok := cur.near.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		case *poolv1.LeaseRequest_Release_:
			if cur == nil {
				return protocol("release without a lease")
			}
			l := cur
			cur = nil
			l.releasing.Store(true)
			l.near.SetReadDeadline(time.Unix(1, 0))
			<-l.readerc
			l.near.Close()
			f.releases <- fr.Release.GetReusable()
			if !l.ended.Load() && !f.noEnded {
				if f.endedDelay > 0 {
					<-time.After(f.endedDelay)
				}
				if err := send(ended(l, poolv1.EndReason_END_REASON_RELEASED)); err != nil {
					return err
				}
			}
			if f.endAfterRelease {
				return status.Error(codes.Unavailable, "going away")
			}
		default:
			return protocol("empty frame")
		}
	}
}

func (f *fakeServer) GetPoolStats(_ context.Context, req *poolv1.GetPoolStatsRequest) (*poolv1.PoolStats, error) {
	if req.GetName() != "pools/api" {
		return nil, fakeStatus(codes.NotFound, "POOL_NOT_FOUND", "no pool "+req.GetName(), map[string]string{"pool": req.GetName()})
	}
	return &poolv1.PoolStats{Name: req.GetName(), Time: timestamppb.Now(), MaxConnections: 4}, nil
}

func (f *fakeServer) WatchPoolStats(req *poolv1.WatchPoolStatsRequest, stream grpc.ServerStreamingServer[poolv1.WatchPoolStatsResponse]) error {
	if req.GetInterval().AsDuration() != 100*time.Millisecond {
		return fakeStatus(codes.InvalidArgument, "INVALID_ARGUMENT", "interval", nil)
	}
	for i := range 3 {
		resp := &poolv1.WatchPoolStatsResponse{}
		for _, n := range req.GetNames() {
			resp.Stats = append(resp.Stats, &poolv1.PoolStats{Name: n, Acquires: uint64(i)})
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	if len(req.GetNames()) == 0 {
		return nil // ends the stream
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// newTestClient returns a Client of f, closed at cleanup.
func newTestClient(t testing.TB, f *fakeServer, opts ...Option) *Client {
	t.Helper()
	c, err := New(f.addr, append([]Option{WithInsecure(), WithClientName("test")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// leaseAPI leases a connection of pool "api" from c, failing the test on
// error.
func leaseAPI(t testing.TB, c *Client) *Conn {
	t.Helper()
	conn, err := c.Lease(context.Background(), "api")
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// idleSignal makes c report every stream joining its cache.
func idleSignal(c *Client) <-chan string {
	ch := make(chan string, 1<<16)
	c.testHookIdle = func(pool string) { ch <- pool }
	return ch
}

// tcpUpstream returns a newUpstream over loopback TCP.
func tcpUpstream(t testing.TB) func() (net.Conn, net.Conn, error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	return func() (net.Conn, net.Conn, error) {
		near, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			return nil, nil, err
		}
		far, err := lis.Accept()
		if err != nil {
			near.Close()
			return nil, nil, err
		}
		return near, far, nil
	}
}
