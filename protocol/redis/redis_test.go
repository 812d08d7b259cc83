package redis

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/protocol"
	"github.com/poolplane/poolplane/protocol/redis/internal/resp"
)

// conn is a connection to a real redis-server as a lease sees it: what
// the client sends and reads passes through the session.
type conn struct {
	t    *testing.T
	nc   net.Conn
	sess protocol.Session
}

func dial(t *testing.T, addr string, h *Handler) *conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := h.Setup(ctx, nc); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return &conn{t: t, nc: nc}
}

// lease starts a session, as the relay does for each lease.
func (c *conn) lease(h *Handler) { c.sess = h.NewSession(nil) }

// send writes a command through the session without reading its reply.
func (c *conn) send(args ...string) {
	c.t.Helper()
	b := appendCommand(nil, args...)
	if c.sess != nil {
		c.sess.Request(b)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one complete top-level reply (push messages included) and
// returns it as sent.
func (c *conn) read() string {
	c.t.Helper()
	var got []byte
	n := 0
	sc := resp.Scanner{OnMessage: func(*resp.Message) { n++ }}
	buf := make([]byte, 1)
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.nc.SetReadDeadline(time.Time{}) }()
	for n == 0 || !sc.Idle() {
		// One byte at a time: nothing of the next reply is consumed.
		if _, err := c.nc.Read(buf); err != nil {
			c.t.Fatalf("read reply: %v (so far %q)", err, got)
		}
		if c.sess != nil {
			c.sess.Reply(buf)
		}
		got = append(got, buf[0])
		if _, err := sc.Feed(buf); err != nil {
			c.t.Fatalf("reply: %v", err)
		}
	}
	return string(got)
}

// do sends a command and reads its reply.
func (c *conn) do(args ...string) string {
	c.t.Helper()
	c.send(args...)
	return c.read()
}

// reset ends the lease as the relay does: State, then Reset within limit.
func (c *conn) reset(limit time.Duration) error {
	c.t.Helper()
	if err := c.nc.SetDeadline(time.Now().Add(limit)); err != nil {
		c.t.Fatal(err)
	}
	err := c.sess.Reset(c.nc)
	_ = c.nc.SetDeadline(time.Time{})
	c.sess = nil
	return err
}

// quiet asserts nothing is pending on the connection.
func (c *conn) quiet() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	defer func() { _ = c.nc.SetReadDeadline(time.Time{}) }()
	var b [64]byte
	if n, err := c.nc.Read(b[:]); n > 0 || !errors.Is(err, timeoutErr(err)) {
		c.t.Fatalf("stray bytes after the reset: %q (%v)", b[:n], err)
	}
}

func timeoutErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

func field(info, name string) string {
	for f := range strings.FieldsSeq(strings.TrimSpace(info)) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return "<none>"
}

