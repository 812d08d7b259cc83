package client

import (
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestClientCloseAfterRelease closes the Client right behind its Conns, as a
// program does when it exits: the server must read every release (and so
// pool the connections) before Close cancels the streams, which would
// otherwise abandon the leases and close their connections.
func TestClientCloseAfterRelease(t *testing.T) {
	const rounds, leases = 10, 8
	for round := range rounds {
		f := newFake(t)
		c := newTestClient(t, f)
		conns := make([]*Conn, 0, leases)
		for range leases {
			conn := leaseAPI(t, c)
			conns = append(conns, conn)
		}
		for _, conn := range conns {
			conn.Close()
		}
		c.Close()
		if n := len(f.releases); n != leases {
			t.Fatalf("round %d: the server read %d of %d releases before Close returned", round, n, leases)
		}
		for range leases {
			if !<-f.releases {
				t.Fatalf("round %d: a release was not reusable", round)
			}
		}
	}
}

// TestClientCloseReleaseBounded: Close does not wait long for a server that
// never confirms a release.
func TestClientCloseReleaseBounded(t *testing.T) {
	f := newFake(t)
	f.noEnded = true
	c := newTestClient(t, f)
	conn := leaseAPI(t, c)
	conn.Close()
	testkit.Recv(t, f.releases)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > closeGrace+time.Second {
		t.Errorf("Close took %v waiting for ended, want at most about %v", d, closeGrace)
	}
}
