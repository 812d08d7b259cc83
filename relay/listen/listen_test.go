package listen_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
)

// env is a Manager whose pools are served on local listeners.
type env struct {
	m *poolmgr.Manager
	h *listen.Host
}

func newEnv(t *testing.T) *env {
	t.Helper()
	m, h := harness.ManagerServing(t, nil, func(mc *poolmgr.ManagerConfig) { mc.SecretKey = bytes.Repeat([]byte{7}, 32) })
	return &env{m: m, h: h}
}

// create creates pool id and returns the bound address of each listener.
func (e *env) create(t *testing.T, id string, cfg poolmgr.Config) []string {
	t.Helper()
	if _, err := e.m.Create(context.Background(), id, cfg, poolmgr.WriteOptions{}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	return e.bound(t, id)
}

func (e *env) bound(t *testing.T, id string) []string {
	t.Helper()
	var out []string
	for _, s := range e.m.ListenerStatus(id) {
		if s.Err != "" {
			t.Fatalf("listener %s: %s", s.Address, s.Err)
		}
		out = append(out, s.Bound)
	}
	return out
}

// dial connects to a bound listener address (host:port or unix:///path).
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	network := "tcp"
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, addr = "unix", p
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func exchange(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

// shortDir is a directory for Unix sockets: t.TempDir() may be longer
// than a socket path may be.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "listen")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestRawListenerRelays(t *testing.T) {
	e := newEnv(t)
	echo := testkit.EchoServer(t)
	sock := filepath.Join(shortDir(t), "echo.sock")
	addrs := e.create(t, "echo", poolmgr.Config{Endpoints: []string{echo}, Listeners: []poolmgr.Listener{
		{Address: "127.0.0.1:0"}, {Address: "unix://" + sock, Mode: 0o600}}})
	if len(addrs) != 2 || addrs[1] != "unix://"+sock {
		t.Fatalf("bound = %v", addrs)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket file: %v %v", fi, err)
	}
	for _, a := range addrs {
		c := dial(t, a)
		exchange(t, c, "hello "+a)
		// The connection is a lease of the pool, listed with its listener.
		ls, err := e.m.Leases(context.Background(), "echo")
		if err != nil || len(ls) != 1 || !strings.Contains(ls[0].Holder, "listener ") {
			t.Fatalf("leases = %+v, %v", ls, err)
		}
		// The client's close is a half-close passed on to the upstream: the
		// echo server closes, and so does the lease.
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Fatalf("after close_write: %q %v", b, err)
		}
		testkit.WaitFor(t, "the lease to end", func() bool {
			ls, _ := e.m.Leases(context.Background(), "echo")
			return len(ls) == 0
		})
	}
	st := e.m.ListenerStatus("echo")
	if st[0].Accepted != 1 || st[1].Accepted != 1 || st[0].Refused != 0 {
		t.Fatalf("status = %+v", st)
	}
}

