package http1

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/protocol"
)

// testServer serves HEAD / (200), /fast (a short body), /chunked (a flushed chunked
// body), /slow (a header and part of its body, then the rest once release
// is closed) and /block (nothing until the test ends).
type testServer struct {
	*httptest.Server
	started chan struct{} // /slow sent its first part
	release chan struct{} // closed: /slow finishes
}

func newTestServer(t *testing.T, handler http.Handler) *testServer {
	t.Helper()
	ts := &testServer{started: make(chan struct{}, 1), release: make(chan struct{})}
	unblock := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("HEAD /{$}", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/fast", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "fast")
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "one")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "two")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = io.WriteString(w, "slow-")
		w.(http.Flusher).Flush()
		ts.started <- struct{}{}
		select {
		case <-ts.release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "done!")
	})
	mux.HandleFunc("/block", func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-unblock:
		case <-r.Context().Done():
		}
	})
	if handler == nil {
		handler = mux
	}
	ts.Server = httptest.NewServer(handler)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { close(unblock) }) // before Close, which waits for handlers
	return ts
}

func (ts *testServer) dial(t *testing.T) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

// sessionConn passes a lease's bytes through its Session as the relay does.
type sessionConn struct {
	net.Conn
	s *Session
}

func (c sessionConn) Write(b []byte) (int, error) {
	c.s.Request(b)
	return c.Conn.Write(b)
}

func (c sessionConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.s.Reply(b[:n])
	return n, err
}

func wantState(t *testing.T, s *Session, want protocol.State) {
	t.Helper()
	if got := s.State(); got != want {
		t.Fatalf("State() = %v (%v), want %v", got, s.why(), want)
	}
}

// roundTrip writes a GET for path and reads its response through s.
func roundTrip(t *testing.T, c sessionConn, path string) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wantState(t, c.s, protocol.Outstanding)
	// One byte at a time, so nothing after the response is read.
	br := bufio.NewReaderSize(oneByteReader{c}, 16)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d", path, resp.StatusCode)
	}
	if br.Buffered() != 0 {
		t.Fatalf("%s: %d bytes after the response", path, br.Buffered())
	}
	return string(body)
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(b []byte) (int, error) { return o.r.Read(b[:1]) }

func TestServerExchanges(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := ts.dial(t)
	s := New().NewSession(nil).(*Session)
	c := sessionConn{nc, s}
	wantState(t, s, protocol.Idle)
	for _, path := range []string{"/fast", "/chunked", "/fast"} {
		body := roundTrip(t, c, path)
		wantState(t, s, protocol.Idle)
		if want := map[string]string{"/fast": "fast", "/chunked": "onetwo"}[path]; body != want {
			t.Fatalf("%s: body %q, want %q", path, body, want)
		}
	}
	if err := s.Reset(nc); err != nil {
		t.Fatalf("Reset of an idle session: %v", err)
	}
}

func TestServerResetDrains(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := ts.dial(t)
	s := New().NewSession(nil).(*Session)
	c := sessionConn{nc, s}

	// A pipeline: /fast, then /slow, whose body stops half way.
	if _, err := io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: test\r\n\r\nGET /slow HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	<-ts.started
	var buf [1]byte
	if _, err := c.Read(buf[:]); err != nil { // the client read part of /fast
		t.Fatal(err)
	}
	wantState(t, s, protocol.Outstanding)
	close(ts.release)
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Reset(nc); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}

	// The connection serves the next lease.
	s = New().NewSession(nil).(*Session)
	c = sessionConn{nc, s}
	if body := roundTrip(t, c, "/fast"); body != "fast" {
		t.Fatalf("body %q after the reset", body)
	}
	wantState(t, s, protocol.Idle)
}

