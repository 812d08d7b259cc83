package engine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// upstream is a loopback TCP server (echo by default) that counts the
// connections it holds open.
type testUpstream struct {
	t       *testing.T
	ln      net.Listener
	handler func(net.Conn)
	wg      sync.WaitGroup

	mu       sync.Mutex // protects following fields
	conns    map[net.Conn]bool
	accepted int
	maxOpen  int
	peerCNs  []string
}

func echo(c net.Conn) { io.Copy(c, c) }

// startUpstream listens on addr ("127.0.0.1:0" for any port); wrap, if not
// nil, wraps the listener (TLS).
func startUpstream(t *testing.T, addr string, wrap func(net.Listener) net.Listener, handler func(net.Conn)) *testUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	if handler == nil {
		handler = echo
	}
	u := &testUpstream{t: t, ln: ln, handler: handler, conns: map[net.Conn]bool{}}
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(u.stop)
	return u
}

func (u *testUpstream) addr() string { return u.ln.Addr().String() }

func (u *testUpstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		// Count the connections open now: those whose client has closed
		// (FIN queued) but whose handler has not noticed yet do not count.
		open := 1
		for o := range u.conns {
			if !closedByPeer(o) {
				open++
			}
		}
		u.conns[c] = true
		u.accepted++
		u.maxOpen = max(u.maxOpen, open)
		u.mu.Unlock()
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			if tc, ok := c.(*tls.Conn); ok {
				if tc.Handshake() == nil {
					if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
						u.mu.Lock()
						u.peerCNs = append(u.peerCNs, certs[0].Subject.CommonName)
						u.mu.Unlock()
					}
				}
			}
			u.handler(c)
			c.Close()
			u.mu.Lock()
			delete(u.conns, c)
			u.mu.Unlock()
		}()
	}
}

// closedByPeer reports whether c's peer has closed it (EOF is queued) or c
// is closed, without reading: a MSG_PEEK recv on the descriptor.
func closedByPeer(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	eof := false
	if err := raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		eof = err == nil && n == 0
	}); err != nil {
		return true
	}
	return eof
}

// closeConns closes every accepted connection (the listener stays).
func (u *testUpstream) closeConns() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.conns {
		c.Close()
	}
}

func (u *testUpstream) stop() {
	u.ln.Close()
	u.closeConns()
	u.wg.Wait()
}

func (u *testUpstream) open() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// anyConn returns one accepted connection, waiting for the accept.
func (u *testUpstream) anyConn() net.Conn {
	u.t.Helper()
	var c net.Conn
	testkit.WaitFor(u.t, "an accepted connection", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		for o := range u.conns {
			c = o
			return true
		}
		return false
	})
	return c
}

func ioConfig(endpoint string, mutate func(*Config)) Config {
	cfg := Config{Endpoints: []string{endpoint}}
	cfg.Limits.MaxConnections = 4
	cfg.Limits.DialTimeout = 5 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg.WithDefaults()
}

func newIOPool(t *testing.T, cfg Config, env Env) *Pool {
	t.Helper()
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := NewPool("io", cfg, env)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip checks the leased connection reaches an echo server.
func roundTrip(t *testing.T, c *Conn) {
	t.Helper()
	nc := c.NetConn()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write([]byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read: %q, %v", buf, err)
	}
}

func TestIODeadIdleConnectionIsNotHandedOut(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), nil), Env{})
	c := mustAcquire(t, p)
	roundTrip(t, c)
	c.Release(true)

	u.closeConns() // the upstream closes the idle connection
	testkit.WaitFor(t, "the FIN to arrive", func() bool { return !c.alive() })

	c2 := mustAcquire(t, p)
	if c2.Info().Reused {
		t.Fatal("a dead idle connection was handed out")
	}
	roundTrip(t, c2)
	c2.Release(true)
	if s := p.Stats(); s.Closes["unhealthy"] != 1 {
		t.Fatalf("closes = %v, want 1 unhealthy", s.Closes)
	}
}

