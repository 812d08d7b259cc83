package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestMain checks for leaked goroutines, ignoring the process-wide ones that
// the embedded etcd of the scale-out tests leaves behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.IgnoreGoroutines()...) }

type poold struct {
	grpcAddr, metricsAddr string
	cancel                context.CancelFunc
	done                  chan int
	log                   *testkit.SyncBuffer
}

// startPoold runs poold in-process on loopback ports and waits until it
// serves.
func startPoold(t *testing.T, dataDir string, extra ...string) *poold {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &poold{cancel: cancel, done: make(chan int, 1), log: &testkit.SyncBuffer{}}
	up := make(chan struct{})
	args := append([]string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", dataDir, "--shutdown-grace", "5s"}, extra...)
	go func() {
		p.done <- run(ctx, args, p.log, func(g, m string) {
			p.grpcAddr, p.metricsAddr = g, m
			close(up)
		})
	}()
	select {
	case <-up:
	case code := <-p.done:
		t.Fatalf("poold exited with %d before serving:\n%s", code, p.log)
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop cancels poold and returns its exit code (once).
func (p *poold) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	code, ok := <-p.done
	if ok {
		close(p.done)
	}
	return code
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMaxProcs: --max-procs sets how many threads run Go code at once,
// and the serving line says what poold runs with.
func TestMaxProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	want := before + 1
	p := startPoold(t, t.TempDir(), "--max-procs", strconv.Itoa(want))
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Errorf("--max-procs %d: GOMAXPROCS is %d", want, got)
	}
	if line := fmt.Sprintf("max_procs=%d", want); !strings.Contains(p.log.String(), line) {
		t.Errorf("serving line lacks %s:\n%s", line, p.log)
	}
}

func TestPooldServesPersistsAndShutsDown(t *testing.T) {
	dir := t.TempDir()
	up := testkit.EchoServer(t)
	p := startPoold(t, dir)
	cc := dial(t, p.grpcAddr)
	admin := poolv1.NewPoolAdminServiceClient(cc)
	ctx := context.Background()
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{
		Endpoints: []string{up}, Limits: &poolv1.Limits{MaxConnections: 3}}}); err != nil {
		t.Fatal(err)
	}

	// A lease through the real server.
	ls, err := poolv1.NewLeaseServiceClient(cc).Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo"}}})
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: []byte("hi")}}})
	if m, err := ls.Recv(); err != nil || m.GetGranted() == nil {
		t.Fatalf("granted: %v %v", m, err)
	}
	if m, err := ls.Recv(); err != nil || string(m.GetData().GetData()) != "hi" {
		t.Fatalf("echo: %v %v", m, err)
	}
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: true}}})
	if m, err := ls.Recv(); err != nil || m.GetEnded() == nil {
		t.Fatalf("ended: %v %v", m, err)
	}
	ls.CloseSend()

	// Metrics, health and readiness.
	if code, body := httpGet(t, "http://"+p.metricsAddr+"/metrics"); code != 200 ||
		!strings.Contains(body, `poolplane_connection_count{pool="echo",state="idle"} 1`) ||
		!strings.Contains(body, `poolplane_connection_max{pool="echo"} 3`) ||
		!strings.Contains(body, "grpc_server_handled_total") {
		t.Fatalf("metrics %d:\n%s", code, body)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := httpGet(t, "http://"+p.metricsAddr+path); code != 200 {
			t.Fatalf("%s = %d", path, code)
		}
	}
	if code, _ := httpGet(t, "http://"+p.metricsAddr+"/debug/pprof/"); code != 404 {
		t.Fatalf("pprof served without --pprof: %d", code)
	}
	hc := healthpb.NewHealthClient(cc)
	if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: ""}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("process health: %v %v", r, err)
	}

	// A second poold on the same data dir fails at once, clearly.
	var log2 bytes.Buffer
	if code := run(context.Background(), []string{"--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", dir}, &log2, nil); code != 1 ||
		!strings.Contains(log2.String(), "in use by another poold") {
		t.Fatalf("second poold: exit %d, log:\n%s", code, log2.String())
	}

	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d, log:\n%s", code, p.log)
	}

	// Restart: the pool is loaded before serving.
	p2 := startPoold(t, dir)
	got, err := poolv1.NewPoolAdminServiceClient(dial(t, p2.grpcAddr)).GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/echo"})
	if err != nil || got.GetLimits().GetMaxConnections() != 3 {
		t.Fatalf("after restart: %v %v", got, err)
	}
}