// TestResetClearsSession runs each kind of connection state a client can
// leave behind against a real redis-server, resets, and checks the next
// lease finds the pool's own setup and nothing of the client's.
func TestResetClearsSession(t *testing.T) {
	addr := testkit.Redis(t)
	other := dial(t, addr, New(Options{}))
	h := New(Options{Database: 2, ClientName: "pool"})

	cases := []struct {
		name string
		// leave runs the client's part of the lease.
		leave func(c *conn)
		// state is what the session must report at release.
		state protocol.State
		// check runs on the connection after the reset, outside any lease.
		check func(t *testing.T, c *conn)
	}{
		{"nothing sent", func(*conn) {}, protocol.Idle, nil},
		{"SELECT", func(c *conn) { c.do("SELECT", "5") }, protocol.Idle, nil},
		{"CLIENT SETNAME", func(c *conn) { c.do("CLIENT", "SETNAME", "alice") }, protocol.Idle, nil},
		{"HELLO 3", func(c *conn) { c.do("HELLO", "3") }, protocol.Idle, nil},
		{"MULTI without EXEC", func(c *conn) {
			c.do("MULTI")
			c.do("SET", "k-multi", "from-a")
		}, protocol.Idle, func(t *testing.T, c *conn) {
			if got := c.do("SET", "k-multi", "b"); got != "+OK\r\n" {
				t.Fatalf("SET after the reset answered %q, want +OK (not QUEUED)", got)
			}
		}},
		{"WATCH", func(c *conn) { c.do("WATCH", "k-watch") }, protocol.Idle, func(t *testing.T, c *conn) {
			other.do("SET", "k-watch", "changed")
			c.do("MULTI")
			c.do("SET", "k-watch", "b")
			if got := c.do("EXEC"); got != "*1\r\n+OK\r\n" {
				t.Fatalf("EXEC after the reset answered %q: the client's WATCH survived", got)
			}
		}},
		{"SUBSCRIBE", func(c *conn) { c.do("SUBSCRIBE", "ch") }, protocol.Idle, func(t *testing.T, c *conn) {
			if got := other.do("PUBLISH", "ch", "for-a"); got != ":0\r\n" {
				t.Fatalf("PUBLISH reached %s subscribers after the reset", got)
			}
		}},
		{"PSUBSCRIBE with a message in flight", func(c *conn) {
			c.do("PSUBSCRIBE", "p*")
			other.do("PUBLISH", "pch", "for-a")
		}, protocol.Idle, nil},
		{"CLIENT REPLY OFF", func(c *conn) { c.send("CLIENT", "REPLY", "OFF"); c.send("SET", "k", "v") }, protocol.Outstanding, nil},
		{"CLIENT REPLY SKIP", func(c *conn) { c.send("CLIENT", "REPLY", "SKIP") }, protocol.Outstanding, nil},
		{"MONITOR", func(c *conn) {
			c.do("MONITOR")
			other.do("SET", "k-monitor", "x")
		}, protocol.Idle, nil},
		{"pipeline left unread", func(c *conn) {
			for range 100 {
				c.send("INCR", "k-pipe")
			}
		}, protocol.Outstanding, nil},
		{"slow EVAL left unread", func(c *conn) {
			c.send("EVAL", "local i = 0 while i < 2000000 do i = i + 1 end return 'for-a'", "0")
		}, protocol.Outstanding, nil},
		{"a reply half read", func(c *conn) {
			c.do("SET", "k-big", strings.Repeat("x", 100000))
			c.send("GET", "k-big")
			var b [10]byte
			if _, err := c.nc.Read(b[:]); err != nil {
				t.Fatal(err)
			}
			c.sess.Reply(b[:])
		}, protocol.Outstanding, nil},
		{"a forged RESET reply", func(c *conn) {
			c.send("EVAL", "return redis.status_reply('RESET')", "0")
			c.send("EVAL", "return redis.status_reply('RESET')", "0")
		}, protocol.Outstanding, nil},
		{"the client's own RESET", func(c *conn) { c.do("RESET") }, protocol.Idle, nil},
		{"CLIENT TRACKING and READONLY", func(c *conn) {
			c.do("CLIENT", "TRACKING", "ON")
			c.do("CLIENT", "NO-EVICT", "ON")
		}, protocol.Idle, nil},
		{"inline commands", func(c *conn) {
			b := []byte("SELECT 7\r\nCLIENT SETNAME inline\r\n")
			c.sess.Request(b)
			if _, err := c.nc.Write(b); err != nil {
				t.Fatal(err)
			}
			c.read()
			c.read()
		}, protocol.Idle, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr, h)
			c.t = t
			c.lease(h)
			tc.leave(c)
			if got := c.sess.State(); got != tc.state {
				t.Fatalf("State() = %v, want %v", got, tc.state)
			}
			if err := c.reset(5 * time.Second); err != nil {
				t.Fatalf("Reset: %v", err)
			}
			c.quiet()
			info := c.do("CLIENT", "INFO")
			for name, want := range map[string]string{"db": "2", "name": "pool", "resp": "2", "flags": "N", "sub": "0", "psub": "0", "multi": "-1"} {
				if got := field(info, name); got != want {
					t.Errorf("after the reset %s=%s, want %s (CLIENT INFO %s)", name, got, want, info)
				}
			}
			if got := c.do("PING"); got != "+PONG\r\n" {
				t.Fatalf("PING after the reset answered %q", got)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
			c.quiet()
		})
	}
}

// TestResetGivesUp checks the connections a reset cannot bring back: a
// BLPOP that does not finish in time, a command the client did not finish
// sending, a replication handshake, QUIT.
func TestResetGivesUp(t *testing.T) {
	addr := testkit.Redis(t)
	h := New(Options{})
	t.Run("BLPOP outstanding", func(t *testing.T) {
		c := dial(t, addr, h)
		c.t = t
		c.lease(h)
		c.send("BLPOP", "jobs", "0")
		err := c.reset(200 * time.Millisecond)
		if !errors.Is(err, protocol.ErrOutstanding) {
			t.Fatalf("Reset = %v, want ErrOutstanding", err)
		}
	})
	for _, tc := range []struct {
		name  string
		leave func(c *conn)
	}{
		{"half a command", func(c *conn) {
			b := []byte("*2\r\n$3\r\nGET\r\n$5\r\nab")
			c.sess.Request(b)
			_, _ = c.nc.Write(b)
		}},
		{"SYNC", func(c *conn) { c.send("SYNC") }},
		{"QUIT", func(c *conn) { c.send("QUIT") }},
		{"not RESP", func(c *conn) { c.sess.Reply([]byte("HTTP/1.1 200 OK\r\n")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr, h)
			c.t = t
			c.lease(h)
			tc.leave(c)
			if got := c.sess.State(); got != protocol.NotResettable {
				t.Fatalf("State() = %v, want not_resettable", got)
			}
			if err := c.reset(time.Second); err == nil {
				t.Fatal("Reset succeeded")
			}
		})
	}
}

