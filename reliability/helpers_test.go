package reliability_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
)

// pause waits d or until ctx ends; it paces workloads, it never waits for
// state (use waitFor for that).
func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// testCtx is a context ended by the test's cleanup.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ---- in-process server ----------------------------------------------------

// srvOptions configures startServer.
type srvOptions struct {
	env                             poolmgr.Env
	keepaliveTime, keepaliveTimeout time.Duration
}

// inproc is a poolmgr.Manager over a real bbolt store behind server.New,
// serving on 127.0.0.1:0.
type inproc struct {
	mgr   *poolmgr.Manager
	addr  string
	cc    *grpc.ClientConn
	admin poolv1.PoolAdminServiceClient
	stats poolv1.StatsServiceClient
}

func startServer(t testing.TB, o srvOptions) *inproc {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{
		Store:   store.Options{NoSync: true},
		Logger:  discardLogger(),
		Manager: func(c *poolmgr.ManagerConfig) { c.Env = o.env },
		Server: func(c *server.Config) {
			c.KeepaliveTime = o.keepaliveTime
			c.KeepaliveTimeout = o.keepaliveTimeout
			c.KeepaliveMinTime = time.Millisecond
		},
	})
	cc, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &inproc{mgr: srv.Manager, addr: srv.Addr, cc: cc,
		admin: poolv1.NewPoolAdminServiceClient(cc), stats: poolv1.NewStatsServiceClient(cc)}
}

func (s *inproc) create(t testing.TB, id string, cfg poolmgr.Config) *poolmgr.Pool {
	t.Helper()
	if _, err := s.mgr.Create(context.Background(), id, cfg, poolmgr.WriteOptions{Actor: "reliability"}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	p, err := s.mgr.Pool(id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newClient returns an SDK client of addr closed by the test's cleanup.
func newClient(t testing.TB, addr string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(addr, append([]client.Option{client.WithInsecure()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ---- upstreams --------------------------------------------------------------

// handler serves one upstream connection; epoch is the upstream's restart
// count when the connection was accepted. It returns when the connection
// fails or is closed.
type handler func(u *upstream, c net.Conn, epoch int64)

// upstream is a loopback TCP server that can be killed (listener and every
// connection closed) and restarted on the same address. It counts accepted
// and open connections.
type upstream struct {
	addr string

	accepted atomic.Int64
	open     atomic.Int64
	cuts     atomic.Int64 // connections the handler closed on its own (idle cut)
	stale    atomic.Int64 // requests that arrived on a connection older than their lease

	wg sync.WaitGroup // accept loops and handlers

	mu    sync.Mutex // protects the fields below
	h     handler
	ln    net.Listener
	conns map[net.Conn]struct{}
	epoch int64
}

// startUpstream listens on addr ("127.0.0.1:0" for a new port) and is
// killed by the test's cleanup.
func startUpstream(t testing.TB, addr string, h handler) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return upstreamOn(t, ln, h)
}

// upstreamOn is startUpstream on a listener.
func upstreamOn(t testing.TB, ln net.Listener, h handler) *upstream {
	u := &upstream{h: h, conns: make(map[net.Conn]struct{}), addr: ln.Addr().String()}
	u.serve(ln)
	t.Cleanup(u.kill)
	return u
}

func (u *upstream) serve(ln net.Listener) {
	u.mu.Lock()
	u.ln = ln
	epoch, h := u.epoch, u.h
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			if u.ln != ln { // killed meanwhile
				u.mu.Unlock()
				c.Close()
				return
			}
			u.conns[c] = struct{}{}
			u.accepted.Add(1)
			u.open.Add(1)
			u.wg.Add(1)
			u.mu.Unlock()
			go func() {
				defer u.wg.Done()
				h(u, c, epoch)
				c.Close()
				u.mu.Lock()
				delete(u.conns, c)
				u.mu.Unlock()
				u.open.Add(-1)
			}()
		}
	}()
}

// kill closes the listener and every connection, and waits for the
// handlers. Idempotent.
func (u *upstream) kill() {
	u.mu.Lock()
	ln := u.ln
	u.ln = nil
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	u.wg.Wait()
}

// restart listens again on the same address with the next epoch.
func (u *upstream) restart(t testing.TB) {
	t.Helper()
	u.restartWith(t, nil, nil)
}

// restartWith is restart with another handler (if h is not nil) and a
// listener wrapper (tls.NewListener, if wrap is not nil).
func (u *upstream) restartWith(t testing.TB, wrap func(net.Listener) net.Listener, h handler) {
	t.Helper()
	var ln net.Listener
	var err error
	testkit.WaitWithin(t, 5*time.Second, "relisten on "+u.addr, func() bool {
		ln, err = net.Listen("tcp", u.addr)
		return err == nil
	})
	if wrap != nil {
		ln = wrap(ln)
	}
	u.mu.Lock()
	u.epoch++
	if h != nil {
		u.h = h
	}
	u.mu.Unlock()
	u.serve(ln)
}

// echoLines answers every line with the same line.
func echoLines(_ *upstream, c net.Conn, _ int64) {
	_, _ = io.Copy(c, c)
}

// epochEcho answers "req <id> <leaseEpoch>\n" with "ok <id> <connEpoch>\n",
// and counts requests whose lease began after the connection's epoch ended
// (the pool handed out a connection the upstream had already closed: it
// cannot happen, since such a connection is closed, unless a kill failed to
// close it; the client checks the reply too).
func epochEcho(u *upstream, c net.Conn, epoch int64) {
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "req" {
			return
		}
		if e, err := strconv.ParseInt(f[2], 10, 64); err != nil || e > epoch {
			u.stale.Add(1)
		}
		if _, err := fmt.Fprintf(c, "ok %s %d\n", f[1], epoch); err != nil {
			return
		}
	}
}

// idleCutter is echoLines behind a firewall that drops connections idle
// (nothing received) for idle.
func idleCutter(idle time.Duration) handler {
	return func(u *upstream, c net.Conn, _ int64) {
		if echoUntilIdle(c, idle) {
			u.cuts.Add(1)
		}
	}
}

// echoUntilIdle echoes what c sends until c has sent nothing for idle
// (true) or the connection ends (false).
func echoUntilIdle(c net.Conn, idle time.Duration) bool {
	buf := make([]byte, 4096)
	for {
		if err := c.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return false
		}
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return false
			}
		}
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// roundTrip writes one line and reads the echoed line back.
func roundTrip(c net.Conn, br *bufio.Reader, line string) (string, error) {
	if _, err := io.WriteString(c, line); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	got, err := br.ReadString('\n')
	if err != nil {
		return got, fmt.Errorf("read: %w", err)
	}
	return got, nil
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// secs formats d in seconds with millisecond precision.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s" }
