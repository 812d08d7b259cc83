package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/server"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestGetPoolStats(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	e.mustCreate(t, "warm", func(p *poolv1.Pool) { p.Limits.MinIdle = 2 })

	var st *poolv1.PoolStats
	testkit.WaitFor(t, "2 prewarmed idle connections", func() bool {
		var err error
		st, err = e.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/warm"})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetIdle() == 2
	})
	if st.GetName() != "pools/warm" || st.GetMaxConnections() != 4 || st.GetMinIdle() != 2 || st.GetTotal() != 2 ||
		!st.GetServing() || st.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE || st.GetGeneration() != 1 ||
		st.GetDials() < 2 || st.GetTime() == nil || len(st.GetDialTime().GetCounts()) != len(st.GetDialTime().GetBounds())+1 {
		t.Fatalf("stats = %v", st)
	}

	if _, err := e.admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: "pools/warm"}); err != nil {
		t.Fatal(err)
	}
	st, err := e.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/warm"})
	if err != nil || st.GetServing() || st.GetState() != poolv1.PoolState_POOL_STATE_PAUSED {
		t.Fatalf("paused stats = %v, %v", st, err)
	}

	_, err = e.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/none"})
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
	_, err = e.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "warm"})
	wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
}

func TestWatchPoolStats(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	e.mustCreate(t, "b", nil)
	e.mustCreate(t, "a", nil)

	// Every pool, in name order; the first snapshot at once, then one per
	// interval.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := e.stats.WatchPoolStats(wctx, &poolv1.WatchPoolStatsRequest{Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var times []time.Time
	for range 3 {
		r, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(r.GetStats()) != 2 || r.GetStats()[0].GetName() != "pools/a" || r.GetStats()[1].GetName() != "pools/b" {
			t.Fatalf("snapshot = %v", r)
		}
		times = append(times, time.Now())
	}
	if d := times[2].Sub(start); d < 150*time.Millisecond {
		t.Fatalf("3 snapshots at a 100ms interval took only %v", d)
	}
	cancel()
	_, err = recvErr(w, nil)
	wantCode(t, err, codes.Canceled, "")

	// Named pools only.
	w2, err := e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: []string{"pools/b", "pools/b"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := w2.Recv()
	if err != nil || len(r.GetStats()) != 1 || r.GetStats()[0].GetName() != "pools/b" {
		t.Fatalf("named snapshot = %v, %v", r, err)
	}

	for _, req := range []*poolv1.WatchPoolStatsRequest{
		{Interval: durationpb.New(50 * time.Millisecond)},
		{Interval: durationpb.New(2 * time.Hour)},
		{Interval: &durationpb.Duration{Seconds: 1, Nanos: -5}},
		{Names: []string{"b"}},
	} {
		_, err = recvErr(e.stats.WatchPoolStats(ctx, req))
		wantCode(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	}
	_, err = recvErr(e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: []string{"pools/none"}}))
	wantCode(t, err, codes.NotFound, "POOL_NOT_FOUND")
}

func TestHealthPerPool(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	e.mustCreate(t, "a", nil)
	e.mustCreate(t, "b", nil)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := e.healthc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("Check(%q): %v", service, err)
		}
		return r.GetStatus()
	}
	if err := e.health.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if check("") != healthpb.HealthCheckResponse_SERVING || check("pool/a") != healthpb.HealthCheckResponse_SERVING ||
		check("pool/b") != healthpb.HealthCheckResponse_SERVING {
		t.Fatal("not all SERVING")
	}
	if _, err := e.admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: "pools/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/a"}); err != nil {
		t.Fatal(err)
	}
	if err := e.health.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if check("pool/b") != healthpb.HealthCheckResponse_NOT_SERVING || check("") != healthpb.HealthCheckResponse_SERVING {
		t.Fatal("drained pool still SERVING")
	}
	// A deleted pool is gone from health, as one never created.
	for _, svc := range []string{"pool/a", "pool/never"} {
		_, err := e.healthc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		wantCode(t, err, codes.NotFound, "")
	}

	// Run syncs at once and on its ticker, and returns when ctx ends.
	if _, err := e.admin.ResumePool(ctx, &poolv1.ResumePoolRequest{Name: "pools/b"}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.health.Run(rctx, 10*time.Millisecond) }()
	testkit.WaitFor(t, "pool/b SERVING again", func() bool { return check("pool/b") == healthpb.HealthCheckResponse_SERVING })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}

	e.health.Shutdown()
	if check("") != healthpb.HealthCheckResponse_NOT_SERVING || check("pool/b") != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatal("Shutdown left a service SERVING")
	}
}

