package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
)

// testServer is poold in miniature: a store on t.TempDir(), a loaded
// Manager and server.New's gRPC server on 127.0.0.1:0. t.Cleanup stops it.
type testServer struct {
	addr string
	log  *testkit.SyncBuffer
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	return startServerWith(t, serverOptions{})
}

// cli runs poolctl against the server.
func (ts *testServer) cli(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	return runCLI(t, stdin, append([]string{"--server", ts.addr}, args...)...)
}

// ok runs poolctl and fails the test unless it exits 0.
func (ts *testServer) ok(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	r := ts.cli(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("poolctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs poolctl and checks it exits 1 with want in stderr, formatted
// as poolctl errors are.
func (ts *testServer) fails(t *testing.T, want string, args ...string) string {
	t.Helper()
	r := ts.cli(t, "", args...)
	if r.code != 1 {
		t.Fatalf("poolctl %s: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, want) || !strings.HasPrefix(r.stderr, "poolctl: ") || strings.Contains(r.stderr, "rpc error") {
		t.Fatalf("poolctl %s: stderr %q, want %q", strings.Join(args, " "), r.stderr, want)
	}
	return r.stderr
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// unmarshal parses -o json output.
func unmarshal[M proto.Message](t testing.TB, out string, m M) M {
	t.Helper()
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		t.Fatalf("output is not a %T: %v\n%s", m, err, out)
	}
	return m
}

// actions maps pool names to apply actions.
func actions(resp *poolv1.ApplyPoolsResponse) map[string]string {
	out := map[string]string{}
	for _, c := range resp.GetChanges() {
		out[c.GetName()] = actionString(c.GetAction())
	}
	return out
}

func TestEndToEnd(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	file := writeFile(t, "pools.yaml", `
pools:
  - id: echo
    endpoints: [`+echo+`]
    limits: {max_connections: 4, acquire_timeout: 5s}
    labels: {role: test}
  - name: pools/other
    endpoints: [`+echo+`]
    reuse_policy: single_use
`)

	// Dry run: the plan, nothing written.
	out := ts.ok(t, "", "apply", "--dry-run", "-f", file)
	if !regexp.MustCompile(`pools/echo\s+CREATE`).MatchString(out) || !strings.Contains(out, "dry run: 2 to create") {
		t.Fatalf("apply --dry-run:\n%s", out)
	}
	if out := ts.ok(t, "", "list", "-o", "json"); out != "{\n  \"pools\": [],\n  \"next_page_token\": \"\"\n}\n" {
		t.Fatalf("dry run created pools:\n%s", out)
	}

	// Apply, then apply again: UNCHANGED.
	out = ts.ok(t, "", "apply", "-f", file)
	if !strings.Contains(out, "applied at revision") || !strings.Contains(out, "2 created") {
		t.Fatalf("apply:\n%s", out)
	}
	out = ts.ok(t, "", "apply", "-f", file)
	if !regexp.MustCompile(`pools/echo\s+UNCHANGED`).MatchString(out) || !strings.Contains(out, "no changes") {
		t.Fatalf("second apply:\n%s", out)
	}
	resp := unmarshal(t, ts.ok(t, "", "apply", "-f", file, "-o", "json"), &poolv1.ApplyPoolsResponse{})
	if a := actions(resp); a["pools/echo"] != "UNCHANGED" || a["pools/other"] != "UNCHANGED" || resp.GetRevision() != 0 {
		t.Fatalf("third apply: %v", resp)
	}

	// get: table, json, and yaml that applies back unchanged from stdin.
	out = ts.ok(t, "", "get", "echo")
	if !regexp.MustCompile(`limits\.max_connections\s+4`).MatchString(out) || !strings.Contains(out, "labels.role") {
		t.Fatalf("get:\n%s", out)
	}
	p := unmarshal(t, ts.ok(t, "", "get", "pools/echo", "-o", "json"), &poolv1.Pool{})
	if p.GetName() != "pools/echo" || p.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE || p.GetEtag() == "" {
		t.Fatalf("get -o json: %v", p)
	}
	staleEtag := p.GetEtag() // the pool changes below
	y := ts.ok(t, "", "get", "echo", "-o", "yaml")
	if !strings.Contains(y, "max_connections: 4") {
		t.Fatalf("get -o yaml:\n%s", y)
	}
	resp = unmarshal(t, ts.ok(t, y, "apply", "-f", "-", "-o", "json"), &poolv1.ApplyPoolsResponse{})
	if a := actions(resp); a["pools/echo"] != "UNCHANGED" {
		t.Fatalf("apply of get -o yaml: %v", resp)
	}

	// list.
	list := unmarshal(t, ts.ok(t, "", "list", "-o", "json"), &poolv1.ListPoolsResponse{})
	if len(list.GetPools()) != 2 || list.GetPools()[0].GetName() != "pools/echo" || list.GetPools()[1].GetName() != "pools/other" {
		t.Fatalf("list -o json: %v", list)
	}
	out = ts.ok(t, "", "list")
	if !regexp.MustCompile(`(?m)^pools/echo\s+ACTIVE\s+` + regexp.QuoteMeta(echo) + `\s+no\s+RAW\s+4\s`).MatchString(out) {
		t.Fatalf("list:\n%s", out)
	}
	if out := ts.ok(t, "", "list", "-o", "yaml"); !strings.Contains(out, "pools:\n  - name: pools/echo") {
		t.Fatalf("list -o yaml:\n%s", out)
	}

	// Lifecycle.
	out = ts.ok(t, "", "drain", "echo", "--wait")
	if !strings.Contains(out, "DRAINING") {
		t.Fatalf("drain:\n%s", out)
	}
	ts.ok(t, "", "pause", "echo", "--wait")
	p = unmarshal(t, ts.ok(t, "", "resume", "echo", "--wait", "-o", "json"), &poolv1.Pool{})
	if p.GetState() != poolv1.PoolState_POOL_STATE_ACTIVE {
		t.Fatalf("resume: %v", p)
	}

	// An update, then history and rollback to the first revision.
	file2 := writeFile(t, "pools2.yaml", strings.Replace(mustRead(t, file), "max_connections: 4", "max_connections: 6", 1))
	out = ts.ok(t, "", "apply", "--dry-run", "-f", file2)
	if !regexp.MustCompile(`pools/echo\s+UPDATE\s+limits\.max_connections`).MatchString(out) {
		t.Fatalf("apply --dry-run of an update:\n%s", out)
	}
	ts.ok(t, "", "apply", "-f", file2)
	hist := unmarshal(t, ts.ok(t, "", "history", "echo", "-o", "json"), &poolv1.ListPoolRevisionsResponse{})
	revs := hist.GetRevisions()
	if len(revs) < 2 || revs[0].GetPool().GetLimits().GetMaxConnections() != 6 {
		t.Fatalf("history: %v", hist)
	}
	first := revs[len(revs)-1]
	out = ts.ok(t, "", "history", "echo")
	if !strings.Contains(out, "limits.max_connections") || !strings.Contains(out, "oldest retained") {
		t.Fatalf("history:\n%s", out)
	}
	out = ts.ok(t, "", "rollback", "echo", "--revision", itoa(first.GetRevision()))
	if !strings.Contains(out, "rolled back to revision "+itoa(first.GetRevision())) {
		t.Fatalf("rollback:\n%s", out)
	}
	p = unmarshal(t, ts.ok(t, "", "get", "echo", "-o", "json"), &poolv1.Pool{})
	if p.GetLimits().GetMaxConnections() != 4 {
		t.Fatalf("after rollback: %v", p)
	}

	// stats.
	out = ts.ok(t, "", "stats", "echo")
	if !regexp.MustCompile(`(?m)^pools/echo\s+ACTIVE\s+yes`).MatchString(out) {
		t.Fatalf("stats:\n%s", out)
	}
	all := unmarshal(t, ts.ok(t, "", "stats", "-o", "json"), &poolv1.WatchPoolStatsResponse{})
	if len(all.GetStats()) != 2 {
		t.Fatalf("stats -o json: %v", all)
	}

	// Errors are formatted, never raw statuses.
	ts.fails(t, "poolctl: NOT_FOUND POOL_NOT_FOUND:", "get", "nosuch")
	ts.fails(t, "ABORTED ETAG_MISMATCH", "delete", "echo", "--etag", staleEtag)
	ts.fails(t, "INVALID_ARGUMENT", "delete", "echo", "--etag", "bogus")
	bad := writeFile(t, "bad.yaml", "pools:\n- id: bad\n  endpoints: [h:1]\n  limits: {max_connections: -1}\n")
	stderr := ts.fails(t, "INVALID_ARGUMENT INVALID_ARGUMENT", "apply", "-f", bad)
	if !strings.Contains(stderr, "\n  pools[0].limits.max_connections: ") {
		t.Fatalf("apply of a bad pool: no field violation line:\n%s", stderr)
	}
	ts.fails(t, `unknown field "maxconn"`, "apply", "-f", writeFile(t, "typo.yaml", "pools:\n- id: a\n  maxconn: 3\n"))

	// delete with a dry run, then for real.
	ts.ok(t, "", "delete", "other", "--dry-run")
	ts.ok(t, "", "get", "other")
	etag := unmarshal(t, ts.ok(t, "", "get", "other", "-o", "json"), &poolv1.Pool{}).GetEtag()
	if out := ts.ok(t, "", "delete", "other", "--etag", etag); !strings.Contains(out, "pools/other deleted") {
		t.Fatalf("delete:\n%s", out)
	}
	ts.fails(t, "NOT_FOUND", "get", "other")

	// The example file applies cleanly, and a prune dry run would remove
	// what it does not list.
	example := filepath.Join("..", "..", "examples", "pools.yaml")
	resp = unmarshal(t, ts.ok(t, "", "apply", "-f", example, "-o", "json"), &poolv1.ApplyPoolsResponse{})
	if a := actions(resp); a["pools/api"] != "CREATE" || a["pools/cache"] != "CREATE" {
		t.Fatalf("apply examples/pools.yaml: %v", resp)
	}
	resp = unmarshal(t, ts.ok(t, "", "apply", "-f", example, "-o", "json"), &poolv1.ApplyPoolsResponse{})
	if a := actions(resp); a["pools/api"] != "UNCHANGED" || a["pools/cache"] != "UNCHANGED" {
		t.Fatalf("second apply examples/pools.yaml: %v", resp)
	}
	out = ts.ok(t, "", "apply", "-f", example, "--prune", "--dry-run")
	if !regexp.MustCompile(`pools/echo\s+DELETE`).MatchString(out) {
		t.Fatalf("apply --prune --dry-run:\n%s", out)
	}
	ts.ok(t, "", "delete", "api")
	ts.ok(t, "", "delete", "cache")

	// One poold on its own store has no replica set.
	if out := ts.ok(t, "", "replicas"); !strings.Contains(out, "no replicas") {
		t.Fatalf("replicas:\n%s", out)
	}
	if r := unmarshal(t, ts.ok(t, "", "replicas", "-o", "json"), &poolv1.ListReplicasResponse{}); len(r.GetReplicas()) != 0 || r.GetReplicaId() != "" {
		t.Fatalf("replicas -o json: %v", r)
	}
}

func mustRead(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startForward runs poolctl forward until the returned stop is called and
// returns the local address it listens on.
func (ts *testServer) startForward(t testing.TB, pool string, extra ...string) (addr string, stop func() result) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testkit.SyncBuffer
	donec := make(chan int, 1)
	args := append([]string{"--server", ts.addr, "forward", pool, "--listen", "127.0.0.1:0"}, extra...)
	go func() { donec <- run(ctx, args, strings.NewReader(""), &out, &errb) }()
	re := regexp.MustCompile(`forwarding (127\.0\.0\.1:\d+) -> pools/` + pool + `\n`)
	var m []string
	testkit.WaitFor(t, "forward to listen", func() bool {
		select {
		case code := <-donec:
			t.Fatalf("forward exited %d early: %s", code, errb.String())
		default:
		}
		m = re.FindStringSubmatch(out.String())
		return m != nil
	})
	var once sync.Once
	var res result
	stop = func() result {
		once.Do(func() {
			cancel()
			res = result{code: <-donec, stdout: out.String(), stderr: errb.String()}
		})
		return res
	}
	t.Cleanup(func() { stop() })
	return m[1], stop
}

func TestForward(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	awakes := 0
	keepAwake = func() { awakes++ }
	t.Cleanup(func() { keepAwake = nil })
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	if awakes != 0 {
		t.Errorf("apply kept the monitor thread awake: only forward relays for long")
	}
	addr, stop := ts.startForward(t, "echo", "--client-name", "forward-test")
	if awakes != 1 {
		t.Errorf("forward called keepAwake %d times, want 1", awakes)
	}

	// Two connections at once, each its own lease, bytes both ways.
	c1, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c1.Close() }()
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.Close() }()
	for i, c := range []net.Conn{c1, c2} {
		msg := []byte("hello " + itoa(i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("conn %d: read %q, %v; want %q", i, got, err, msg)
		}
	}
	leases := unmarshal(t, ts.ok(t, "", "leases", "echo", "-o", "json"), &poolv1.ListLeasesResponse{})
	if len(leases.GetLeases()) != 2 || leases.GetLeases()[0].GetClientName() != "forward-test" {
		t.Fatalf("leases: %v", leases)
	}
	if out := ts.ok(t, "", "leases"); !strings.Contains(out, "forward-test") {
		t.Fatalf("leases (all pools):\n%s", out)
	}

	// Half-close: the echo upstream sees EOF, closes, and c1 reads EOF.
	c1.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c1); err != nil || len(b) != 0 {
		t.Fatalf("after CloseWrite: read %q, %v; want EOF", b, err)
	}
	_ = c1.Close()
	testkit.WaitFor(t, "the first lease to end", func() bool {
		l := unmarshal(t, ts.ok(t, "", "leases", "echo", "-o", "json"), &poolv1.ListLeasesResponse{})
		return len(l.GetLeases()) == 1
	})

	// reconnect --wait waits for the remaining lease of the old
	// generation; revoking it ends the forwarded connection.
	name := unmarshal(t, ts.ok(t, "", "leases", "echo", "-o", "json"), &poolv1.ListLeasesResponse{}).GetLeases()[0].GetName()
	reconnected := make(chan result, 1)
	go func() {
		reconnected <- runCLI(t, "", "--server", ts.addr, "reconnect", "echo", "--wait")
	}()
	if out := ts.ok(t, "", "revoke", name); !strings.Contains(out, name+" revoked") {
		t.Fatalf("revoke:\n%s", out)
	}
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c2); err != nil {
		t.Fatalf("forwarded connection after revoke: %v", err)
	}
	if r := <-reconnected; r.code != 0 {
		t.Fatalf("reconnect --wait: exit %d\n%s", r.code, r.stderr)
	}

	// A lease failure is reported and the local connection closed.
	ts.ok(t, "", "drain", "echo")
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c3.Close() }()
	c3.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c3); err != nil {
		t.Fatalf("connection to a draining pool: %v", err)
	}
	ts.ok(t, "", "resume", "echo")

	r := stop()
	if r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "FAILED_PRECONDITION POOL_DRAINING") {
		t.Errorf("forward stderr does not report the drained lease:\n%s", r.stderr)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Errorf("forward still listens after stop")
	}
}

