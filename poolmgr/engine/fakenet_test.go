package engine

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeNet is an in-memory network for synctest bubbles, like net/http's
// transportDialTester: each dial parks until the test finishes it (or, in
// auto mode, succeeds at once), and every connection is a net.Pipe whose
// server end the test can use.
type fakeNet struct {
	t     *testing.T
	dials chan *fakeDial // unbuffered: a parked dial waits here for the test

	mu      sync.Mutex // protects following fields
	auto    bool       // finish dials at once with success
	failErr error      // in auto mode, fail dials with this error
	serve   func(server net.Conn)
	conns   []*fakeConn
	dialLog []fakeDialRecord
}

type fakeDialRecord struct {
	addr string
	at   time.Time
}

type fakeDial struct {
	addr string
	ctx  context.Context
	res  chan error // size 1
}

// fakeConn is the pool's end of a pipe; it records when it was closed.
type fakeConn struct {
	net.Conn
	server net.Conn
	addr   string

	mu       sync.Mutex
	closed   bool
	closedAt time.Time
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.closedAt = time.Now()
	}
	c.mu.Unlock()
	c.server.Close()
	return c.Conn.Close()
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func newFakeNet(t *testing.T, auto bool) *fakeNet {
	t.Helper()
	n := &fakeNet{t: t, dials: make(chan *fakeDial), auto: auto}
	t.Cleanup(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, c := range n.conns {
			c.Close()
		}
	})
	return n
}

func (n *fakeNet) setAuto(auto bool, failErr error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.auto, n.failErr = auto, failErr
}

func (n *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	n.dialLog = append(n.dialLog, fakeDialRecord{addr: addr, at: time.Now()})
	auto, failErr := n.auto, n.failErr
	n.mu.Unlock()
	if auto {
		if failErr != nil {
			return nil, failErr
		}
		return n.connect(addr), nil
	}
	d := &fakeDial{addr: addr, ctx: ctx, res: make(chan error, 1)}
	select {
	case n.dials <- d:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case err := <-d.res:
		if err != nil {
			return nil, err
		}
		return n.connect(addr), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (n *fakeNet) connect(addr string) net.Conn {
	client, server := net.Pipe()
	c := &fakeConn{Conn: client, server: server, addr: addr}
	n.mu.Lock()
	n.conns = append(n.conns, c)
	serve := n.serve
	n.mu.Unlock()
	if serve != nil {
		go serve(server)
	}
	return c
}

// wantDial returns the dial parked now; it fails the test if there is none.
func (n *fakeNet) wantDial() *fakeDial {
	n.t.Helper()
	synctest.Wait()
	select {
	case d := <-n.dials:
		return d
	default:
		n.t.Fatal("no dial in progress, want one")
		return nil
	}
}

// wantNoDial fails the test if a dial is parked.
func (n *fakeNet) wantNoDial() {
	n.t.Helper()
	synctest.Wait()
	select {
	case d := <-n.dials:
		n.t.Fatalf("unexpected dial to %s", d.addr)
	default:
	}
}

func (d *fakeDial) finish(err error) { d.res <- err }

// open counts the connections not yet closed.
func (n *fakeNet) open() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for _, c := range n.conns {
		if !c.isClosed() {
			k++
		}
	}
	return k
}

func (n *fakeNet) allConns() []*fakeConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*fakeConn(nil), n.conns...)
}

func (n *fakeNet) dialCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.dialLog)
}

var errRefused = errors.New("connection refused (fake)")

// testConfig is a valid config for the fake network, with defaults.
func testConfig(mutate func(*Config)) Config {
	cfg := Config{Endpoints: []string{"10.0.0.1:6379"}}
	cfg.Limits.MaxConnections = 2
	cfg.Lifecycle.IdleTimeout = time.Hour
	cfg.Lifecycle.MaxLifetime = 10 * time.Hour
	cfg.Lifecycle.LifetimeJitter = 0
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg.WithDefaults()
}

// newTestPool starts a pool on n and closes it at cleanup.
func newTestPool(t *testing.T, n *fakeNet, cfg Config) *Pool {
	t.Helper()
	p, err := NewPool("test", cfg, Env{Dial: n.dial, Resolver: fakeResolver{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// fakeResolver maps names to addresses; safe for concurrent use.
type fakeResolver struct{ m *sync.Map }

func (r fakeResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	if r.m == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	v, ok := r.m.Load(host)
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return v.([]string), nil
}

// acquireAsync starts an Acquire on its own goroutine.
type asyncAcquire struct {
	done chan struct{}
	c    *Conn
	err  error
}

func acquireAsync(ctx context.Context, p *Pool, holder string) *asyncAcquire {
	a := &asyncAcquire{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.c, a.err = p.Acquire(ctx, holder)
	}()
	return a
}

// result returns the outcome; it fails the test if Acquire has not returned.
func (a *asyncAcquire) result(t *testing.T) (*Conn, error) {
	t.Helper()
	synctest.Wait()
	select {
	case <-a.done:
		return a.c, a.err
	default:
		t.Fatal("Acquire still blocked, want it done")
		return nil, nil
	}
}

func (a *asyncAcquire) wantBlocked(t *testing.T) {
	t.Helper()
	synctest.Wait()
	select {
	case <-a.done:
		t.Fatalf("Acquire returned (%v, %v), want it blocked", a.c, a.err)
	default:
	}
}

func mustAcquire(t *testing.T, p *Pool) *Conn {
	t.Helper()
	c, err := p.Acquire(context.Background(), "t")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return c
}
