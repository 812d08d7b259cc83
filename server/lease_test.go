package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/internal/testkit"
)

// echoUpstream is a loopback TCP echo server that counts its connections.
type echoUpstream struct {
	address  string
	accepted atomic.Int64
	mu       sync.Mutex // protects conns
	conns    []net.Conn
}

func newEchoUpstream(t testing.TB) *echoUpstream {
	t.Helper()
	u := &echoUpstream{}
	u.address = testkit.Serve(t, func(c net.Conn) {
		u.accepted.Add(1)
		u.mu.Lock()
		u.conns = append(u.conns, c)
		u.mu.Unlock()
		testkit.EchoConn(c)
	})
	return u
}

func (u *echoUpstream) addr() string { return u.address }

// closeConns closes every accepted connection (an upstream restart).
func (u *echoUpstream) closeConns() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.conns {
		c.Close()
	}
	u.conns = nil
}

type leaseEnv struct {
	mgr    *poolmgr.Manager
	srv    *LeaseServer
	client poolv1.LeaseServiceClient
	up     *echoUpstream
}

// newLeaseEnv starts a manager over a real store, a gRPC server with the
// lease service on 127.0.0.1:0 and one pool "echo" in front of an echo
// upstream. opts configure the gRPC server.
func newLeaseEnv(t testing.TB, cfg poolmgr.Config, opts ...grpc.ServerOption) *leaseEnv {
	t.Helper()
	mgr := harness.Manager(t, store.Options{NoSync: true}, nil, nil)
	up := newEchoUpstream(t)
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []string{up.addr()}
	}
	if _, err := mgr.Create(context.Background(), "echo", cfg, poolmgr.WriteOptions{Actor: "test"}); err != nil {
		t.Fatal(err)
	}
	ls := newLeaseServer(mgr, nil)
	gs := grpc.NewServer(opts...)
	poolv1.RegisterLeaseServiceServer(gs, ls)
	addr := harness.Serve(t, gs, ls, false)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &leaseEnv{mgr: mgr, srv: ls, client: poolv1.NewLeaseServiceClient(cc), up: up}
}

// open starts a lease stream on ctx and asks for a lease on pool "echo".
func (e *leaseEnv) open(ctx context.Context, t testing.TB) poolv1.LeaseService_LeaseClient {
	t.Helper()
	s, err := e.client.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, s, openFrame("echo"))
	return s
}

// leaseGranted opens a lease on pool "echo" and waits for the grant.
func (e *leaseEnv) leaseGranted(ctx context.Context, t testing.TB) (poolv1.LeaseService_LeaseClient, *poolv1.LeaseResponse_Granted) {
	t.Helper()
	s := e.open(ctx, t)
	return s, recvGranted(t, s)
}

// lease opens a lease on pool "echo" and waits for the grant.
func (e *leaseEnv) lease(ctx context.Context, t testing.TB) poolv1.LeaseService_LeaseClient {
	t.Helper()
	s, _ := e.leaseGranted(ctx, t)
	return s
}

func openFrame(pool string) *poolv1.LeaseRequest {
	return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: pool, ClientName: "test"}}}
}

func dataFrame(b []byte) *poolv1.LeaseRequest {
	return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: b}}}
}

func releaseFrame(reusable bool) *poolv1.LeaseRequest {
	return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: reusable}}}
}

func closeWriteFrame() *poolv1.LeaseRequest {
	return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_CloseWrite_{CloseWrite: &poolv1.LeaseRequest_CloseWrite{}}}
}

func mustSend(t testing.TB, s poolv1.LeaseService_LeaseClient, m *poolv1.LeaseRequest) {
	t.Helper()
	if err := s.Send(m); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// readEcho receives data frames until n bytes arrived.
func readEcho(t testing.TB, s poolv1.LeaseService_LeaseClient, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		d := m.GetData()
		if d == nil {
			t.Fatalf("want data, got %v", m)
		}
		got = append(got, d.GetData()...)
	}
	return got
}

// recvFrame receives one message and returns the frame get picks from it,
// failing the test when the stream fails or the message is another frame.
func recvFrame[F any](t testing.TB, s poolv1.LeaseService_LeaseClient, what string, get func(*poolv1.LeaseResponse) *F) *F {
	t.Helper()
	m, err := s.Recv()
	if err != nil {
		t.Fatalf("recv %s: %v", what, err)
	}
	f := get(m)
	if f == nil {
		t.Fatalf("want %s, got %v", what, m)
	}
	return f
}

func recvGranted(t testing.TB, s poolv1.LeaseService_LeaseClient) *poolv1.LeaseResponse_Granted {
	t.Helper()
	return recvFrame(t, s, "granted", (*poolv1.LeaseResponse).GetGranted)
}