func TestServerResetTimesOut(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := ts.dial(t)
	s := New().NewSession(nil).(*Session)
	c := sessionConn{nc, s}
	if _, err := io.WriteString(c, "GET /block HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wantState(t, s, protocol.Outstanding)
	if err := nc.SetDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	err := s.Reset(nc)
	if !errors.Is(err, protocol.ErrOutstanding) {
		t.Fatalf("Reset = %v, want ErrOutstanding", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Reset = %v, want a timeout", err)
	}
}

func TestResetNotResettable(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := ts.dial(t)
	s := New().NewSession(nil).(*Session)
	c := sessionConn{nc, s}
	if _, err := io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	err := s.Reset(nc)
	if err == nil || errors.Is(err, protocol.ErrOutstanding) {
		t.Fatalf("Reset = %v, want a reason the connection cannot be reset", err)
	}
}

// stubConn answers every write with a canned reply.
type stubConn struct {
	net.Conn
	reply   string
	written strings.Builder
	r       io.Reader
}

func (c *stubConn) Write(b []byte) (int, error) {
	c.written.Write(b)
	c.r = strings.NewReader(c.reply)
	return len(b), nil
}

func (c *stubConn) Read(b []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(b)
}

func (c *stubConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 8080}
}

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		reply string
		ok    bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true},
		{"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", true},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", true},
		{"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false},
		{"HTTP/1.1 500 Oops\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false},
		{"HTTP/1.0 200 OK\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\n", false},
		{"", false},
		{"garbage\r\n\r\n", false},
	} {
		nc := &stubConn{reply: tc.reply}
		err := New().Probe(nc)
		if (err == nil) != tc.ok {
			t.Errorf("Probe answered %q = %v, want ok %v", tc.reply, err, tc.ok)
		}
		if want := "HEAD / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: poolplane-health\r\n\r\n"; nc.written.String() != want {
			t.Fatalf("Probe wrote %q", nc.written.String())
		}
	}
}

func TestProbeServer(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := ts.dial(t)
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := New().Probe(nc); err != nil {
			t.Fatalf("Probe: %v", err)
		}
	}
	failing := newTestServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	nc = failing.dial(t)
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := New().Probe(nc); err == nil {
		t.Fatal("Probe of a 503 succeeded")
	}
}

// TestConcurrent feeds requests and responses from two goroutines, as the
// relay does, responses only after their requests.
func TestConcurrent(t *testing.T) {
	s := newSession()
	const n = 200
	sent := make(chan struct{}, n) // one per request, so the writer never blocks
	donec := make(chan struct{})
	go func() {
		defer close(donec)
		for range n {
			s.Request([]byte(get[1:]))
			sent <- struct{}{}
		}
	}()
	for range n {
		<-sent
		s.Reply([]byte(chunked[1:]))
	}
	<-donec
	wantState(t, s, protocol.Idle)
}

func TestResetStub(t *testing.T) {
	for _, tc := range []struct {
		name        string
		steps       []string // the lease
		reply       string   // what the upstream still sends
		ok          bool
		outstanding bool // the error wraps ErrOutstanding
	}{
		{name: "idle", steps: []string{get, ok5}, reply: "never read", ok: true},
		{name: "one due", steps: []string{get}, reply: ok5[1:], ok: true},
		{name: "rest of a body", steps: []string{get, ok5[:len(ok5)-2]}, reply: "lo", ok: true},
		{name: "pipelined", steps: []string{get, head, get, ok5[:3]}, reply: ok5[3:] + "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + chunked[1:], ok: true},
		{name: "interim then final", steps: []string{get}, reply: "HTTP/1.1 103 Early Hints\r\n\r\n" + ok5[1:], ok: true},
		{name: "stray bytes", steps: []string{get}, reply: ok5[1:] + "x"},
		{name: "EOF", steps: []string{get}, reply: ok5[1:10], outstanding: true},
		{name: "close-delimited", steps: []string{get}, reply: "HTTP/1.1 200 OK\r\n\r\nbody"},
		{name: "Connection: close", steps: []string{get}, reply: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
		{name: "malformed", steps: []string{get}, reply: "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{name: "unfinished request", steps: []string{">GET / HTTP/1.1\r\n"}, reply: ok5[1:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := run(exchange{steps: tc.steps}, 0)
			nc := &stubConn{r: strings.NewReader(tc.reply)}
			err := s.Reset(nc)
			if (err == nil) != tc.ok || errors.Is(err, protocol.ErrOutstanding) != tc.outstanding {
				t.Fatalf("Reset = %v, want ok %v, outstanding %v", err, tc.ok, tc.outstanding)
			}
			if tc.ok {
				wantState(t, s, protocol.Idle)
				left := nc.r.(*strings.Reader).Len()
				if tc.name == "idle" && left != len(tc.reply) {
					t.Fatal("Reset of an idle session read")
				}
				if tc.name != "idle" && left != 0 {
					t.Fatal("Reset left reply bytes unread")
				}
			}
		})
	}
}
