package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"
)

// respClient speaks RESP by hand over a leased connection, so a test
// controls exactly what is sent and what is left unread.
type respClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func newRESP(t *testing.T, nc net.Conn) *respClient {
	return &respClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *respClient) send(args ...string) {
	c.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c.nc, b.String()); err != nil {
		c.t.Fatalf("send %v: %v", args, err)
	}
}

// read reads one reply and returns it as sent.
func (c *respClient) read() string {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	if err := readReply(c.br, &b); err != nil {
		c.t.Fatalf("read reply: %v (so far %q)", err, b.String())
	}
	return b.String()
}

// jobStaysQueued checks, after a client A left a BLPOP on jobs, that a job
// B queues is still there for B: A's BLPOP did not take it.
func jobStaysQueued(prefix string) func(t *testing.T, b *respClient, trial int) {
	return func(t *testing.T, b *respClient, trial int) {
		job := prefix + strconv.Itoa(trial)
		b.do("RPUSH", "jobs", job)
		if got := b.do("LPOP", "jobs"); got != fmt.Sprintf("$%d\r\n%s\r\n", len(job), job) {
			t.Fatalf("B's LPOP answered %q: A's BLPOP took the job", got)
		}
	}
}

// closeWrite half-closes the client's connection.
func (c *respClient) closeWrite() {
	c.t.Helper()
	if err := c.nc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *respClient) do(args ...string) string {
	c.t.Helper()
	c.send(args...)
	return c.read()
}

// readReply copies one RESP2/RESP3 value from br to out.
func readReply(br *bufio.Reader, out *strings.Builder) error {
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	out.WriteString(line)
	if len(line) < 3 {
		return fmt.Errorf("short line %q", line)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	switch line[0] {
	case '$', '!', '=':
		if n < 0 {
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		out.Write(buf)
	case '*', '~', '>', '%', '|':
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			if err := readReply(br, out); err != nil {
				return err
			}
		}
		if line[0] == '|' {
			return readReply(br, out) // the value the attribute describes
		}
	}
	return nil
}

// clientInfo returns CLIENT INFO's fields.
func (c *respClient) clientInfo() map[string]string {
	c.t.Helper()
	reply := c.do("CLIENT", "INFO")
	_, body, _ := strings.Cut(reply, "\r\n")
	m := map[string]string{}
	for f := range strings.FieldsSeq(body) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestRedisPoolIsolatesClients runs, against a real redis-server through a
// REDIS pool of one connection, every kind of state client A can leave
// behind, then client B on the next lease: B finds a clean connection
// (the pool's database, name and protocol, no transaction, subscription or
// reply mode) and never reads anything meant for A. Where the reset can
// bring the connection back, B gets the same upstream connection (the pool
// keeps its value); where it cannot, the connection is closed and counted
// under its reason. Each case runs 30 times.
func TestRedisPoolIsolatesClients(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testRedisPoolIsolatesClients(t, f) })
	}
}