func TestIOStrayBytesCloseIdleConnection(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), nil), Env{})
	c := mustAcquire(t, p)
	c.Release(true)
	u.anyConn().Write([]byte("unsolicited"))
	testkit.WaitFor(t, "stray bytes", func() bool { return !c.alive() })
	c2 := mustAcquire(t, p)
	defer c2.Release(true)
	if c2.Info().Reused || p.Stats().Closes["unhealthy"] != 1 {
		t.Fatalf("stray bytes not caught: reused=%v closes=%v", c2.Info().Reused, p.Stats().Closes)
	}
	roundTrip(t, c2)
}

func TestIOValidateAfterIdleSkipsPeek(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) { c.Lifecycle.ValidateAfterIdle = time.Hour }), Env{})
	c := mustAcquire(t, p)
	c.Release(true)
	u.anyConn().Write([]byte("x"))
	testkit.WaitFor(t, "stray bytes", func() bool { return !c.alive() })
	c2 := mustAcquire(t, p)
	if c2 != c {
		t.Fatal("peeked although idle for less than validate_after_idle")
	}
	c2.Release(false)
}

func TestIOReleaseWithUnreadBytesCloses(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), nil), Env{})
	c := mustAcquire(t, p)
	c.NetConn().Write([]byte("ping")) // the echo is never read
	testkit.WaitFor(t, "the echo", func() bool { return !c.alive() })
	c.Release(true)
	if s := p.Stats(); s.Closes["dirty"] != 1 || s.Idle != 0 {
		t.Fatalf("release with unread bytes: %+v", s)
	}
	testkit.WaitFor(t, "upstream to see the close", func() bool { return u.open() == 0 })
}

func TestIOUpstreamRestart(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	addr := u.addr()
	p := newIOPool(t, ioConfig(addr, func(c *Config) { c.Limits.MinIdle = 2 }), Env{})
	testkit.WaitFor(t, "prewarm", func() bool { return p.Stats().Idle == 2 })
	u.stop()
	u2 := startUpstream(t, addr, nil, nil)
	for i := range 3 {
		c := mustAcquire(t, p)
		roundTrip(t, c)
		if c.Info().Reused && i == 0 {
			t.Fatal("handed out a connection to the old upstream")
		}
		c.Release(true)
	}
	u2.mu.Lock()
	defer u2.mu.Unlock()
	if u2.accepted == 0 {
		t.Fatal("no connection to the restarted upstream")
	}
}

func TestIODialFailureReportsLastError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	p := newIOPool(t, ioConfig(addr, func(c *Config) { c.Limits.AcquireTimeout = 100 * time.Millisecond }), Env{})
	_, err = p.Acquire(context.Background(), "t")
	var ae *AcquireError
	if !errors.As(err, &ae) || ae.LastDialErr == nil || !errors.Is(ae.LastDialErr, errors.Unwrap(ae.LastDialErr)) {
		t.Fatalf("err = %v, want an AcquireError carrying the dial error", err)
	}
	if !errors.Is(err, ErrAcquireTimeout) && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

// testPKI is a CA with a server certificate for 127.0.0.1/upstream.test and
// a client certificate "poold-client", all generated for the test.
type testPKI struct {
	*testkit.CA
	server, client *testkit.Cert
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := testkit.NewCA(t)
	return &testPKI{CA: ca, server: ca.Server(t, "upstream.test", "127.0.0.1"), client: ca.Client(t, "poold-client")}
}

