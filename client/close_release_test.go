package client

import (
	"context"
	"io"
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

// TestCloseWaitsForSlowEnded: a Close whose bytes the server has not yet
// confirmed waits for its ended past a pause shorter than the release
// timeout, and the bytes count as delivered. With the earlier default of
// 100 ms a pause of 250 ms (a loaded server, or a round trip to a distant
// one) failed the Close with ErrUndelivered and closed the connection.
func TestCloseWaitsForSlowEnded(t *testing.T) {
	f := newFake(t)
	f.noWriteReports = true
	f.endedDelay = 250 * time.Millisecond
	c := newTestClient(t, f)
	conn, err := c.LeaseWith(context.Background(), "api", []byte("request"))
	if err != nil {
		t.Fatal(err)
	}
	l := testkit.Recv(t, f.leases)
	buf := make([]byte, len("request"))
	if _, err := io.ReadFull(l.far, buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := conn.Close(); err != nil {
		t.Fatalf("Close after %v: %v, want nil: the upstream took every byte", time.Since(start), err)
	}
	// The fake holds ended from the release on, so a Close that waited
	// for it cannot return sooner; one that returned sooner did not wait.
	if took := time.Since(start); took < f.endedDelay {
		t.Fatalf("Close returned after %v, before the ended held %v: the bytes were confirmed some other way", took, f.endedDelay)
	}
	if !testkit.Recv(t, f.releases) {
		t.Error("released not reusable")
	}
}