func recvEnded(t testing.TB, s poolv1.LeaseService_LeaseClient) *poolv1.LeaseResponse_Ended {
	t.Helper()
	return recvFrame(t, s, "ended", (*poolv1.LeaseResponse).GetEnded)
}

// wantStatus receives until the stream ends and checks its code and reason.
func wantStatus(t testing.TB, s poolv1.LeaseService_LeaseClient, code codes.Code, reason poolv1.ErrorReason) {
	t.Helper()
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		st := status.Convert(err)
		if st.Code() != code {
			t.Fatalf("code = %v (%v), want %v", st.Code(), err, code)
		}
		var infos []*errdetails.ErrorInfo
		for _, d := range st.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok {
				infos = append(infos, ei)
			}
		}
		if len(infos) != 1 || infos[0].GetReason() != reason.String() || infos[0].GetDomain() != ErrorDomain {
			t.Fatalf("error infos = %v, want one with reason %v", infos, reason)
		}
		return
	}
}

// waitInUse waits until the pool's in-use count equals n.
func waitInUse(t testing.TB, mgr *poolmgr.Manager, n int) {
	t.Helper()
	p, err := mgr.Pool("echo")
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitChanged(t, 10*time.Second, fmt.Sprintf("%d in use", n), p.Changed,
		func() bool { return p.Stats().InUse == n }, func() string { return fmt.Sprintf("in use = %d", p.Stats().InUse) })
}

// waitWaiters waits until the pool has n queued acquirers.
func waitWaiters(t testing.TB, p *poolmgr.Pool, n int) {
	t.Helper()
	testkit.WaitChanged(t, 10*time.Second, fmt.Sprintf("%d waiters", n), p.Changed,
		func() bool { return p.Stats().Waiters == n }, func() string { return fmt.Sprintf("waiters = %d", p.Stats().Waiters) })
}

func TestLeaseEchoAndStreamReuse(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{Limits: poolmgr.Limits{MaxConnections: 2}})
	s, err := e.client.Lease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		// 0-RTT: data right behind open, before granted.
		mustSend(t, s, openFrame("pools/echo"))
		msg := []byte("hello " + string(rune('a'+i)))
		mustSend(t, s, dataFrame(msg))
		g := recvGranted(t, s)
		if g.GetLeaseId() == "" || g.GetUpstreamAddr() != e.up.addr() {
			t.Fatalf("granted = %v", g)
		}
		if want := i > 0; g.GetReused() != want {
			t.Fatalf("lease %d: reused = %v, want %v", i, g.GetReused(), want)
		}
		if got := readEcho(t, s, len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("echo = %q, want %q", got, msg)
		}
		mustSend(t, s, releaseFrame(true))
		end := recvEnded(t, s)
		if end.GetReason() != poolv1.EndReason_END_REASON_RELEASED || !end.GetReused() {
			t.Fatalf("ended = %v", end)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want EOF", err)
	}
	if n := e.up.accepted.Load(); n != 1 {
		t.Fatalf("upstream accepted %d connections for 5 sequential leases, want 1", n)
	}
}

func TestLeaseProtocolViolations(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{})
	tests := []struct {
		name   string
		frames []*poolv1.LeaseRequest
		// granted is how many granted frames precede the error.
		granted int
	}{
		{"data before open", []*poolv1.LeaseRequest{dataFrame([]byte("x"))}, 0},
		{"release before open", []*poolv1.LeaseRequest{releaseFrame(true)}, 0},
		{"close_write before open", []*poolv1.LeaseRequest{closeWriteFrame()}, 0},
		{"empty frame", []*poolv1.LeaseRequest{{}}, 0},
		{"second open while held", []*poolv1.LeaseRequest{openFrame("echo"), openFrame("echo")}, 1},
		{"release after release", []*poolv1.LeaseRequest{openFrame("echo"), releaseFrame(true), releaseFrame(true)}, 1},
		{"data after release", []*poolv1.LeaseRequest{openFrame("echo"), releaseFrame(true), dataFrame([]byte("x"))}, 1},
		{"oversized data", []*poolv1.LeaseRequest{openFrame("echo"), dataFrame(make([]byte, MaxDataFrame+1))}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := e.client.Lease(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range tt.frames {
				if err := s.Send(f); err != nil {
					break // the server may have ended the stream already
				}
			}
			for range tt.granted {
				recvGranted(t, s)
			}
			wantStatus(t, s, codes.InvalidArgument, poolv1.ErrorReason_PROTOCOL_VIOLATION)
			waitInUse(t, e.mgr, 0)
		})
	}
}

