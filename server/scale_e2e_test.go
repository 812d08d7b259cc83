package server_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
)

// connCounter is a client stats.Handler counting the transports opened.
type connCounter struct{ n atomic.Int64 }

func (*connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (*connCounter) HandleRPC(context.Context, stats.RPCStats)                       {}
func (*connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (c *connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnBegin); ok {
		c.n.Add(1)
	}
}

// TestSDKLeasesPastMaxConcurrentStreams: one client.New holds 1,100 leases
// of a server that allows 64 streams per connection. The server advertises
// its limit, the client opens connections as it needs them, every lease is
// granted and each one still carries bytes both ways.
func TestSDKLeasesPastMaxConcurrentStreams(t *testing.T) {
	const (
		limit = 64
		n     = 1100
	)
	srv := servertest.Start(t, servertest.Options{Server: func(c *server.Config) { c.MaxConcurrentStreams = limit }})
	up := startSDKUpstream(t, testkit.EchoConn)
	if _, err := srv.Manager.Create(context.Background(), "held", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: n + 8},
	}, poolmgr.WriteOptions{Actor: "test"}); err != nil {
		t.Fatal(err)
	}
	conns := &connCounter{}
	c, err := client.New(srv.Addr, client.WithInsecure(), client.WithClientName("scale"),
		client.WithDialOptions(grpc.WithStatsHandler(conns)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	ctx := ctxT(t)
	held := make([]*client.Conn, 0, n)
	t.Cleanup(func() {
		for _, h := range held {
			_ = h.Close()
		}
	})
	for i := range n {
		conn, err := c.Lease(ctx, "held")
		if err != nil {
			t.Fatalf("lease %d: %v", i+1, err)
		}
		held = append(held, conn)
	}
	// 56 leases per connection (64 less those kept for other calls).
	if got, want := conns.n.Load(), int64((n+55)/56); got < want {
		t.Errorf("%d connections for %d leases, want at least %d", got, n, want)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		msg := []byte("ping")
		if _, err := held[i].Write(msg); err != nil {
			t.Fatalf("lease %d: write: %v", i+1, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(held[i], got); err != nil || string(got) != "ping" {
			t.Fatalf("lease %d: read %q, %v", i+1, got, err)
		}
	}
}