func TestPooldShutdownWaitsForLeases(t *testing.T) {
	up := testkit.EchoServer(t)
	p := startPoold(t, t.TempDir())
	cc := dial(t, p.grpcAddr)
	ctx := context.Background()
	if _, err := poolv1.NewPoolAdminServiceClient(cc).CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
		t.Fatal(err)
	}
	ls, err := poolv1.NewLeaseServiceClient(cc).Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo"}}})
	if m, err := ls.Recv(); err != nil || m.GetGranted() == nil {
		t.Fatalf("granted: %v %v", m, err)
	}
	p.cancel() // SIGTERM
	// The lease still relays while poold drains.
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: []byte("during shutdown")}}})
	if m, err := ls.Recv(); err != nil || string(m.GetData().GetData()) != "during shutdown" {
		t.Fatalf("echo during shutdown: %v %v", m, err)
	}
	select {
	case code := <-p.done:
		t.Fatalf("poold exited (%d) while a lease was held", code)
	default:
	}
	ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: true}}})
	select {
	case code := <-p.done:
		close(p.done)
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, p.log)
		}
	case <-time.After(4 * time.Second):
		t.Fatalf("poold did not exit after the last lease was released:\n%s", p.log)
	}
}

func TestPooldFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"non-loopback refused", []string{"--listen", "0.0.0.0:7700"}, nil, 2, "--insecure"},
		{"bad log format", []string{"--log-format", "xml"}, nil, 2, "text or json"},
		{"bad log level", []string{"--log-level", "loud"}, nil, 2, "--log-level"},
		{"unknown flag", []string{"--nope"}, nil, 2, "unknown flag: --nope"},
		{"mistyped command", []string{"restor"}, nil, 2, `did you mean "restore"?`},
		{"stray argument", []string{"serve"}, nil, 2, "unexpected argument"},
		{"env checked", nil, map[string]string{"POOLPLANE_LISTEN": "10.1.2.3:7700"}, 2, "reachable from other hosts"},
		{"bad env value", nil, map[string]string{"POOLPLANE_SHUTDOWN_GRACE": "soon"}, 2, "POOLPLANE_SHUTDOWN_GRACE"},
		{"help", []string{"-h"}, nil, 0, "POOLPLANE_"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out bytes.Buffer
			args := append([]string{"--data-dir", filepath.Join(t.TempDir(), "d"), "--metrics-listen", "off"}, tt.args...)
			if code := run(context.Background(), args, &out, nil); code != tt.code || !strings.Contains(out.String(), tt.want) {
				t.Fatalf("exit %d (want %d), output:\n%s\nwant it to contain %q", code, tt.code, out.String(), tt.want)
			}
		})
	}
}

func TestPooldSingleDashFlags(t *testing.T) {
	// Command lines written for Go's flag package keep working.
	o, err := parseFlags([]string{"-listen", "127.0.0.1:7800", "-history=7", "-insecure", "-data-dir", "d"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:7800" || o.history != 7 || !o.insecure || o.dataDir != "d" {
		t.Errorf("parseFlags = %+v", o)
	}
	if _, err := parseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("parseFlags(-h) = %v, want flag.ErrHelp", err)
	}
	// After "--", nothing is a flag.
	if got := longDashes(pflag.NewFlagSet("", pflag.ContinueOnError), []string{"--", "-listen"}); len(got) != 2 || got[1] != "-listen" {
		t.Errorf("longDashes = %q", got)
	}
}

func TestPooldUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "poold.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	up := make(chan string, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "unix://" + sock, "--metrics-listen", "off", "--data-dir", filepath.Join(dir, "data")}, io.Discard,
			func(g, _ string) { up <- g })
	}()
	<-up
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v, want 0660", fi.Mode(), err)
	}
	cc := dial(t, "unix://"+sock)
	if _, err := poolv1.NewPoolAdminServiceClient(cc).ListPools(context.Background(), &poolv1.ListPoolsRequest{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
}
