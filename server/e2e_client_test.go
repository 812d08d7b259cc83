package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"google.golang.org/grpc/stats"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"

	"github.com/poolplane/poolplane/internal/testkit"
)

// sdkEnv is a real poold in miniature driven through package client: a
// store on t.TempDir(), a loaded Manager, the server from server.New on
// 127.0.0.1:0 and a client.Client counting its Lease streams. t.Cleanup
// closes everything, the client first.
type sdkEnv struct {
	mgr     *poolmgr.Manager
	svcs    *server.Services
	addr    string
	c       *client.Client
	streams *leaseStreamCounter
}

func startSDKEnv(t testing.TB, opts ...client.Option) *sdkEnv {
	t.Helper()
	return startSDKEnvWith(t, sdkEnvConfig{client: opts})
}

// createPool creates pool id with cfg.
func (e *sdkEnv) createPool(t testing.TB, id string, cfg poolmgr.Config) {
	t.Helper()
	if _, err := e.mgr.Create(context.Background(), id, cfg, poolmgr.WriteOptions{Actor: "test"}); err != nil {
		t.Fatalf("Create %s: %v", id, err)
	}
}

// leaseStreamCounter is a client stats.Handler counting Lease RPCs, and
// the messages they send (out) and receive (in). With traceSender set it
// also counts the messages sent by one of the SDK's send goroutines
// (bySendLoop) rather than on the caller's goroutine.
type leaseStreamCounter struct {
	n, out, in  atomic.Int64
	traceSender atomic.Bool
	bySendLoop  atomic.Int64
}

type methodKey struct{}

func (s *leaseStreamCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (s *leaseStreamCounter) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if ctx.Value(methodKey{}) != poolv1.LeaseService_Lease_FullMethodName {
		return
	}
	switch st.(type) {
	case *stats.Begin:
		s.n.Add(1)
	case *stats.OutPayload:
		s.out.Add(1)
		if s.traceSender.Load() {
			// gRPC reports a sent message on the goroutine that sent it.
			buf := make([]byte, 16<<10)
			if bytes.Contains(buf[:runtime.Stack(buf, false)], []byte(").sendLoop(")) {
				s.bySendLoop.Add(1)
			}
		}
	case *stats.InPayload:
		s.in.Add(1)
	}
}

func (s *leaseStreamCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (s *leaseStreamCounter) HandleConn(context.Context, stats.ConnStats) {}

// sdkUpstream is a loopback TCP upstream counting accepted connections.
// With a handler it serves each connection on its own goroutine; without
// one it hands each accepted connection to the test on conns.
type sdkUpstream struct {
	addr     string
	accepted atomic.Int64
	conns    chan net.Conn
}

func startSDKUpstream(t testing.TB, handler func(net.Conn)) *sdkUpstream {
	t.Helper()
	u := &sdkUpstream{conns: make(chan net.Conn, 1024)}
	u.addr = testkit.Serve(t, func(c net.Conn) {
		u.accepted.Add(1)
		if handler == nil {
			u.conns <- c
			return
		}
		handler(c)
	})
	return u
}

// TestSDKNetTestConn runs nettest.TestConn on leased connections; the other
// end is the upstream's accepted connection. nettest expects Close to reach
// the peer, so the pool is SINGLE_USE: a released connection is closed.
func TestSDKNetTestConn(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, nil)
	e.createPool(t, "nt", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: 4},
		Reuse:     poolmgr.SingleUse,
	})
	nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
		conn, err := e.c.Lease(context.Background(), "nt")
		if err != nil {
			return nil, nil, nil, err
		}
		far := testkit.Recv(t, up.conns)
		return conn, far, func() {
			_ = conn.Close()
			_ = far.Close()
		}, nil
	})
}