func TestIOTLS(t *testing.T) {
	pki := newTestPKI(t)
	for _, mutual := range []bool{false, true} {
		t.Run("mtls="+strconv.FormatBool(mutual), func(t *testing.T) {
			srvCfg := &tls.Config{Certificates: []tls.Certificate{pki.server.TLS}}
			if mutual {
				srvCfg.ClientAuth = tls.RequireAndVerifyClientCert
				srvCfg.ClientCAs = pki.Pool()
			}
			u := startUpstream(t, "127.0.0.1:0", func(ln net.Listener) net.Listener { return tls.NewListener(ln, srvCfg) }, nil)
			p := newIOPool(t, ioConfig(u.addr(), func(c *Config) {
				c.TLS = TLSConfig{Enabled: true, CAPEM: string(pki.PEM), ServerName: "upstream.test"}
				if mutual {
					c.TLS.ClientCertPEM, c.TLS.ClientKeyPEM = string(pki.client.CertPEM), string(pki.client.KeyPEM)
				}
			}), Env{})
			for i := range 3 {
				c := mustAcquire(t, p)
				if _, ok := c.NetConn().(*tls.Conn); !ok {
					t.Fatalf("NetConn is %T, want *tls.Conn", c.NetConn())
				}
				if i > 0 && !c.Info().Reused {
					t.Fatalf("lease %d: TLS connection not reused (closes %v)", i, p.Stats().Closes)
				}
				roundTrip(t, c)
				c.Release(true)
			}
			// A prewarmed connection never read from (session tickets
			// pending) passes the checkout peek too.
			c1, c2 := mustAcquire(t, p), mustAcquire(t, p)
			c2.Release(true)
			c1.Release(true)
			for range 2 {
				c := mustAcquire(t, p)
				roundTrip(t, c)
				defer c.Release(true)
			}
			if s := p.Stats(); len(s.Closes) != 0 {
				t.Fatalf("closes = %v, want none", s.Closes)
			}
			if mutual {
				u.mu.Lock()
				cns := u.peerCNs
				u.mu.Unlock()
				if len(cns) == 0 || cns[0] != "poold-client" {
					t.Fatalf("upstream saw client certificates %v", cns)
				}
			}
		})
	}
}

func TestIOTLSUntrustedUpstreamFailsDial(t *testing.T) {
	pki := newTestPKI(t)
	srvCfg := &tls.Config{Certificates: []tls.Certificate{pki.server.TLS}}
	u := startUpstream(t, "127.0.0.1:0", func(ln net.Listener) net.Listener { return tls.NewListener(ln, srvCfg) }, nil)
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) {
		c.TLS = TLSConfig{Enabled: true, ServerName: "upstream.test"} // system roots
		c.Limits.AcquireTimeout = 5 * time.Second                     // ends early: the circuit opens
	}), Env{})
	_, err := p.Acquire(context.Background(), "t")
	var ae *AcquireError
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &ae) || !errors.As(ae.LastDialErr, &uae) {
		t.Fatalf("err = %v, want the unknown-authority error as LastDialErr", err)
	}
}

func TestIODNSChange(t *testing.T) {
	a := startUpstream(t, "127.0.0.1:0", nil, nil)
	_, port, _ := net.SplitHostPort(a.addr())
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", port))
	if err != nil {
		t.Skipf("127.0.0.2:%s unavailable: %v", port, err)
	}
	ln.Close()
	b := startUpstream(t, net.JoinHostPort("127.0.0.2", port), nil, nil)

	var m sync.Map
	m.Store("upstream.test", []string{"127.0.0.1"})
	p := newIOPool(t, ioConfig("upstream.test:"+port, nil), Env{Resolver: fakeResolver{&m}})
	leased := mustAcquire(t, p)
	idle := mustAcquire(t, p)
	roundTrip(t, idle)
	idle.Release(true)
	if got := leased.Info().UpstreamAddr; got != a.addr() {
		t.Fatalf("dialed %s, want %s", got, a.addr())
	}
	m.Store("upstream.test", []string{"127.0.0.2"})
	p.refreshDNS() // what the maintenance loop does every dns_refresh
	if s := p.Stats(); s.Closes["dns"] != 1 || s.Idle != 0 {
		t.Fatalf("after re-resolution: %+v", s)
	}
	c := mustAcquire(t, p)
	roundTrip(t, c)
	if got := c.Info().UpstreamAddr; got != b.addr() {
		t.Fatalf("dialed %s after the DNS change, want %s", got, b.addr())
	}
	c.Release(true)
	leased.Release(true)
	if s := p.Stats(); s.Closes["dns"] != 2 {
		t.Fatalf("departed leased conn not closed on release: %v", s.Closes)
	}
	testkit.WaitFor(t, "old upstream connections to close", func() bool { return a.open() == 0 })
}