func TestForwardShutdownClosesConnections(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	addr, stop := ts.startForward(t, "echo", "--shutdown-timeout", "100ms")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	// The connection stays open: stop waits --shutdown-timeout, then
	// closes it.
	r := stop()
	if r.code != 0 || !strings.Contains(r.stderr, "waiting up to 100ms for 1 connections") {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("after shutdown: %v", err)
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

func TestStatsWatch(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb testkit.SyncBuffer
	donec := make(chan int, 1)
	go func() {
		donec <- run(ctx, []string{"--server", ts.addr, "stats", "--watch", "--interval", "100ms"},
			strings.NewReader(""), &out, &errb)
	}()
	testkit.WaitFor(t, "two redraws", func() bool { return strings.Contains(out.String(), "\x1b[4A") })
	cancel()
	if code := <-donec; code != 0 {
		t.Fatalf("stats --watch: exit %d\n%s", code, errb.String())
	}
	if !strings.Contains(out.String(), "\r\x1b[2Kpools/echo") {
		t.Errorf("stats --watch output %q", out.String())
	}

	// -o json: one document per snapshot.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	var out2 testkit.SyncBuffer
	go func() {
		donec <- run(ctx2, []string{"--server", ts.addr, "stats", "echo", "-w", "--interval", "100ms", "-o", "json"},
			strings.NewReader(""), &out2, &errb)
	}()
	testkit.WaitFor(t, "two snapshots", func() bool { return strings.Count(out2.String(), `"name": "pools/echo"`) >= 2 })
	cancel2()
	if code := <-donec; code != 0 {
		t.Fatalf("stats --watch -o json: exit %d\n%s", code, errb.String())
	}
}

// serverOptions tweak startServerWith.
type serverOptions struct {
	config   func(*server.Config)
	grpcOpts []grpc.ServerOption
	network  string // "tcp" (default) or "unix"
	manager  func(*poolmgr.ManagerConfig)
}

// startServerWith is startServer with options; addr is "unix://<path>"
// for a Unix socket.
func startServerWith(t testing.TB, o serverOptions) *testServer {
	t.Helper()
	ts := &testServer{log: &testkit.SyncBuffer{}}
	srv := servertest.Start(t, servertest.Options{
		Store:   store.Options{NoSync: true},
		Logger:  slog.New(slog.NewTextHandler(ts.log, nil)),
		Manager: o.manager,
		Server:  o.config,
		GRPC:    o.grpcOpts,
		Unix:    o.network == "unix",
		// Pools may be served on local listeners (fronts_test.go).
		Listeners: true,
	})
	ts.addr = srv.Addr
	return ts
}

func TestUnixSocket(t *testing.T) {
	ts := startServerWith(t, serverOptions{network: "unix"})
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	if out := ts.ok(t, "", "list"); !strings.Contains(out, "pools/echo") {
		t.Fatalf("list over a Unix socket:\n%s", out)
	}
	// A bare absolute path is a Unix socket too.
	path := strings.TrimPrefix(ts.addr, "unix://")
	if r := runCLI(t, "", "--server", path, "get", "echo"); r.code != 0 {
		t.Fatalf("--server %s: exit %d\n%s", path, r.code, r.stderr)
	}
	// forward over the socket.
	addr, stop := ts.startForward(t, "echo")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	c.Write([]byte("ping"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "ping" {
		t.Fatalf("forward over a Unix socket: read %q, %v", b, err)
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

func TestTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testkit.SelfSigned(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "poold.test"}, Hosts: []string{"poold.test"}, Server: true}).WriteFiles(t, certFile, keyFile)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	const token = "s3cret"
	ts := startServerWith(t, serverOptions{
		grpcOpts: []grpc.ServerOption{grpc.Creds(credentials.NewServerTLSFromCert(&cert))},
		config: func(c *server.Config) {
			c.AuthFunc = func(ctx context.Context) (context.Context, error) {
				got, err := auth.AuthFromMD(ctx, "bearer")
				if err != nil {
					return nil, err
				}
				if got != token {
					return nil, status.Error(codes.Unauthenticated, "bad token")
				}
				return ctx, nil
			}
		},
	})
	echo := testkit.EchoServer(t)
	tlsArgs := []string{"--ca-file", certFile, "--server-name", "poold.test"}

	// No TLS: the handshake fails.
	ts.fails(t, "UNAVAILABLE", "list")
	// TLS, no token.
	ts.fails(t, "UNAUTHENTICATED", append(tlsArgs, "list")...)
	ts.fails(t, "UNAUTHENTICATED: bad token", append(tlsArgs, "--token", "wrong", "list")...)
	// TLS and token, from flags or the environment.
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", append(tlsArgs, "--token", token, "apply", "-f", "-")...)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := ts.ok(t, "", append(tlsArgs, "--token-file", tokenFile, "list", "-o", "name")...); out != "pools/echo\n" {
		t.Fatalf("list with --token-file:\n%s", out)
	}
	t.Setenv("POOLPLANE_CA_FILE", certFile)
	t.Setenv("POOLPLANE_SERVER_NAME", "poold.test")
	t.Setenv("POOLPLANE_TOKEN", token)
	if out := ts.ok(t, "", "list"); !strings.Contains(out, "pools/echo") {
		t.Fatalf("list with TLS and token from the environment:\n%s", out)
	}
	// The wrong server name fails verification.
	ts.fails(t, "UNAVAILABLE", "--server-name", "other.test", "list")

	// forward uses the same credentials.
	addr, stop := ts.startForward(t, "echo")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	c.Write([]byte("tls"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "tls" {
		t.Fatalf("forward with TLS and token: read %q, %v", b, err)
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

// startSilent starts an upstream that reads until EOF and then neither
// writes nor closes, as a server that ignores half-closes would.
func startSilent(t *testing.T) string {
	t.Helper()
	return testkit.Serve(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }) // never closes: the cleanup does
}

func TestForwardHalfCloseTimeout(t *testing.T) {
	ts := startServer(t)
	silent := startSilent(t)
	ts.ok(t, "pools:\n- id: silent\n  endpoints: ["+silent+"]\n", "apply", "-f", "-")
	addr, stop := ts.startForward(t, "silent", "--half-close-timeout", "200ms")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The upstream never answers nor closes: forward gives up on it.
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("read after the half-close timeout: %v", err)
	}
	testkit.WaitFor(t, "the lease to end", func() bool {
		l := unmarshal(t, ts.ok(t, "", "leases", "silent", "-o", "json"), &poolv1.ListLeasesResponse{})
		return len(l.GetLeases()) == 0
	})
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

// TestForwardReusesConnections: with --reuse, closing a forwarded
// connection releases its lease, so the next forwarded connection reuses
// the pooled upstream connection instead of dialing a new one.
func TestForwardReusesConnections(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	addr, stop := ts.startForward(t, "echo", "--reuse")
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("round " + itoa(i))
		c.Write(msg)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("round %d: read %q, %v", i, got, err)
		}
		c.Close()
		testkit.WaitFor(t, "the lease to be released", func() bool {
			l := unmarshal(t, ts.ok(t, "", "leases", "echo", "-o", "json"), &poolv1.ListLeasesResponse{})
			return len(l.GetLeases()) == 0
		})
	}
	st := unmarshal(t, ts.ok(t, "", "stats", "echo", "-o", "json"), &poolv1.PoolStats{})
	if st.GetCreated() != 1 || st.GetReused() != 2 || st.GetIdle() != 1 {
		t.Fatalf("after 3 forwarded connections: created %d reused %d idle %d; want 1, 2, 1", st.GetCreated(), st.GetReused(), st.GetIdle())
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

// TestForwardNoReplyHandedOver: by default a forwarded client that sends a
// request and closes before its reply (it gave up, or half-closed) does
// not hand that reply to the next client: its FIN reaches the upstream,
// and the upstream connection is never reused. Each of the rounds gives a
// client B the upstream connection client A left if the lease were
// released as reusable.
func TestForwardNoReplyHandedOver(t *testing.T) {
	ts := startServer(t)
	up := startGatedUpstream(t)
	ts.ok(t, "pools:\n- id: slow\n  endpoints: ["+up.addr+"]\n", "apply", "-f", "-")
	addr, stop := ts.startForward(t, "slow")
	const rounds = 5
	for i := range rounds {
		a, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Write([]byte("A" + itoa(i) + "\n")); err != nil {
			t.Fatal(err)
		}
		<-up.requests // the upstream has A's request
		a.Close()
		// A's lease was released (reusable or not), or its FIN reached the
		// upstream: either way, what forward did with A is settled.
		testkit.WaitFor(t, "A's close to reach the pool or the upstream", func() bool {
			l := unmarshal(t, ts.ok(t, "", "leases", "slow", "-o", "json"), &poolv1.ListLeasesResponse{})
			_, fin := up.finAfter.Load("A" + itoa(i) + "\n")
			return len(l.GetLeases()) == 0 || fin
		})
		b, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Write([]byte("B" + itoa(i) + "\n")); err != nil {
			t.Fatal(err)
		}
		<-up.requests
		up.gate <- struct{}{} // A's late reply
		up.gate <- struct{}{} // B's reply
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(b).ReadString('\n')
		if want := "reply-B" + itoa(i) + "\n"; err != nil || line != want {
			t.Fatalf("round %d: B read %q, %v; want %q", i, line, err, want)
		}
		b.Close()
	}
	testkit.WaitFor(t, "every lease to end", func() bool {
		l := unmarshal(t, ts.ok(t, "", "leases", "slow", "-o", "json"), &poolv1.ListLeasesResponse{})
		return len(l.GetLeases()) == 0
	})
	st := unmarshal(t, ts.ok(t, "", "stats", "slow", "-o", "json"), &poolv1.PoolStats{})
	if st.GetReused() != 0 || st.GetIdle() != 0 {
		t.Fatalf("reused %d, idle %d: a connection a client left was kept", st.GetReused(), st.GetIdle())
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

// TestForwardMirrorsUpstreamFIN: an upstream that sends its reply and FIN
// but keeps reading. In both modes the forwarded client reads the reply,
// then EOF, and the bytes it sends afterwards still reach the upstream.
func TestForwardMirrorsUpstreamFIN(t *testing.T) {
	for _, args := range [][]string{nil, {"--reuse"}} {
		t.Run(strings.Join(append([]string{"mode"}, args...), " "), func(t *testing.T) {
			ts := startServer(t)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = lis.Close() })
			got := make(chan string, 1)
			go func() {
				c, err := lis.Accept()
				if err != nil {
					got <- err.Error()
					return
				}
				defer c.Close()
				_, _ = c.Write([]byte("reply"))
				_ = c.(*net.TCPConn).CloseWrite()
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(c)
				got <- string(b)
			}()
			ts.ok(t, "pools:\n- id: fin\n  endpoints: ["+lis.Addr().String()+"]\n", "apply", "-f", "-")
			addr, stop := ts.startForward(t, "fin", args...)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(c); err != nil || string(b) != "reply" {
				t.Fatalf("read %q, %v; want the reply, then EOF", b, err)
			}
			if _, err := c.Write([]byte("after the FIN")); err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
			if b := <-got; b != "after the FIN" {
				t.Fatalf("upstream read %q after its FIN", b)
			}
			if r := stop(); r.code != 0 {
				t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
			}
		})
	}
}

// gatedUpstream answers each line "X" with "reply-X" once the test sends a
// token on gate, like a slow server; it reports each request it read on
// requests and records, in finAfter, the last line before each FIN.
type gatedUpstream struct {
	addr     string
	gate     chan struct{}
	requests chan string
	finAfter sync.Map // line -> true
}

func startGatedUpstream(t *testing.T) *gatedUpstream {
	t.Helper()
	u := &gatedUpstream{gate: make(chan struct{}), requests: make(chan string, 16)}
	stopc := make(chan struct{})
	u.addr = testkit.Serve(t, func(c net.Conn) {
		lines := make(chan string, 16)
		var reader sync.WaitGroup
		reader.Go(func() { // requests and the FIN
			defer close(lines)
			r := bufio.NewReader(c)
			last := ""
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					u.finAfter.Store(last, true)
					return
				}
				last = line
				u.requests <- line
				lines <- line
			}
		})
		defer reader.Wait()
		defer c.Close()
		for line := range lines { // a reply per request, when the gate opens
			select {
			case <-u.gate:
			case <-stopc:
				return
			}
			if _, err := c.Write([]byte("reply-" + line)); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(stopc) }) // before the kit's cleanup: it waits for the handlers
	return u
}

// TestBackup: backup writes a snapshot that store.Open reads back, with the
// pools in it.
func TestBackup(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: echo\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	file := filepath.Join(t.TempDir(), "backup.db")
	if out := ts.ok(t, "", "backup", "-f", file); !strings.Contains(out, "wrote "+file) {
		t.Fatalf("backup output: %q", out)
	}
	if _, err := os.Stat(file + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	st, err := store.Open(file, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kv, err := st.Get(context.Background(), "pools/echo")
	if err != nil || !strings.Contains(string(kv.Value), echo) {
		t.Fatalf("pools/echo in the backup: %q, %v", kv.Value, err)
	}
}

// TestApplyPostgres applies a POSTGRES pool from YAML (protocol, enums in
// short form, startup parameters), reads it back in every form and applies
// the YAML of get back unchanged.
func TestApplyPostgres(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, `
pools:
  - id: db
    endpoints: [`+echo+`]
    protocol: postgres
    postgres:
      database: app
      user: pool
      ssl_mode: require
      params: {application_name: web, statement_timeout: 5000}
      close_open_transactions: true
`, "apply", "-f", "-")
	p := unmarshal(t, ts.ok(t, "", "get", "db", "-o", "json"), &poolv1.Pool{})
	pg := p.GetPostgres()
	if p.GetProtocol() != poolv1.Protocol_PROTOCOL_POSTGRES || pg.GetDatabase() != "app" || pg.GetUser() != "pool" ||
		pg.GetSslMode() != poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_REQUIRE || pg.GetParams()["statement_timeout"] != "5000" ||
		!pg.GetCloseOpenTransactions() || pg.GetPasswordSet() || pg.GetResetQuery() != "DISCARD ALL" {
		t.Fatalf("get -o json: %v", p)
	}
	if out := ts.ok(t, "", "list"); !regexp.MustCompile(`(?m)^pools/db\s+ACTIVE\s+` + regexp.QuoteMeta(echo) + `\s+no\s+POSTGRES\s`).MatchString(out) {
		t.Fatalf("list:\n%s", out)
	}
	if out := ts.ok(t, "", "get", "db"); !regexp.MustCompile(`postgres\.params\.application_name\s+web`).MatchString(out) {
		t.Fatalf("get:\n%s", out)
	}
	y := ts.ok(t, "", "get", "db", "-o", "yaml")
	resp := unmarshal(t, ts.ok(t, y, "apply", "-f", "-", "-o", "json"), &poolv1.ApplyPoolsResponse{})
	if a := actions(resp); a["pools/db"] != "UNCHANGED" {
		t.Fatalf("apply of get -o yaml: %v\n%s", resp, y)
	}
}