// TestSetupAuthenticates checks the pool's credentials: clients of a pool
// with them never authenticate, and a wrong password fails the setup.
func TestSetupAuthenticates(t *testing.T) {
	addr := testkit.Redis(t, "--requirepass", "s3cret", "--user", "app", "on", ">app-pass", "~*", "&*", "+@all")
	for _, o := range []Options{
		{Password: "s3cret"},
		{Username: "app", Password: "app-pass", ProtocolVersion: 3, ClientName: "pp"},
	} {
		h := New(o)
		c := dial(t, addr, h)
		c.lease(h)
		c.do("AUTH", "app", "wrong") // a client's own AUTH fails and changes nothing
		c.do("SELECT", "3")
		if err := c.reset(5 * time.Second); err != nil {
			t.Fatalf("%+v: Reset: %v", o, err)
		}
		info := c.do("CLIENT", "INFO")
		wantUser := o.Username
		if wantUser == "" {
			wantUser = "default"
		}
		if got := field(info, "user"); got != wantUser {
			t.Errorf("%+v: user=%s after the reset, want %s", o, got, wantUser)
		}
		if o.ProtocolVersion == 3 && field(info, "resp") != "3" {
			t.Errorf("%+v: resp=%s after the reset, want 3", o, field(info, "resp"))
		}
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err = New(Options{Password: "wrong"}).Setup(ctx, nc)
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("Setup with a wrong password = %v, want a WRONGPASS error", err)
	}
}

// TestProbe checks PING on a set-up connection of each protocol version.
func TestProbe(t *testing.T) {
	addr := testkit.Redis(t)
	for _, v := range []int{2, 3} {
		h := New(Options{ProtocolVersion: v})
		c := dial(t, addr, h)
		if err := h.Probe(c.nc); err != nil {
			t.Fatalf("RESP%d: Probe: %v", v, err)
		}
	}
}

// TestStatelessLeaseSkipsReset checks that a lease of data commands, every
// reply read, goes back without a RESET (the common case costs nothing),
// and that one state-changing command brings it back.
func TestStatelessLeaseSkipsReset(t *testing.T) {
	addr := testkit.Redis(t)
	side := dial(t, addr, New(Options{}))
	resets := func() string {
		info := side.do("INFO", "commandstats")
		for line := range strings.Lines(info) {
			if rest, ok := strings.CutPrefix(line, "cmdstat_reset:calls="); ok {
				n, _, _ := strings.Cut(rest, ",")
				return n
			}
		}
		return "0"
	}
	h := New(Options{})
	c := dial(t, addr, h)
	c.lease(h)
	c.do("set", "k", "v")
	c.do("GET", "k")
	c.do("HSET", "h", "f", "v")
	if err := c.reset(time.Second); err != nil {
		t.Fatal(err)
	}
	if n := resets(); n != "0" {
		t.Fatalf("a stateless lease ran RESET (%s calls)", n)
	}
	c.lease(h)
	c.do("GET", "k")
	c.do("CLIENT", "SETNAME", "x")
	if err := c.reset(time.Second); err != nil {
		t.Fatal(err)
	}
	if n := resets(); n != "1" {
		t.Fatalf("CLIENT SETNAME: %s RESET calls, want 1", n)
	}
}

func BenchmarkIsStateless(b *testing.B) {
	names := [][]byte{[]byte("get"), []byte("SET"), []byte("select"), []byte("hgetall")}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		isStateless(names[i%len(names)])
	}
}

// TestSessionDirectionsConcurrently feeds both directions from their own
// goroutines, as the relay does, including bytes that break the protocol
// on each side: under -race, the two directions share nothing.
func TestSessionDirectionsConcurrently(t *testing.T) {
	s := New(Options{}).NewSession(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			s.Reply([]byte("+OK\r\n"))
		}
		s.Reply([]byte("?bad\r\n"))
	}()
	for range 1000 {
		s.Request([]byte("*1\r\n$4\r\nPING\r\n"))
	}
	s.Request([]byte("*1\r\n:1\r\n"))
	<-done
	if st := s.State(); st != protocol.NotResettable {
		t.Fatalf("State() = %v after protocol errors both ways", st)
	}
}