func TestLeaseOpenErrors(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{Limits: poolmgr.Limits{MaxConnections: 1, MaxWaiters: 1}})
	tests := []struct {
		name   string
		open   *poolv1.LeaseRequest
		code   codes.Code
		reason poolv1.ErrorReason
	}{
		{"unknown pool", openFrame("pools/nope"), codes.NotFound, poolv1.ErrorReason_POOL_NOT_FOUND},
		{"bad pool name", openFrame("pools/Bad_Name"), codes.InvalidArgument, poolv1.ErrorReason_INVALID_ARGUMENT},
		{"long client name", &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{
			Pool: "echo", ClientName: string(make([]byte, 200))}}}, codes.InvalidArgument, poolv1.ErrorReason_INVALID_ARGUMENT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := e.client.Lease(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			mustSend(t, s, tt.open)
			wantStatus(t, s, tt.code, tt.reason)
		})
	}

	t.Run("draining", func(t *testing.T) {
		e := newLeaseEnv(t, poolmgr.Config{})
		if _, err := e.mgr.Drain(context.Background(), "echo", poolmgr.WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		s := e.open(context.Background(), t)
		wantStatus(t, s, codes.FailedPrecondition, poolv1.ErrorReason_POOL_DRAINING)
	})

	t.Run("backlog full and acquire timeout", func(t *testing.T) {
		holder := e.lease(context.Background(), t)

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		e.open(ctx, t) // a waiter
		p, _ := e.mgr.Pool("echo")
		waitWaiters(t, p, 1)
		full := e.open(context.Background(), t)
		wantStatus(t, full, codes.ResourceExhausted, poolv1.ErrorReason_BACKLOG_FULL)
		cancel()
		waitWaiters(t, p, 0)

		short, err := e.client.Lease(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, short, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{
			Pool: "echo", AcquireTimeout: durationMs(20)}}})
		wantStatus(t, short, codes.DeadlineExceeded, poolv1.ErrorReason_ACQUIRE_TIMEOUT)
		mustSend(t, holder, releaseFrame(true))
		recvEnded(t, holder)
	})
}

func TestLeaseUpstreamEOFAndAbandon(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{})
	s := e.lease(context.Background(), t)
	mustSend(t, s, dataFrame([]byte("ping")))
	readEcho(t, s, 4)
	e.up.closeConns() // the upstream goes away mid-lease
	end := recvEnded(t, s)
	if end.GetReason() != poolv1.EndReason_END_REASON_UPSTREAM_EOF && end.GetReason() != poolv1.EndReason_END_REASON_UPSTREAM_ERROR {
		t.Fatalf("ended = %v, want upstream EOF or error", end)
	}
	waitInUse(t, e.mgr, 0)
	// The client acknowledges with release, and the stream carries a new lease.
	mustSend(t, s, releaseFrame(true))
	mustSend(t, s, openFrame("echo"))
	recvGranted(t, s)
	mustSend(t, s, dataFrame([]byte("again")))
	if got := readEcho(t, s, 5); string(got) != "again" {
		t.Fatalf("echo = %q", got)
	}

	// A client that vanishes mid-lease gets its connection closed.
	ctx, cancel := context.WithCancel(context.Background())
	e.lease(ctx, t) // cancelled below, leaving the lease
	waitInUse(t, e.mgr, 2)
	cancel()
	waitInUse(t, e.mgr, 1)
	p, _ := e.mgr.Pool("echo")
	if st := p.Stats(); st.Closes["dirty"] == 0 {
		t.Fatalf("abandoned lease's connection was not closed: closes = %v", st.Closes)
	}
}

func TestLeaseRevoke(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{})
	s, g := e.leaseGranted(context.Background(), t)
	leases, err := e.mgr.Leases(context.Background(), "echo")
	if err != nil || len(leases) != 1 {
		t.Fatalf("leases = %v, %v", leases, err)
	}
	if want := "pools/echo/leases/" + leases[0].ID; g.GetLeaseId() != want {
		t.Fatalf("lease id = %q, want %q", g.GetLeaseId(), want)
	}
	if err := e.mgr.RevokeLease(context.Background(), leases[0].ID); err != nil {
		t.Fatal(err)
	}
	if end := recvEnded(t, s); end.GetReason() != poolv1.EndReason_END_REASON_REVOKED {
		t.Fatalf("ended = %v, want REVOKED", end)
	}
	waitInUse(t, e.mgr, 0)
}

func TestLeaseCloseWrite(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{})
	s := e.lease(context.Background(), t)
	mustSend(t, s, dataFrame([]byte("last words")))
	mustSend(t, s, closeWriteFrame())
	if got := readEcho(t, s, 10); string(got) != "last words" {
		t.Fatalf("echo = %q", got)
	}
	// The echo server answers our FIN with its own.
	if end := recvEnded(t, s); end.GetReason() != poolv1.EndReason_END_REASON_UPSTREAM_EOF {
		t.Fatalf("ended = %v, want UPSTREAM_EOF", end)
	}
}

