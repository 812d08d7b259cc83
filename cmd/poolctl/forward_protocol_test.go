package main

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestForwardProtocolPoolDecidesReuse: on a REDIS pool, forward without
// --reuse releases a lease when its local client closes, and the pool,
// which follows the exchange and resets the connection, keeps it: the next
// forwarded connection reuses it, even after a client that closed with a
// reply still due. list, get and stats show the protocol.
func TestForwardProtocolPoolDecidesReuse(t *testing.T) {
	ts := startServer(t)
	redis := testkit.Redis(t)
	ts.ok(t, "pools:\n- id: cache\n  endpoints: ["+redis+"]\n  protocol: redis\n", "apply", "-f", "-")
	if out := ts.ok(t, "", "list"); !strings.Contains(out, "PROTOCOL") || !strings.Contains(out, "REDIS") {
		t.Fatalf("list does not show the protocol:\n%s", out)
	}
	if out := ts.ok(t, "", "get", "cache"); !strings.Contains(out, "PROTOCOL_REDIS") {
		t.Fatalf("get does not show the protocol:\n%s", out)
	}
	addr, stop := ts.startForward(t, "cache")
	// released waits until the i-th lease was taken and its connection,
	// reset, is idle again: a client that closes at once may be gone
	// before its lease is granted, so no lease listed proves nothing.
	released := func(i int) {
		testkit.WaitFor(t, "lease "+strconv.Itoa(i)+" to be released", func() bool {
			st := unmarshal(t, ts.ok(t, "", "stats", "cache", "-o", "json"), &poolv1.PoolStats{})
			return st.GetAcquires() == uint64(i+1) && st.GetInUse() == 0 && st.GetIdle() == 1
		})
	}
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// A client that leaves a reply due: the pool reads it at release.
			if _, err := io.WriteString(c, "*2\r\n$4\r\nECHO\r\n$4\r\nlate\r\n"); err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
			released(i)
			continue
		}
		if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "+PONG\r\n" {
			t.Fatalf("round %d: read %q, %v; want +PONG", i, line, err)
		}
		_ = c.Close()
		released(i)
	}
	st := unmarshal(t, ts.ok(t, "", "stats", "cache", "-o", "json"), &poolv1.PoolStats{})
	if st.GetProtocol() != poolv1.Protocol_PROTOCOL_REDIS || st.GetCreated() != 1 || st.GetReused() != 2 {
		t.Fatalf("after 3 forwarded connections: protocol %v created %d reused %d; want REDIS, 1, 2 (closes %v)",
			st.GetProtocol(), st.GetCreated(), st.GetReused(), st.GetCloses())
	}
	if out := ts.ok(t, "", "stats", "cache"); !strings.Contains(out, "REDIS") {
		t.Fatalf("stats does not show the protocol:\n%s", out)
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}

// TestForwardProtocolPoolHalfClose: on a REDIS pool, a client that
// half-closes after its requests (nc -N, a script piping a file) gets
// every reply, then EOF; Redis never sees the FIN (it would drop the
// replies due), and the pool resets the connection and keeps it for the
// next client.
func TestForwardProtocolPoolHalfClose(t *testing.T) {
	ts := startServer(t)
	redis := testkit.Redis(t)
	ts.ok(t, "pools:\n- id: cache\n  endpoints: ["+redis+"]\n  protocol: redis\n  limits: {max_connections: 1}\n", "apply", "-f", "-")
	addr, stop := ts.startForward(t, "cache")
	const (
		requests = "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$4\r\nlate\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
		replies  = "+PONG\r\n$4\r\nlate\r\n+OK\r\n"
	)
	const rounds = 5
	for round := range rounds {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, requests); err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != replies {
			t.Fatalf("round %d: read %q, %v; want %q, then EOF", round, got, err, replies)
		}
		_ = c.Close()
	}
	testkit.WaitFor(t, "the connection to be idle again", func() bool {
		st := unmarshal(t, ts.ok(t, "", "stats", "cache", "-o", "json"), &poolv1.PoolStats{})
		return st.GetIdle() == 1 && st.GetInUse() == 0
	})
	st := unmarshal(t, ts.ok(t, "", "stats", "cache", "-o", "json"), &poolv1.PoolStats{})
	if st.GetCreated() != 1 || st.GetReused() != rounds-1 {
		t.Fatalf("after %d half-closing clients: created %d reused %d; want 1, %d (closes %v)",
			rounds, st.GetCreated(), st.GetReused(), rounds-1, st.GetCloses())
	}
	if r := stop(); r.code != 0 {
		t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
	}
}