func TestIOHealthCheckHTTP(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	hc := HealthCheck{Kind: HealthHTTP, Interval: time.Second, Timeout: time.Second, HTTPPath: "/healthz"}
	p := newIOPool(t, ioConfig(srv.Listener.Addr().String(), func(c *Config) { c.HealthCheck = hc }), Env{})
	c := mustAcquire(t, p)
	defer c.Release(true)
	for range 2 {
		if !p.probe(c, hc) {
			t.Fatal("healthy upstream failed the HTTP check")
		}
	}
	status.Store(http.StatusServiceUnavailable)
	if p.probe(c, hc) {
		t.Fatal("503 passed the HTTP check")
	}
}

func TestIOHealthCheckRedisPingLoop(t *testing.T) {
	pong := func(c net.Conn) {
		buf := make([]byte, len(redisPing))
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			c.Write(redisPong)
		}
	}
	u := startUpstream(t, "127.0.0.1:0", nil, pong)
	hc := HealthCheck{Kind: HealthRedisPing, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) { c.HealthCheck = hc; c.Limits.MinIdle = 1 }), Env{})
	testkit.WaitFor(t, "prewarm", func() bool { return p.Stats().Idle == 1 })
	c := mustAcquire(t, p)
	first := c.lastCheckForTest(p)
	c.Release(true)
	testkit.WaitFor(t, "a health check", func() bool {
		c2 := mustAcquire(t, p)
		defer c2.Release(true)
		return c2.lastCheckForTest(p).After(first)
	})
	if s := p.Stats(); len(s.Closes) != 0 {
		t.Fatalf("closes = %v", s.Closes)
	}
}

func (c *Conn) lastCheckForTest(p *Pool) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return c.lastCheck
}

// 1,000 concurrent acquirers on max 10: never more than 10 open at the
// upstream, everyone served, nothing leaked.
func TestIOManyAcquirers(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) {
		c.Limits.MaxConnections = 10
		c.Limits.MaxIdle = 10
		c.Limits.AcquireTimeout = time.Minute
	}), Env{})
	const n = 1000
	var wg sync.WaitGroup
	var served atomic.Int64
	errs := make(chan error, n) // one slot per acquirer: never blocks
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(context.Background(), "g"+strconv.Itoa(i))
			if err != nil {
				errs <- err
				return
			}
			nc := c.NetConn()
			buf := []byte{byte(i)}
			if _, err := nc.Write(buf); err != nil {
				errs <- err
				c.Release(false)
				return
			}
			if _, err := io.ReadFull(nc, buf); err != nil || buf[0] != byte(i) {
				errs <- errors.Join(errors.New("echo mismatch"), err)
				c.Release(false)
				return
			}
			served.Add(1)
			c.Release(i%17 != 0) // some leases end dirty
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if served.Load() != n {
		t.Fatalf("served %d of %d", served.Load(), n)
	}
	u.mu.Lock()
	maxOpen := u.maxOpen
	u.mu.Unlock()
	if maxOpen > 10 {
		t.Fatalf("upstream saw %d connections open at once, max 10", maxOpen)
	}
	s := p.Stats()
	if s.InUse != 0 || s.Waiters != 0 || s.Total > 10 || s.Acquires != n {
		t.Fatalf("Stats = %+v", s)
	}
	p.Close()
	testkit.WaitFor(t, "upstream connections to close", func() bool { return u.open() == 0 })
}

func TestIOKeepAliveDisabled(t *testing.T) {
	u := startUpstream(t, "127.0.0.1:0", nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) { c.Lifecycle.TCPKeepAlive = -1 }), Env{})
	c := mustAcquire(t, p)
	roundTrip(t, c)
	c.Release(true)
}

// The PING exchange of a REDIS_PING health check, as an upstream sees it.
var (
	redisPing = []byte("*1\r\n$4\r\nPING\r\n")
	redisPong = []byte("+PONG\r\n")
)