func TestLeaseShutdownEndsIdleStreams(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{})
	busy := e.lease(context.Background(), t)
	idle := e.lease(context.Background(), t)
	mustSend(t, idle, releaseFrame(true))
	recvEnded(t, idle)

	e.srv.Shutdown()
	if _, err := idle.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("idle stream after shutdown: %v, want Unavailable", err)
	}
	// The held lease keeps working until released.
	mustSend(t, busy, dataFrame([]byte("still here")))
	if got := readEcho(t, busy, 10); string(got) != "still here" {
		t.Fatalf("echo = %q", got)
	}
	mustSend(t, busy, releaseFrame(true))
	recvEnded(t, busy)
	if _, err := busy.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("busy stream after release during shutdown: %v, want Unavailable", err)
	}
}

func durationMs(ms int) *durationpb.Duration {
	return durationpb.New(time.Duration(ms) * time.Millisecond)
}

// TestLeaseOpenData: bytes in the open frame reach the upstream as a data
// frame right behind it would. A client that takes granted-data gets the
// reply in granted (one message each way), also on a protocol pool whose
// greeter answers the opening itself; a plain client (grpcurl) gets
// granted, then data; granted held for a reply that does not come is sent
// alone once the hold is over.
func TestLeaseOpenData(t *testing.T) {
	e := newLeaseEnv(t, poolmgr.Config{Limits: poolmgr.Limits{MaxConnections: 2}})
	openData := func(b []byte) *poolv1.LeaseRequest {
		return &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo", Data: b}}}
	}
	features := func(f string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), leasewire.FeaturesKey, f)
	}

	t.Run("plain client", func(t *testing.T) {
		s, err := e.client.Lease(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, openData([]byte("ping")))
		md, err := s.Header()
		if err != nil {
			t.Fatal(err)
		}
		if got := md.Get(leasewire.ServerFeaturesKey); len(got) != 1 || got[0] != leasewire.FeatureOpenData {
			t.Fatalf("header %s = %q, want %q", leasewire.ServerFeaturesKey, got, leasewire.FeatureOpenData)
		}
		if g := recvGranted(t, s); len(g.GetData()) != 0 {
			t.Fatalf("granted to a client without granted-data carries %q", g.GetData())
		}
		if got := readEcho(t, s, 4); string(got) != "ping" {
			t.Fatalf("echo = %q", got)
		}
		mustSend(t, s, releaseFrame(true))
		recvEnded(t, s)
	})

	t.Run("granted-data", func(t *testing.T) {
		e.srv.grantHold.Store(int64(time.Hour)) // the reply always comes first
		defer e.srv.grantHold.Store(int64(defaultGrantHold))
		s, err := e.client.Lease(features(leasewire.FeatureHalfClose + ", " + leasewire.FeatureGrantedData))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			msg := []byte(fmt.Sprintf("request %d", i))
			mustSend(t, s, openData(msg))
			g := recvGranted(t, s)
			// upstream_written reports what was counted when the reply was
			// read: the echo can overtake the count of its request.
			if !bytes.Equal(g.GetData(), msg) || g.GetUpstreamWritten() > uint64(len(msg)) || g.GetLeaseId() == "" {
				t.Fatalf("lease %d: granted = %v, want the echo %q with upstream_written at most %d", i, g, msg, len(msg))
			}
			// Later bytes go as data frames both ways.
			mustSend(t, s, dataFrame([]byte("more")))
			if got := readEcho(t, s, 4); string(got) != "more" {
				t.Fatalf("echo = %q", got)
			}
			mustSend(t, s, releaseFrame(true))
			if end := recvEnded(t, s); !end.GetReused() || end.GetUpstreamWritten() != uint64(len(msg)+4) {
				t.Fatalf("ended = %v", end)
			}
		}
		if n := e.up.accepted.Load(); n > 2 {
			t.Fatalf("upstream accepted %d connections", n)
		}
	})

	t.Run("no reply", func(t *testing.T) {
		sink := testkit.Serve(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
		if _, err := e.mgr.Create(context.Background(), "sink", poolmgr.Config{Endpoints: []string{sink}}, poolmgr.WriteOptions{Actor: "test"}); err != nil {
			t.Fatal(err)
		}
		s, err := e.client.Lease(features(leasewire.FeatureGrantedData))
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "sink", Data: []byte("x")}}})
		if g := recvGranted(t, s); len(g.GetData()) != 0 {
			t.Fatalf("granted = %v, want no data", g)
		}
		mustSend(t, s, releaseFrame(true))
		if end := recvEnded(t, s); end.GetUpstreamWritten() != 1 {
			t.Fatalf("ended = %v", end)
		}
	})

	t.Run("too large", func(t *testing.T) {
		s, err := e.client.Lease(features(leasewire.FeatureGrantedData))
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, openData(make([]byte, MaxDataFrame+1)))
		wantStatus(t, s, codes.InvalidArgument, poolv1.ErrorReason_PROTOCOL_VIOLATION)
	})
}