// TestSDKSequentialLeases leases 10,000 times in a row from a pool of 4
// prewarmed connections: the upstream sees exactly 4 connections, and the
// client keeps reusing a few warm streams.
func TestSDKSequentialLeases(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	e := startSDKEnv(t)
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "seq", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: 4, MinIdle: 4},
	})
	ctx := context.Background()
	msg := []byte("ping0000")
	buf := make([]byte, len(msg))
	start := time.Now()
	var reused int
	for i := range n {
		conn, err := e.c.Lease(ctx, "seq")
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		if conn.Info().Reused {
			reused++
		}
		copy(msg[4:], fmt.Sprintf("%04d", i%10000))
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("lease %d: Write: %v", i, err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("lease %d: read %q, %v", i, buf, err)
		}
		if err := conn.Close(); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	st, err := e.c.PoolStats(ctx, "seq")
	if err != nil {
		t.Fatal(err)
	}
	if got := up.accepted.Load(); got != 4 || st.GetDials() != 4 {
		t.Errorf("upstream accepted %d connections, pool dialed %d; want 4", got, st.GetDials())
	}
	if st.GetAcquires() != uint64(n) || st.GetCreated() > 4 {
		t.Errorf("stats: %d acquires, %d created", st.GetAcquires(), st.GetCreated())
	}
	streams := e.streams.n.Load()
	if streams > int64(client.DefaultIdleStreams) {
		t.Errorf("%d Lease streams for %d sequential leases", streams, n)
	}
	t.Logf("%d sequential lease+echo+release: %v each; %d Lease streams; %d granted reused", n, elapsed/time.Duration(n), streams, reused)
}

// TestSDKHTTPOverTLS sends 1,000 requests from 16 goroutines through
// http.Transport with the pool's Dialer to a TLS upstream: the pool does the
// TLS, so the upstream sees at most max_connections handshakes.
func TestSDKHTTPOverTLS(t *testing.T) {
	var handshakes atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path", r.URL.Path)
		_, _ = io.WriteString(w, "hello "+r.URL.Query().Get("n"))
	}))
	up.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		handshakes.Add(1)
		return nil, nil
	}}
	up.StartTLS()
	t.Cleanup(up.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})

	e := startSDKEnv(t)
	const maxConns = 4
	e.createPool(t, "api", poolmgr.Config{
		Endpoints: []string{up.Listener.Addr().String()},
		TLS:       poolmgr.TLSConfig{Enabled: true, CAPEM: string(caPEM)},
		Limits:    poolmgr.Limits{MaxConnections: maxConns},
	})
	tr := &http.Transport{
		DialContext:         e.c.Dialer("api"),
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
	}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	const goroutines, total = 16, 1000
	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range goroutines {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > total {
					return
				}
				resp, err := hc.Get("http://api/item?n=" + strconv.FormatInt(i, 10))
				if err != nil {
					t.Errorf("request %d: %v", i, err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(b) != "hello "+strconv.FormatInt(i, 10) || resp.Header.Get("X-Path") != "/item" {
					t.Errorf("request %d: %d %q %v", i, resp.StatusCode, b, err)
				}
			}
		})
	}
	wg.Wait()
	if n := handshakes.Load(); n > maxConns {
		t.Errorf("net/http: upstream saw %d TLS handshakes, want at most %d", n, maxConns)
	}
	// Releases the Transport's leases, each under a Read of net/http's own:
	// on a RAW pool they are closed, not reused (see
	// TestHTTPTransportCloseIdleNotReused); one net/http closed before its
	// reader started may go back to the pool, as no request went out on it.
	tr.CloseIdleConnections()
	testkit.WaitFor(t, "the Transport's leases to be released", func() bool {
		st, err := e.c.PoolStats(context.Background(), "api")
		return err == nil && st.GetInUse() == 0 && st.GetDialing() == 0
	})
	before := handshakes.Load()

	// Lease per request: every request leases, sends, reads and releases.
	for i := range 200 {
		conn, err := e.c.Lease(context.Background(), "api")
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "http://api/lpr?n="+strconv.Itoa(i), nil)
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || string(b) != "hello "+strconv.Itoa(i) {
			t.Fatalf("lease-per-request %d: %q %v", i, b, err)
		}
		_ = conn.Close()
	}
	if n := handshakes.Load() - before; n > maxConns {
		t.Errorf("lease per request: upstream saw %d TLS handshakes, want at most %d", n, maxConns)
	}
	t.Logf("%d requests, %d upstream TLS handshakes", total+200, handshakes.Load())
}

