package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
)

// adminEnv is a real poold in miniature: a store on t.TempDir(), a loaded
// Manager, the server from server.New on 127.0.0.1:0, a client connection,
// and a loopback TCP echo upstream. Everything is closed by t.Cleanup.
type adminEnv struct {
	mgr      *poolmgr.Manager
	health   *server.Health
	conn     *grpc.ClientConn
	admin    poolv1.PoolAdminServiceClient
	stats    poolv1.StatsServiceClient
	healthc  healthpb.HealthClient
	upstream string // "127.0.0.1:port" of the echo server
	addr     string // the gRPC server's address
	log      *testkit.SyncBuffer
}

// adminEnvOptions tweak startAdminEnv.
type adminEnvOptions struct {
	storeOpts store.Options
	config    func(*server.Config)
	register  func(*grpc.Server) // extra services, before Serve
}

func startAdminEnv(t *testing.T, opts ...func(*adminEnvOptions)) *adminEnv {
	t.Helper()
	var o adminEnvOptions
	for _, f := range opts {
		f(&o)
	}
	e := &adminEnv{upstream: testkit.EchoServer(t), log: &testkit.SyncBuffer{}}
	// A secret key, so pools may carry inline client keys (stored sealed).
	srv := servertest.Start(t, servertest.Options{
		Store:    o.storeOpts,
		Logger:   slog.New(slog.NewTextHandler(e.log, nil)),
		Manager:  func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{0x5e}, 32) },
		Server:   o.config,
		Register: o.register,
	})
	e.mgr, e.health, e.addr = srv.Manager, srv.Services.Health, srv.Addr
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.conn = conn
	e.admin = poolv1.NewPoolAdminServiceClient(conn)
	e.stats = poolv1.NewStatsServiceClient(conn)
	e.healthc = healthpb.NewHealthClient(conn)
	return e
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode checks err's status code and ErrorInfo reason ("" to skip) and
// returns the status.
func wantCode(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("got error %v, want code %v", err, code)
	}
	if reason != "" {
		info := errorInfo(st)
		if info == nil {
			t.Fatalf("status %v has no ErrorInfo", st)
		}
		if info.GetReason() != reason || info.GetDomain() != server.ErrorDomain {
			t.Fatalf("ErrorInfo = %v, want reason %s domain %s", info, reason, server.ErrorDomain)
		}
	}
	return st
}

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	var out *errdetails.ErrorInfo
	n := 0
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			out = ei
			n++
		}
	}
	if n > 1 {
		return nil
	}
	return out
}

// violations returns the fields of st's BadRequest.
func violations(st *status.Status) []string {
	var fs []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fs = append(fs, v.GetField())
			}
		}
	}
	return fs
}

func hasField(fs []string, f string) bool {
	for _, x := range fs {
		if x == f {
			return true
		}
	}
	return false
}

// mustCreate creates pool id with the echo upstream and mod applied.
func (e *adminEnv) mustCreate(t *testing.T, id string, mod func(*poolv1.Pool)) *poolv1.Pool {
	t.Helper()
	p := &poolv1.Pool{Endpoints: []string{e.upstream}, Limits: &poolv1.Limits{MaxConnections: 4}}
	if mod != nil {
		mod(p)
	}
	got, err := e.admin.CreatePool(ctxT(t), &poolv1.CreatePoolRequest{PoolId: id, Pool: p})
	if err != nil {
		t.Fatalf("CreatePool(%s): %v", id, err)
	}
	return got
}

// blackholeProxy forwards TCP between clients and target until freeze is
// called; from then on it drops every byte both ways, keeping the
// connections open, like a peer whose host vanished.
type blackholeProxy struct {
	addr   string
	frozen atomic.Bool
}

func startBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{addr: lis.Addr().String()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // protects conns
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		defer func() { _ = dst.Close(); _ = src.Close() }()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if p.frozen.Load() {
				continue // dropped
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(c)
			track(u)
			wg.Add(2)
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *blackholeProxy) freeze() { p.frozen.Store(true) }

// TestUpdateLowersDefaultedLimit: a defaulted field follows the field it
// defaults from, so lowering max_connections alone is valid and max_idle
// follows it down.
func TestUpdateLowersDefaultedLimit(t *testing.T) {
	e := startAdminEnv(t)
	ctx := ctxT(t)
	if _, err := e.admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "lower", Pool: &poolv1.Pool{
		Endpoints: []string{e.upstream}, Limits: &poolv1.Limits{MaxConnections: 8}}}); err != nil {
		t.Fatal(err)
	}
	got, err := e.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
		Pool:       &poolv1.Pool{Name: "pools/lower", Limits: &poolv1.Limits{MaxConnections: 2}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits.max_connections"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if l := got.GetLimits(); l.GetMaxConnections() != 2 || l.GetMaxIdle() != 2 {
		t.Fatalf("limits after lowering max_connections: %v; want max 2, max_idle 2", l)
	}
}
