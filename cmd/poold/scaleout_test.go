package main

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
)

// within polls cond until it holds, failing the test after d (a failure
// deadline, not a sleep).
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		<-tick.C
	}
}

// echoLease leases from pool through c and checks one echo round trip.
func echoLease(ctx context.Context, c *client.Client, pool string, i int) error {
	conn, err := c.Lease(ctx, pool)
	if err != nil {
		return err
	}
	defer conn.Close()
	msg := fmt.Appendf(nil, "ping %d", i)
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func acquires(t *testing.T, addr, pool string) uint64 {
	t.Helper()
	st, err := poolv1.NewStatsServiceClient(dial(t, addr)).GetPoolStats(t.Context(), &poolv1.GetPoolStatsRequest{Name: "pools/" + pool})
	if err != nil {
		t.Fatalf("GetPoolStats on %s: %v", addr, err)
	}
	return st.GetAcquires()
}

// Two poold replicas share one configuration through an embedded etcd: a
// pool created through one serves on both within a second, the SDK given
// both addresses spreads leases over them, and carries on through the
// other when one stops.
func TestScaleOutTwoReplicas(t *testing.T) {
	srv := etcdtest.Start(t)
	storeURL := "etcd://" + srv.Endpoint() + "/scaleout"
	up := echoServer(t)
	a := startPoold(t, t.TempDir(), "--store", storeURL)
	b := startPoold(t, t.TempDir(), "--store", storeURL)
	ctx := t.Context()

	admin := poolv1.NewPoolAdminServiceClient(dial(t, a.grpcAddr))
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{
		Endpoints: []string{up}, Limits: &poolv1.Limits{MaxConnections: 8}}}); err != nil {
		t.Fatal(err)
	}
	bAdmin := poolv1.NewPoolAdminServiceClient(dial(t, b.grpcAddr))
	stats := poolv1.NewStatsServiceClient(dial(t, b.grpcAddr))
	within(t, time.Second, "pool on replica b", func() bool {
		_, err := stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/echo"})
		return err == nil
	})
	// An update through b reaches a.
	if _, err := bAdmin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/echo", Endpoints: []string{up},
		Limits: &poolv1.Limits{MaxConnections: 6}}}); err != nil {
		t.Fatal(err)
	}
	aStats := poolv1.NewStatsServiceClient(dial(t, a.grpcAddr))
	within(t, time.Second, "update on replica a", func() bool {
		st, err := aStats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/echo"})
		return err == nil && st.GetMaxConnections() == 6
	})

	c, err := client.New(a.grpcAddr+","+b.grpcAddr, client.WithInsecure(), client.WithIdleStreams(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	const n = 20
	for i := range n {
		if err := echoLease(ctx, c, "echo", i); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	na, nb := acquires(t, a.grpcAddr, "echo"), acquires(t, b.grpcAddr, "echo")
	if na+nb != n || na == 0 || nb == 0 {
		t.Errorf("acquires a=%d b=%d, want %d spread over both", na, nb, n)
	}

	// Replica b stops: every lease still succeeds, through a.
	if code := b.stop(t); code != 0 {
		t.Fatalf("poold b exited with %d:\n%s", code, b.log)
	}
	for i := range n {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := echoLease(lctx, c, "echo", n+i)
		cancel()
		if err != nil {
			t.Fatalf("lease %d after b stopped: %v", i, err)
		}
	}
	if got := acquires(t, a.grpcAddr, "echo"); got != na+n {
		t.Errorf("acquires on a after b stopped = %d, want %d", got, na+n)
	}
}

// A lease refused with POOL_DRAINING by one replica is retried once on
// another: two replicas with their own stores, the pool draining on one.
func TestScaleOutLeaseRetriesDrainingReplica(t *testing.T) {
	up := echoServer(t)
	a := startPoold(t, t.TempDir())
	b := startPoold(t, t.TempDir())
	ctx := t.Context()
	for _, p := range []*poold{a, b} {
		admin := poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr))
		if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := poolv1.NewPoolAdminServiceClient(dial(t, b.grpcAddr)).DrainPool(ctx, &poolv1.DrainPoolRequest{Name: "pools/echo"}); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(a.grpcAddr+","+b.grpcAddr, client.WithInsecure(), client.WithIdleStreams(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Until the balancer has connected to a, every pick is b: the retry
	// lands on b again. Once a lease succeeds, both are connected.
	within(t, 5*time.Second, "first lease", func() bool { return echoLease(ctx, c, "echo", 0) == nil })
	const n = 10
	for i := range n {
		if err := echoLease(ctx, c, "echo", i); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	if got := acquires(t, a.grpcAddr, "echo"); got != n+1 {
		t.Errorf("acquires on a = %d, want %d", got, n+1)
	}
}