func TestListenerBadConfigs(t *testing.T) {
	e := newEnv(t)
	echo := testkit.EchoServer(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := shortDir(t)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	held := e.create(t, "first", poolmgr.Config{Endpoints: []string{echo}, Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
	for _, tt := range []struct {
		name, addr string
		tls        bool
		want       string
	}{
		{"taken port", taken.Addr().String(), false, "address already in use"},
		{"another pool's", held, false, "is served by pool first"},
		{"a file", "unix://" + file, false, "is not a socket"},
		{"not loopback", "192.0.2.1:6390", false, "not a loopback address"},
		{"tls without certificates", "127.0.0.1:0", true, "--tls-client-ca"},
		{"relative path", "unix://rel.sock", false, "must be absolute"},
		{"a name", "example.com:80", false, "not an IP address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.m.Create(context.Background(), "second", poolmgr.Config{Endpoints: []string{echo},
				Listeners: []poolmgr.Listener{{Address: tt.addr, TLS: tt.tls}}}, poolmgr.WriteOptions{})
			var ve *poolmgr.ValidationError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(ve.Violations[0].Field, "listeners[0]") {
				t.Fatalf("create = %v, want a violation of listeners[0] saying %q", err, tt.want)
			}
			if _, err := e.m.Get(context.Background(), "second"); !errors.Is(err, poolmgr.ErrPoolNotFound) {
				t.Fatalf("the pool was created: %v", err)
			}
		})
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("the file: %q %v", b, err)
	}
	// A dry run opens nothing for good.
	free := freePort(t)
	if _, err := e.m.Create(context.Background(), "dry", poolmgr.Config{Endpoints: []string{echo},
		Listeners: []poolmgr.Listener{{Address: free}}}, poolmgr.WriteOptions{ValidateOnly: true}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", free)
	if err != nil {
		t.Fatalf("the dry run left %s open: %v", free, err)
	}
	ln.Close()
}

// freePort returns a loopback address no one listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestListenerChangesLive(t *testing.T) {
	e := newEnv(t)
	echo := testkit.EchoServer(t)
	a := e.create(t, "p", poolmgr.Config{Endpoints: []string{echo}, Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
	c := dial(t, a)
	exchange(t, c, "before")

	// Add a second listener: the first keeps its port and its connection.
	info, err := e.m.Get(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	spec := info.Spec
	spec.Listeners = []poolmgr.Listener{{Address: "127.0.0.1:0"}, {Address: "localhost:0"}}
	if _, err := e.m.Update(context.Background(), "p", spec, 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	both := e.bound(t, "p")
	if len(both) != 2 || both[0] != a {
		t.Fatalf("bound after adding = %v (was %s)", both, a)
	}
	exchange(t, dial(t, both[1]), "second")
	exchange(t, c, "still")

	// Remove the first: it accepts nothing more; its connection goes on.
	spec.Listeners = spec.Listeners[1:]
	if _, err := e.m.Update(context.Background(), "p", spec, 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if c2, err := net.Dial("tcp", a); err == nil {
		c2.Close()
		t.Fatalf("%s still accepts", a)
	}
	exchange(t, c, "after")

	// Delete the pool: its listeners close.
	if err := e.m.Delete(context.Background(), "p", 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if c2, err := net.Dial("tcp", both[1]); err == nil {
		c2.Close()
		t.Fatalf("%s still accepts after delete", both[1])
	}
	if st := e.m.ListenerStatus("p"); st != nil {
		t.Fatalf("status after delete = %+v", st)
	}
}

// httpUpstream serves GET / with "ok" until the test ends.
func httpUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String()
}

func get(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Header.Set("X-Body", string(body))
	return resp
}

func TestListenerRefusesInItsProtocol(t *testing.T) {
	e := newEnv(t)
	up := httpUpstream(t)
	a := e.create(t, "web", poolmgr.Config{Endpoints: []string{up}, Protocol: poolmgr.ProtocolHTTP1,
		Limits:    poolmgr.Limits{MaxConnections: 1, MinIdle: 1, AcquireTimeout: 50 * time.Millisecond},
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
	e.waitIdle(t, "web") // dialled before the short acquire timeout counts
	held := dial(t, a)
	if r := get(t, held); r.StatusCode != 200 || r.Header.Get("X-Body") != "ok" {
		t.Fatalf("first: %d %q", r.StatusCode, r.Header.Get("X-Body"))
	}
	// The one connection is held: the next client waits, times out, and is
	// told so in HTTP.
	busy := dial(t, a)
	r := get(t, busy)
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(r.Header.Get("X-Body"), "acquire timeout") || r.Header.Get("Retry-After") == "" {
		t.Fatalf("busy: %d %v", r.StatusCode, r.Header)
	}
	if b, err := io.ReadAll(busy); err != nil || len(b) != 0 {
		t.Fatalf("after the refusal: %q %v", b, err)
	}

	// Draining: the held client goes on; a new one is refused.
	if _, err := e.m.Drain(context.Background(), "web", poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := get(t, dial(t, a)); r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(r.Header.Get("X-Body"), "draining") {
		t.Fatalf("draining: %d %q", r.StatusCode, r.Header.Get("X-Body"))
	}
	if r := get(t, held); r.StatusCode != 200 {
		t.Fatalf("held while draining: %d", r.StatusCode)
	}
	held.Close()
	if err := e.m.WaitDrained(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if st := e.m.ListenerStatus("web")[0]; st.Refused != 2 || st.Accepted != 3 {
		t.Fatalf("status = %+v", st)
	}
}

func TestHostCloseEndsConnections(t *testing.T) {
	m, h := harness.ManagerServing(t, nil, nil)
	echo := testkit.EchoServer(t)
	if _, err := m.Create(context.Background(), "p", poolmgr.Config{Endpoints: []string{echo},
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}}, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, m.ListenerStatus("p")[0].Bound)
	exchange(t, c, "x")
	h.Close()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after Close: %q %v", b, err)
	}
	if ls, _ := m.Leases(context.Background(), "p"); len(ls) != 0 {
		t.Fatalf("leases after Close: %+v", ls)
	}
}

// TestTLSListener: a listener with tls serves the process's certificate,
// requires a client certificate and leases only to a client whose
// certificate maps to a principal allowed the pool; others are told in
// their protocol (here HTTP 403) or, without a handshake, closed.
func TestTLSListener(t *testing.T) {
	ca := testkit.NewCA(t)
	srvCert := ca.Server(t, "127.0.0.1")
	h, err := listen.New(listen.Config{
		Logger: slog.New(slog.DiscardHandler),
		TLS:    ca.ServerTLS(srvCert, true),
		Authorize: func(cert *x509.Certificate, pool string) (listen.Grant, error) {
			if cert.Subject.CommonName == "alice" && pool == "web" {
				return listen.Grant{Holder: "alice"}, nil
			}
			return listen.Grant{}, fmt.Errorf("%s may not lease pool %s", cert.Subject.CommonName, pool)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := harness.Manager(t, harness.StoreOptions(), nil, func(mc *poolmgr.ManagerConfig) { mc.Listeners = h })
	harness.ServeListeners(t, h, m)
	up := httpUpstream(t)
	if _, err := m.Create(context.Background(), "web", poolmgr.Config{Endpoints: []string{up}, Protocol: poolmgr.ProtocolHTTP1,
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0", TLS: true}}}, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := m.ListenerStatus("web")[0].Bound
	dialTLS := func(cn string) net.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", addr, ca.ClientTLS("127.0.0.1", ca.Client(t, cn)))
		if err != nil {
			t.Fatalf("%s: %v", cn, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	alice := dialTLS("alice")
	if r := get(t, alice); r.StatusCode != 200 || r.Header.Get("X-Body") != "ok" {
		t.Fatalf("alice: %d %q", r.StatusCode, r.Header.Get("X-Body"))
	}
	ls, err := m.Leases(context.Background(), "web")
	if err != nil || len(ls) != 1 || !strings.HasPrefix(ls[0].Holder, "alice via listener") {
		t.Fatalf("leases = %+v, %v", ls, err)
	}
	if r := get(t, dialTLS("mallory")); r.StatusCode != http.StatusForbidden || !strings.Contains(r.Header.Get("X-Body"), "mallory may not lease pool web") {
		t.Fatalf("mallory: %d %q", r.StatusCode, r.Header.Get("X-Body"))
	}
	// Without a client certificate, or without TLS at all: no lease.
	noCert := ca.ClientTLS("127.0.0.1", nil)
	if c, err := tls.Dial("tcp", addr, noCert); err == nil {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
			if b, err := io.ReadAll(c); err == nil && len(b) > 0 {
				t.Fatalf("a client without a certificate read %q", b)
			}
		}
		c.Close()
	}
	plain := dial(t, addr)
	if _, err := io.WriteString(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(plain); strings.Contains(string(b), "200 OK") {
		t.Fatalf("a plain client read %q", b)
	}
	if ls, _ := m.Leases(context.Background(), "web"); len(ls) != 1 {
		t.Fatalf("leases = %+v, want alice's alone", ls)
	}
}

// TestListenerChangesUnderLoad: clients exchange on one listener without
// a single failure while the pool's other listeners and limits change
// under them, 40 times.
func TestListenerChangesUnderLoad(t *testing.T) {
	e := newEnv(t)
	echo := testkit.EchoServer(t)
	main := poolmgr.Listener{Address: "127.0.0.1:0"}
	a := e.create(t, "p", poolmgr.Config{Endpoints: []string{echo}, Limits: poolmgr.Limits{MaxConnections: 8},
		Listeners: []poolmgr.Listener{main}})[0]
	const clients = 6
	stop := make(chan struct{})
	errc := make(chan error, clients)
	var done sync.WaitGroup
	var exchanges atomic.Int64
	for i := range clients {
		done.Add(1)
		go func() {
			defer done.Done()
			errc <- func() error {
				for n := 0; ; n++ {
					select {
					case <-stop:
						return nil
					default:
					}
					c, err := net.Dial("tcp", a)
					if err != nil {
						return err
					}
					_ = c.SetDeadline(time.Now().Add(20 * time.Second))
					for k := range 5 {
						msg := fmt.Sprintf("client %d conn %d msg %d", i, n, k)
						if _, err := io.WriteString(c, msg); err != nil {
							c.Close()
							return err
						}
						buf := make([]byte, len(msg))
						_, err := io.ReadFull(c, buf)
						switch {
						case err != nil:
							c.Close()
							return fmt.Errorf("read the echo of %q: %w", msg, err)
						case string(buf) != msg:
							c.Close()
							return fmt.Errorf("echo of %q is %q", msg, buf)
						}
						exchanges.Add(1)
					}
					c.Close()
				}
			}()
		}()
	}
	info, err := e.m.Get(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	spec := info.Spec
	for i := range 40 {
		spec.Listeners = []poolmgr.Listener{main}
		if i%2 == 0 {
			spec.Listeners = append(spec.Listeners, poolmgr.Listener{Address: "127.0.0.1:0"})
		}
		spec.Limits.MaxConnections = 4 + i%5
		if _, err := e.m.Update(context.Background(), "p", spec, 0, poolmgr.WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := e.bound(t, "p")[0]; got != a {
			t.Fatalf("change %d: the kept listener moved from %s to %s", i, a, got)
		}
		before := exchanges.Load()
		testkit.WaitFor(t, "exchanges to go on", func() bool { return exchanges.Load() > before })
	}
	close(stop)
	done.Wait()
	for range clients {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d exchanges across 40 changes", exchanges.Load())
}

// TestRawListenerBulk: 8 MiB each way through a RAW pool's listener (the
// copy in the kernel where Linux can) over TCP and a Unix socket, every
// byte echoed in order, then the client's half-close passed on.
func TestRawListenerBulk(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(shortDir(t), "bulk.sock")
	addrs := e.create(t, "bulk", poolmgr.Config{Endpoints: []string{testkit.EchoServer(t)},
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}, {Address: "unix://" + sock}}})
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i*7 + i>>11)
	}
	for _, a := range addrs {
		c := dial(t, a)
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.(interface{ CloseWrite() error }).CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(c)
		if werr := <-errc; werr != nil {
			t.Fatalf("%s: write: %v", a, werr)
		}
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%s: read %d bytes (want %d), equal %v, %v", a, len(got), len(payload), bytes.Equal(got, payload), err)
		}
	}
	testkit.WaitFor(t, "the leases to end", func() bool {
		ls, _ := e.m.Leases(context.Background(), "bulk")
		return len(ls) == 0
	})
	p, err := e.m.Pool("bulk")
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.BytesIn != 2*uint64(len(payload)) || st.BytesOut != 2*uint64(len(payload)) {
		t.Fatalf("bytes in %d out %d, want %d each", st.BytesIn, st.BytesOut, 2*len(payload))
	}
}
