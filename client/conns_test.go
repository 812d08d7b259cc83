package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// TestLeasesPastUnadvertisedStreamLimit: a server that allows 4 streams per
// connection and does not say so (the fake sends no header). A new stream
// that waits on a ready connection marks it full, and the lease goes on a
// connection dialled for it: every lease is granted.
func TestLeasesPastUnadvertisedStreamLimit(t *testing.T) {
	f := newFake(t, grpc.MaxConcurrentStreams(4))
	c := newTestClient(t, f)
	c.stallWait = 20 * time.Millisecond
	const n = 12
	conns := make([]*Conn, 0, n)
	for range n {
		conns = append(conns, leaseAPI(t, c))
	}
	// 4 streams per connection, one of the first taken by health checks.
	if got := c.conns(); got < n/4 {
		t.Errorf("%d connections for %d leases at 4 streams each, want at least %d", got, n, n/4)
	}
	for _, conn := range conns {
		if err := conn.Close(); err != nil {
			t.Error(err)
		}
	}
}

// TestLeaseHonoursContextAtStreamLimit: with the Client's patience out of
// the way, a lease that waits for a stream the server will not allow ends
// at its context's deadline with ErrAcquireTimeout, and the streams held
// are not disturbed.
func TestLeaseHonoursContextAtStreamLimit(t *testing.T) {
	f := newFake(t, grpc.MaxConcurrentStreams(2))
	c := newTestClient(t, f, WithMaxStreamsPerConn(64))
	c.stallWait = time.Hour
	held := leaseAPI(t, c) // with the health check stream: the limit
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Lease(ctx, "api")
	if !errors.Is(err, ErrAcquireTimeout) {
		t.Fatalf("lease past the limit: %v, want ErrAcquireTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("lease past the limit took %v", d)
	}
	if err := held.Close(); err != nil {
		t.Errorf("held lease: %v", err)
	}
}