// TestSDKLeaseErrors checks the typed errors of a real server.
func TestSDKLeaseErrors(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "one", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: 1, MaxWaiters: 1},
	})
	ctx := context.Background()
	if _, err := e.c.Lease(ctx, "missing"); !errors.Is(err, client.ErrPoolNotFound) {
		t.Errorf("missing pool: %v", err)
	}
	held, err := e.c.Lease(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	// One waiter fills the backlog; the next is refused.
	waiterCtx, cancelWaiter := context.WithCancel(ctx)
	waiterErr := make(chan error, 1)
	go func() {
		_, err := e.c.Lease(waiterCtx, "one")
		waiterErr <- err
	}()
	p, err := e.mgr.Pool("one")
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "a queued waiter", func() bool { return p.Stats().Waiters == 1 })
	_, err = e.c.Lease(ctx, "one")
	var perr *client.Error
	if !errors.Is(err, client.ErrBacklogFull) || !errors.As(err, &perr) || perr.RetryAfter <= 0 {
		t.Errorf("full backlog: %v", err)
	}
	cancelWaiter()
	if err := testkit.Recv(t, waiterErr); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: %v", err)
	}
	_ = held.Close()

	// The other checks use a pool of their own.
	e.createPool(t, "two", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: 1},
	})
	held, err = e.c.Lease(ctx, "two")
	if err != nil {
		t.Fatal(err)
	}
	// A deadline becomes the acquire timeout.
	tctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	_, err = e.c.Lease(tctx, "two")
	cancel()
	if !errors.Is(err, client.ErrAcquireTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire timeout: %v", err)
	}
	_ = held.Close()
	// Revocation ends a held lease.
	conn, err := e.c.Lease(ctx, "two")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.mgr.RevokeLease(ctx, strings.TrimPrefix(conn.Info().LeaseID, "pools/two/leases/")); err != nil {
		t.Fatalf("RevokeLease(%s): %v", conn.Info().LeaseID, err)
	}
	var ended *client.EndedError
	if _, err := conn.Read(make([]byte, 1)); !errors.As(err, &ended) || ended.Reason != poolv1.EndReason_END_REASON_REVOKED {
		t.Errorf("Read after revoke: %v", err)
	}
	_ = conn.Close()
	// Draining refuses new leases.
	if _, err := e.mgr.Drain(ctx, "two", poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Lease(ctx, "two"); !errors.Is(err, client.ErrDraining) {
		t.Errorf("draining pool: %v", err)
	}
}

// TestSDKUpstreamEOFAndHalfClose: the upstream's EOF reaches Read, and
// CloseWrite's FIN reaches the upstream.
func TestSDKUpstreamEOFAndHalfClose(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's CloseWrite
		_, _ = c.Write(bytes.ToUpper(b))
		_ = c.Close()
	})
	e.createPool(t, "hc", poolmgr.Config{Endpoints: []string{up.addr}})
	conn, err := e.c.Lease(context.Background(), "hc")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("half closed")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "HALF CLOSED" {
		t.Errorf("ReadAll = %q, %v", b, err)
	}
}

// TestSDKWatchStats streams snapshots of a real pool.
func TestSDKWatchStats(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "w", poolmgr.Config{Endpoints: []string{up.addr}})
	conn, err := e.c.Lease(context.Background(), "w")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	n := 0
	for snap, err := range e.c.WatchStats(context.Background(), 100*time.Millisecond, "w") {
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.GetStats()) != 1 || snap.GetStats()[0].GetName() != "pools/w" || snap.GetStats()[0].GetInUse() != 1 {
			t.Errorf("snapshot: %v", snap)
		}
		if n++; n == 2 {
			break
		}
	}
}

// BenchmarkSDKLeasePerRequest measures a warm lease, an 8-byte echo and the
// release against the real server over loopback.
func BenchmarkSDKLeasePerRequest(b *testing.B) {
	e := startSDKEnv(b)
	up := startSDKUpstream(b, testkit.EchoConn)
	e.createPool(b, "bench", poolmgr.Config{Endpoints: []string{up.addr}, Limits: poolmgr.Limits{MaxConnections: 64, MinIdle: 8}})
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 8)
		for pb.Next() {
			conn, err := e.c.Lease(ctx, "bench")
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := conn.Write([]byte("pingpong")); err != nil {
				b.Error(err)
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				b.Error(err)
			}
			_ = conn.Close()
		}
	})
	b.ReportMetric(float64(e.streams.n.Load()), "streams")
}