func testRedisPoolIsolatesClients(t *testing.T, f front) {
	addr := startRedis(t)
	e := startSDKEnv(t, client.WithReleaseTimeout(10*time.Second)) // a loaded machine may pause a write past the default
	// "redis" leaves a reset time to drain what A left even on a loaded
	// machine; "redis-short" closes what does not finish at once.
	for pool, reset := range map[string]time.Duration{"redis": 5 * time.Second, "redis-short": 100 * time.Millisecond} {
		e.createPool(t, pool, poolmgr.Config{
			Endpoints:    []string{addr},
			Limits:       poolmgr.Limits{MaxConnections: 1},
			Protocol:     poolmgr.ProtocolRedis,
			ResetTimeout: reset,
			Redis:        poolmgr.RedisSetup{Database: 1, ClientName: "pool"},
			Listeners:    localListener,
		})
	}
	side := newRESP(t, dialTCP(t, addr)) // a plain client beside the pool
	side.do("SET", "big", strings.Repeat("x", 256<<10))
	lease := func(t *testing.T, pool string) (net.Conn, *respClient) {
		t.Helper()
		conn := f.dial(t, e, pool)
		// Released at once by the test; this release is for a trial that
		// fails first (the pool has one connection).
		t.Cleanup(func() { _ = conn.Close() })
		return conn, newRESP(t, conn)
	}

	cases := []struct {
		name  string
		leave func(a *respClient)
		// closed: the reason the connection must be closed for, or "" when
		// B must get the same connection back.
		closed string
		check  func(t *testing.T, b *respClient, trial int)
	}{
		{name: "SELECT", leave: func(a *respClient) { a.do("SELECT", "5") }},
		{name: "CLIENT SETNAME", leave: func(a *respClient) { a.do("CLIENT", "SETNAME", "alice") }},
		{name: "HELLO 3", leave: func(a *respClient) { a.do("HELLO", "3") }},
		{name: "MULTI without EXEC", leave: func(a *respClient) {
			a.do("MULTI")
			a.do("SET", "k", "from-a")
		}, check: func(t *testing.T, b *respClient, trial int) {
			v := "from-b-" + strconv.Itoa(trial)
			if got := b.do("SET", "k", v); got != "+OK\r\n" {
				t.Fatalf("B's SET answered %q: queued in A's transaction", got)
			}
			if got := b.do("GET", "k"); got != fmt.Sprintf("$%d\r\n%s\r\n", len(v), v) {
				t.Fatalf("B's GET answered %q", got)
			}
		}},
		{name: "WATCH", leave: func(a *respClient) { a.do("WATCH", "w") }, check: func(t *testing.T, b *respClient, _ int) {
			side.do("SELECT", "1")
			side.do("SET", "w", "changed")
			b.do("MULTI")
			b.do("SET", "w", "b")
			if got := b.do("EXEC"); got != "*1\r\n+OK\r\n" {
				t.Fatalf("B's EXEC answered %q: A's WATCH survived", got)
			}
		}},
		{name: "SUBSCRIBE", leave: func(a *respClient) { a.do("SUBSCRIBE", "news") }, check: func(t *testing.T, b *respClient, _ int) {
			if got := side.do("PUBLISH", "news", "for-a"); got != ":0\r\n" {
				t.Fatalf("PUBLISH reached %q subscribers after A left", got)
			}
		}},
		{name: "CLIENT REPLY OFF", leave: func(a *respClient) { a.send("CLIENT", "REPLY", "OFF") }},
		{name: "pipeline left unread", leave: func(a *respClient) {
			for range 200 {
				a.send("INCR", "n")
			}
		}},
		{name: "slow EVAL abandoned", leave: func(a *respClient) {
			a.send("EVAL", "local i = 0 while i < 1000000 do i = i + 1 end return 'for-a'", "0")
		}},
		{name: "big reply half read", leave: func(a *respClient) {
			a.do("SELECT", "0")
			a.send("GET", "big")
			if _, err := a.br.Peek(100); err != nil {
				a.t.Fatal(err)
			}
		}},
		{name: "BLPOP abandoned", closed: "outstanding_reply", leave: func(a *respClient) {
			a.send("BLPOP", "jobs", "0")
		}, check: jobStaysQueued("job-"),
		},
		{name: "BLPOP, then half-closed", closed: "outstanding_reply", leave: func(a *respClient) {
			// A reply that may never come: the client's release still
			// ends the lease.
			a.send("BLPOP", "jobs", "0")
			a.closeWrite()
		}, check: jobStaysQueued("job-hc-"),
		},
		{name: "BLPOP, then half-closed, reading on", closed: "outstanding_reply", leave: func(a *respClient) {
			// The reply does not come within reset_timeout: the client
			// is told EOF all the same, with nothing before it.
			a.send("BLPOP", "jobs", "0")
			a.closeWrite()
			_ = a.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(a.br); err != nil || len(b) != 0 {
				a.t.Fatalf("after the half-close: %q, %v; want EOF", b, err)
			}
		}},
		{name: "client half-closed", leave: func(a *respClient) {
			// The half-close ends the client's requests, not the
			// connection: Redis is not told (it would drop the replies
			// due), the PONG still due reaches the client, then its EOF,
			// and the pool resets the connection and keeps it.
			a.send("PING")
			a.closeWrite()
			_ = a.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(a.br); err != nil || string(b) != "+PONG\r\n" {
				a.t.Fatalf("after the half-close: %q, %v; want the PONG, then EOF", b, err)
			}
		}},
		{name: "command half sent", closed: "not_resettable", leave: func(a *respClient) {
			if _, err := io.WriteString(a.nc, "*2\r\n$3\r\nGET\r\n$4\r\nab"); err != nil {
				a.t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for trial := range 30 {
				pool := "redis"
				if tc.closed != "" {
					pool = "redis-short"
				}
				before := closes(t, e, pool, tc.closed)
				connA, a := lease(t, pool)
				a.t = t
				idA := a.clientInfo()["id"]
				tc.leave(a)
				if err := connA.Close(); err != nil {
					t.Fatalf("A's Close: %v", err)
				}
				connB, b := lease(t, pool)
				info := b.clientInfo()
				for k, want := range map[string]string{"db": "1", "name": "pool", "resp": "2", "flags": "N", "sub": "0", "psub": "0", "multi": "-1"} {
					if info[k] != want {
						t.Fatalf("trial %d: B finds %s=%s, want %s (CLIENT INFO %v)", trial, k, info[k], want, info)
					}
				}
				if tc.closed == "" && info["id"] != idA {
					t.Fatalf("trial %d: B got connection %s, A had %s: the reset lost a connection it could keep", trial, info["id"], idA)
				}
				if tc.closed != "" {
					if info["id"] == idA {
						t.Fatalf("trial %d: B got A's connection %s; want it closed (%s)", trial, idA, tc.closed)
					}
					if after := closes(t, e, pool, tc.closed); after != before+1 {
						t.Fatalf("trial %d: closes[%s] went %d -> %d, want +1", trial, tc.closed, before, after)
					}
				}
				echo := "b-" + strconv.Itoa(trial)
				if got := b.do("ECHO", echo); got != fmt.Sprintf("$%d\r\n%s\r\n", len(echo), echo) {
					t.Fatalf("trial %d: B's ECHO answered %q", trial, got)
				}
				if tc.check != nil {
					tc.check(t, b, trial)
				}
				if err := connB.Close(); err != nil {
					t.Fatalf("B's Close: %v", err)
				}
			}
		})
	}
}

// closes returns the pool's count of closes for reason ("" -> 0; "any":
// all reasons).
func closes(t *testing.T, e *sdkEnv, pool, reason string) uint64 {
	t.Helper()
	if reason == "" {
		return 0
	}
	st, err := e.c.PoolStats(ctxSDK(t), pool)
	if err != nil {
		t.Fatal(err)
	}
	if reason != "any" {
		return st.GetCloses()[reason]
	}
	var n uint64
	for _, c := range st.GetCloses() {
		n += c
	}
	return n
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

// TestRedisPoolGoRedisTimeouts drives a REDIS pool with go-redis through
// client.Dialer, its commands cut short by their own context deadlines:
// go-redis closes a connection whose reply did not come in time, the pool
// drains the late reply and keeps the connection, and the next command on
// it reads its own reply, never the late one. Every GET returns its own
// key's value, and the pool keeps its connections (no dial beyond the
// first few).
func TestRedisPoolGoRedisTimeouts(t *testing.T) {
	addr := startRedis(t)
	e := startSDKEnv(t, client.WithReleaseTimeout(10*time.Second)) // a loaded machine may pause a write past the default
	const conns = 2
	e.createPool(t, "redis", poolmgr.Config{
		Endpoints:    []string{addr},
		Limits:       poolmgr.Limits{MaxConnections: conns},
		Protocol:     poolmgr.ProtocolRedis,
		ResetTimeout: 5 * time.Second,
	})
	rdb := goredis.NewClient(&goredis.Options{
		Addr:                  "redis.pool",
		Dialer:                e.c.Dialer("redis"),
		PoolSize:              conns,
		MaxIdleConns:          conns,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		Protocol:              2,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := ctxSDK(t)
	timedOut := 0
	for i := range 30 {
		key, val := "key-"+strconv.Itoa(i), "val-"+strconv.Itoa(i)
		if err := rdb.Set(ctx, key, val, 0).Err(); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
		err := rdb.Eval(short, "local i = 0 while i < 1000000 do i = i + 1 end return 'late-"+strconv.Itoa(i)+"'", nil).Err()
		cancel()
		if err != nil {
			timedOut++
		}
		if got, err := rdb.Get(ctx, key).Result(); err != nil || got != val {
			t.Fatalf("trial %d: GET %s = %q, %v; want %q", i, key, got, err, val)
		}
	}
	if timedOut == 0 {
		t.Fatal("no EVAL timed out: the test did not exercise a late reply")
	}
	st, err := e.c.PoolStats(ctx, "redis")
	if err != nil {
		t.Fatal(err)
	}
	if st.GetCreated() > conns || st.GetReused() == 0 {
		t.Fatalf("%d EVALs timed out; the pool created %d connections and reused %d (closes %v); want at most %d created, reused",
			timedOut, st.GetCreated(), st.GetReused(), st.GetCloses(), conns)
	}
	t.Logf("%d of 30 EVALs timed out; %d connections created, %d leases reused one", timedOut, st.GetCreated(), st.GetReused())
}
