package listen_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
)

// TestHalfCloseGetsReplies: a client that half-closes its socket after
// its requests (nc -N, a script piping a file) still reads every reply due
// on a protocol pool, then the listener's close; the pool's one
// connection serves every client in turn.
func TestHalfCloseGetsReplies(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name     string
		cfg      poolmgr.Config
		requests string
		want     func(got string) bool
	}{
		{"http1", poolmgr.Config{Endpoints: []string{httpUpstream(t)}, Protocol: poolmgr.ProtocolHTTP1},
			"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n",
			func(got string) bool {
				return strings.Count(got, "HTTP/1.1 200 OK") == 2 && strings.HasSuffix(got, "ok")
			}},
		{"redis", poolmgr.Config{Endpoints: []string{testkit.Redis(t)}, Protocol: poolmgr.ProtocolRedis},
			"PING\r\nECHO half-closed\r\nPING\r\n",
			func(got string) bool { return got == "+PONG\r\n$11\r\nhalf-closed\r\n+PONG\r\n" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Limits = poolmgr.Limits{MaxConnections: 1}
			tc.cfg.ResetTimeout = 30 * time.Second // the bound on waiting for the replies: never reached here
			tc.cfg.Listeners = []poolmgr.Listener{{Address: "127.0.0.1:0"}}
			addr := e.create(t, tc.name, tc.cfg)[0]
			for i := range 5 {
				c := dial(t, addr)
				if _, err := io.WriteString(c, tc.requests); err != nil {
					t.Fatal(err)
				}
				if err := c.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(c) // to the listener's close, within dial's deadline
				if err != nil || !tc.want(string(b)) {
					t.Fatalf("client %d read %q, %v", i, b, err)
				}
			}
			p, err := e.m.Pool(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Dials != 1 {
				t.Fatalf("%d dials for 5 clients on a pool of one connection, want 1", st.Dials)
			}
			if ls, _ := e.m.Leases(context.Background(), tc.name); len(ls) != 0 {
				t.Fatalf("leases left: %+v", ls)
			}
		})
	}
}