// BenchmarkSDKRoundTrip measures an 8-byte echo on one held lease.
func BenchmarkSDKRoundTrip(b *testing.B) {
	e := startSDKEnv(b)
	up := startSDKUpstream(b, testkit.EchoConn)
	e.createPool(b, "bench", poolmgr.Config{Endpoints: []string{up.addr}})
	conn, err := e.c.Lease(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 8)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write([]byte("pingpong")); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSDKThroughput measures upstream-to-client bytes on one lease.
func BenchmarkSDKThroughput(b *testing.B) {
	e := startSDKEnv(b)
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	up := startSDKUpstream(b, func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	e.createPool(b, "bench", poolmgr.Config{Endpoints: []string{up.addr}})
	conn, err := e.c.Lease(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Discard()
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSDKLeasePerRequestMessages: a lease per request on a warm stream
// (LeaseWith with the request, Read, Close) costs one message each way
// before the reply is in hand: the open carries the request and granted
// its reply. Release and ended follow, and no one waits for them.
// TestSDKHeldLeaseWritesInline: on a held lease, a small Write behind
// bytes the server confirmed (with its reply) goes out on the caller's
// goroutine: a request costs no send goroutine.
func TestSDKHeldLeaseWritesInline(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "echo", poolmgr.Config{Endpoints: []string{up.addr}, Limits: poolmgr.Limits{MaxConnections: 1}})
	c, err := e.c.Lease(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e.streams.traceSender.Store(true)
	defer e.streams.traceSender.Store(false)
	out := e.streams.out.Load()
	const n = 20
	for i := range n {
		msg := []byte(fmt.Sprintf("request %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("read %q, %v; want %q", buf, err, msg)
		}
	}
	if got := e.streams.out.Load() - out; got != n {
		t.Fatalf("%d messages sent for %d writes, want %d", got, n, n)
	}
	if got := e.streams.bySendLoop.Load(); got != 0 {
		t.Errorf("%d of %d writes sent by a send goroutine, want none", got, n)
	}
}

func TestSDKLeasePerRequestMessages(t *testing.T) {
	e := startSDKEnv(t)
	e.svcs.Lease.SetGrantHold(time.Hour) // the echo always comes first, however slow the machine
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "echo", poolmgr.Config{Endpoints: []string{up.addr}, Limits: poolmgr.Limits{MaxConnections: 1}})
	ctx := context.Background()
	// request runs lease i, which costs the server messages in all.
	request := func(i int, messages int64) {
		t.Helper()
		msg := []byte(fmt.Sprintf("request %d", i))
		in := e.streams.in.Load()
		c, err := e.c.LeaseWith(ctx, "echo", msg)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("read %q, %v; want %q", buf, err, msg)
		}
		if got := e.streams.in.Load() - in; i > 0 && got != 1 {
			t.Fatalf("request %d: %d messages from the server before the reply was read, want 1 (granted with the reply)", i, got)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		// The stream is idle again once ended arrived.
		testkit.WaitWithin(t, 10*time.Second, "ended", func() bool { return e.streams.in.Load()-in >= messages })
	}
	// A new stream: the server's features come with its first response;
	// granted, data and ended.
	request(0, 3)
	out, in := e.streams.out.Load(), e.streams.in.Load()
	const n = 5
	for i := 1; i <= n; i++ {
		request(i, 2)
	}
	if got := e.streams.out.Load() - out; got != 2*n {
		t.Errorf("%d client messages for %d leases, want %d (open with the request, release)", got, n, 2*n)
	}
	if got := e.streams.in.Load() - in; got != 2*n {
		t.Errorf("%d server messages for %d leases, want %d (granted with the reply, ended)", got, n, 2*n)
	}
	if got := e.streams.n.Load(); got != 1 {
		t.Errorf("%d Lease streams, want 1", got)
	}
}