// panicService is a test service whose handlers panic with a secret.
var panicService = grpc.ServiceDesc{
	ServiceName: "poolplane.test.Panic",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Boom",
		Handler: func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			req := new(emptypb.Empty)
			if err := dec(req); err != nil {
				return nil, err
			}
			h := func(context.Context, any) (any, error) { panic("secret unary panic text") }
			if in == nil {
				return h(ctx, req)
			}
			return in(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/poolplane.test.Panic/Boom"}, h)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "BoomStream",
		ServerStreams: true,
		Handler:       func(any, grpc.ServerStream) error { panic("secret stream panic text") },
	}},
}

func TestRecoveryReturnsInternalWithoutPanicText(t *testing.T) {
	e := startAdminEnv(t, func(o *adminEnvOptions) {
		o.register = func(s *grpc.Server) { s.RegisterService(&panicService, struct{}{}) }
	})
	ctx := ctxT(t)

	err := e.conn.Invoke(ctx, "/poolplane.test.Panic/Boom", &emptypb.Empty{}, &emptypb.Empty{})
	st := wantCode(t, err, codes.Internal, "INTERNAL")
	if strings.Contains(st.Message(), "secret") {
		t.Fatalf("panic text leaked: %v", st)
	}

	s, err := e.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/poolplane.test.Panic/BoomStream")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseSend()
	err = s.RecvMsg(&emptypb.Empty{})
	st = wantCode(t, err, codes.Internal, "INTERNAL")
	if strings.Contains(st.Message(), "secret") {
		t.Fatalf("panic text leaked: %v", st)
	}

	// The panic and its stack are in the server log.
	if log := e.log.String(); !strings.Contains(log, "secret unary panic text") || !strings.Contains(log, "secret stream panic text") {
		t.Fatalf("panics not logged:\n%s", log)
	}
	// The server still serves.
	if _, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestAuthFuncExemptsHealth(t *testing.T) {
	const token = "Bearer letmein"
	e := startAdminEnv(t, func(o *adminEnvOptions) {
		o.config = func(c *server.Config) {
			c.AuthFunc = func(ctx context.Context) (context.Context, error) {
				md, _ := metadata.FromIncomingContext(ctx)
				if v := md.Get("authorization"); len(v) == 1 && v[0] == token {
					return ctx, nil
				}
				return nil, status.Error(codes.Unauthenticated, "no valid token")
			}
		}
	})
	ctx := ctxT(t)
	_, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = recvErr(e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{}))
	wantCode(t, err, codes.Unauthenticated, "")
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", token)
	if _, err := e.admin.ListPools(authed, &poolv1.ListPoolsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.healthc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health needs no credentials: %v", err)
	}
}

func TestKeepaliveEndsDeadClientStream(t *testing.T) {
	ended := make(chan error, 1)
	e := startAdminEnv(t, func(o *adminEnvOptions) {
		o.config = func(c *server.Config) {
			c.KeepaliveTime = time.Second // grpc's minimum
			c.KeepaliveTimeout = 200 * time.Millisecond
			c.StreamInterceptors = []grpc.StreamServerInterceptor{
				func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
					err := h(srv, ss)
					if info.FullMethod == poolv1.StatsService_WatchPoolStats_FullMethodName {
						ended <- err
					}
					return err
				},
			}
		}
	})
	ctx := ctxT(t)
	e.mustCreate(t, "a", nil)
	proxy := startBlackholeProxy(t, e.addr)
	conn, err := grpc.NewClient(proxy.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	w, err := poolv1.NewStatsServiceClient(conn).WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	proxy.freeze()
	start := time.Now()
	select {
	case err := <-ended:
		t.Logf("server stream ended %v after the client vanished: %v", time.Since(start), err)
	case <-time.After(10 * time.Second):
		t.Fatal("server stream still running 10s after the client vanished")
	}
}
