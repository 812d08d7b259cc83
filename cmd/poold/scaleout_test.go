package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// echoLease leases from pool through c and checks one echo round trip.
// leaseLoad starts workers goroutines that lease from pool "fleet" of c
// over and over, one echo a lease bounded by 5s, and pass each lease's
// outcome to done (called concurrently). The returned stop ends them and
// waits; it may be called more than once, and the test's cleanup calls it
// too (before the cleanups registered earlier, such as closing c).
func leaseLoad(ctx context.Context, t *testing.T, c *client.Client, workers int, done func(err error)) (stop func()) {
	t.Helper()
	var (
		stopc    = make(chan struct{})
		wg       sync.WaitGroup
		stopOnce sync.Once
	)
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopc:
					return
				default:
				}
				lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := echoLease(lctx, c, "fleet", w*1_000_000+i)
				cancel()
				done(err)
			}
		})
	}
	stop = func() { stopOnce.Do(func() { close(stopc); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

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

// statsClients holds one stats client per test and address, so that
// polling does not open a connection per call.
var statsClients struct {
	sync.Mutex
	m map[*testing.T]map[string]poolv1.StatsServiceClient
}

func statsFor(t *testing.T, addr string) poolv1.StatsServiceClient {
	t.Helper()
	statsClients.Lock()
	defer statsClients.Unlock()
	if statsClients.m == nil {
		statsClients.m = make(map[*testing.T]map[string]poolv1.StatsServiceClient)
	}
	byAddr := statsClients.m[t]
	if byAddr == nil {
		byAddr = make(map[string]poolv1.StatsServiceClient)
		statsClients.m[t] = byAddr
		t.Cleanup(func() {
			statsClients.Lock()
			delete(statsClients.m, t)
			statsClients.Unlock()
		})
	}
	sc, ok := byAddr[addr]
	if !ok {
		sc = poolv1.NewStatsServiceClient(dial(t, addr))
		byAddr[addr] = sc
	}
	return sc
}

func acquires(t *testing.T, addr, pool string) uint64 {
	t.Helper()
	st, err := statsFor(t, addr).GetPoolStats(t.Context(), &poolv1.GetPoolStatsRequest{Name: "pools/" + pool})
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
	up := testkit.EchoServer(t)
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
	testkit.WaitWithin(t, time.Second, "pool on replica b", func() bool {
		_, err := stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/echo"})
		return err == nil
	})
	// An update through b reaches a.
	if _, err := bAdmin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/echo", Endpoints: []string{up},
		Limits: &poolv1.Limits{MaxConnections: 6}}}); err != nil {
		t.Fatal(err)
	}
	aStats := poolv1.NewStatsServiceClient(dial(t, a.grpcAddr))
	testkit.WaitWithin(t, time.Second, "update on replica a", func() bool {
		st, err := aStats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/echo"})
		return err == nil && st.GetMaxConnections() == 6
	})

	c, err := client.New(a.grpcAddr+","+b.grpcAddr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Once both replicas have granted a lease, both are connected and
	// serving: from then on leases take turns, each on a warm stream of its
	// replica.
	testkit.WaitWithin(t, 5*time.Second, "both replicas leasing", func() bool {
		if err := echoLease(ctx, c, "echo", 0); err != nil {
			t.Fatalf("lease: %v", err)
		}
		return acquires(t, a.grpcAddr, "echo") > 0 && acquires(t, b.grpcAddr, "echo") > 0
	})
	a0, b0 := acquires(t, a.grpcAddr, "echo"), acquires(t, b.grpcAddr, "echo")
	const n = 20
	for i := range n {
		if err := echoLease(ctx, c, "echo", i); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	na, nb := acquires(t, a.grpcAddr, "echo"), acquires(t, b.grpcAddr, "echo")
	if na-a0 != n/2 || nb-b0 != n/2 {
		t.Errorf("acquires a=+%d b=+%d, want %d each: leases take turns", na-a0, nb-b0, n/2)
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
	up := testkit.EchoServer(t)
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
	c, err := client.New(a.grpcAddr+","+b.grpcAddr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Until the balancer has connected to a, every pick is b: the retry
	// lands on b again. Once a lease succeeds, both are connected.
	testkit.WaitWithin(t, 5*time.Second, "first lease", func() bool { return echoLease(ctx, c, "echo", 0) == nil })
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

// countingEcho is an echo upstream that records how many connections are
// open at once, across every replica dialing it.
type countingEcho struct {
	addr      string
	open, max atomic.Int64
}

func newCountingEcho(t *testing.T) *countingEcho {
	t.Helper()
	e := &countingEcho{}
	e.addr = testkit.Serve(t, func(c net.Conn) {
		n := e.open.Add(1)
		for m := e.max.Load(); n > m && !e.max.CompareAndSwap(m, n); m = e.max.Load() {
		}
		testkit.EchoConn(c)
		e.open.Add(-1)
	})
	return e
}

func maxConnsOn(t *testing.T, addr string) int32 {
	t.Helper()
	st, err := statsFor(t, addr).GetPoolStats(t.Context(), &poolv1.GetPoolStatsRequest{Name: "pools/fleet"})
	if err != nil {
		return -1
	}
	return st.GetMaxConnections()
}

// Three poold replicas over one embedded etcd, a fleet-scoped pool and
// clients leasing through all three: config changes reach every replica,
// the upstream never sees more than max_connections connections, and when
// one replica stops mid-load (with a short grace, cutting its leases) only
// leases in flight on it fail: the clients carry on through the others.
func TestScaleOutThreeReplicas(t *testing.T) {
	srv := etcdtest.Start(t)
	storeURL := "etcd://" + srv.Endpoint() + "/three"
	up := newCountingEcho(t)
	var rs []*poold
	for i := range 3 {
		rs = append(rs, startPoold(t, t.TempDir(), "--store", storeURL, "--replica-id", fmt.Sprint("r", i), "--shutdown-grace", "50ms"))
	}
	ctx := t.Context()
	const fleetMax = 6
	admin := poolv1.NewPoolAdminServiceClient(dial(t, rs[0].grpcAddr))
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "fleet", Pool: &poolv1.Pool{
		Endpoints: []string{up.addr},
		Limits:    &poolv1.Limits{MaxConnections: 9, Scope: poolv1.LimitScope_LIMIT_SCOPE_FLEET}}}); err != nil {
		t.Fatal(err)
	}
	shares := func(rs ...*poold) string {
		var s []int32
		for _, r := range rs {
			s = append(s, maxConnsOn(t, r.grpcAddr))
		}
		return fmt.Sprint(s)
	}
	testkit.WaitWithin(t, 5*time.Second, "9 divided by 3 replicas", func() bool { return shares(rs...) == "[3 3 3]" })
	// Every replica lists the same three, in one rank order.
	var ids []string
	for i, r := range rs {
		resp, err := poolv1.NewPoolAdminServiceClient(dial(t, r.grpcAddr)).ListReplicas(ctx, &poolv1.ListReplicasRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for j, rep := range resp.GetReplicas() {
			if rep.GetRank() != int32(j) {
				t.Errorf("replica %d lists %s at rank %d, position %d", i, rep.GetId(), rep.GetRank(), j)
			}
			got = append(got, rep.GetId())
		}
		if len(got) != 3 || !slices.Contains(got, resp.GetReplicaId()) || resp.GetFenced() {
			t.Fatalf("ListReplicas on replica %d: %v", i, resp)
		}
		if ids == nil {
			ids = got
		} else if !slices.Equal(ids, got) {
			t.Errorf("replica %d lists %v, replica 0 %v", i, got, ids)
		}
	}
	// A change through another replica reaches all of them within a second.
	if _, err := poolv1.NewPoolAdminServiceClient(dial(t, rs[1].grpcAddr)).UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{
		Name: "pools/fleet", Endpoints: []string{up.addr},
		Limits: &poolv1.Limits{MaxConnections: fleetMax, Scope: poolv1.LimitScope_LIMIT_SCOPE_FLEET}}}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitWithin(t, time.Second, "6 divided by 3 replicas", func() bool { return shares(rs...) == "[2 2 2]" })

	c, err := client.New(rs[0].grpcAddr+","+rs[1].grpcAddr+","+rs[2].grpcAddr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	// Leases take turns over the replicas, each on a warm stream of its
	// replica.
	t.Cleanup(func() { _ = c.Close() })
	const workers = 6
	var (
		phase          atomic.Int32 // 0 before the stop, 1 during it, 2 after
		ok, failed     [3]atomic.Int64
		firstErrMu     sync.Mutex
		firstErrDuring error
	)
	stopLoad := leaseLoad(ctx, t, c, workers, func(err error) {
		// Counted in the phase in which the lease ended: one that began
		// before the stop and failed in it failed during it.
		p := phase.Load()
		if err != nil {
			failed[p].Add(1)
			firstErrMu.Lock()
			if firstErrDuring == nil {
				firstErrDuring = err
			}
			firstErrMu.Unlock()
			return
		}
		ok[p].Add(1)
	})
	testkit.WaitWithin(t, 10*time.Second, "load on every replica", func() bool {
		for _, r := range rs {
			if acquires(t, r.grpcAddr, "fleet") < 10 {
				return false
			}
		}
		return true
	})
	phase.Store(1)
	rs[2].stop(t)
	phase.Store(2)
	base := ok[2].Load()
	testkit.WaitWithin(t, 10*time.Second, "leases carry on through r0 and r1", func() bool { return ok[2].Load() >= base+100 })
	testkit.WaitWithin(t, 5*time.Second, "6 divided by the 2 left", func() bool { return shares(rs[0], rs[1]) == "[3 3]" })
	base = ok[2].Load()
	testkit.WaitWithin(t, 10*time.Second, "leases after the re-division", func() bool { return ok[2].Load() >= base+100 })
	stopLoad()

	t.Logf("leases ok before/during/after the stop: %d/%d/%d; failed: %d/%d/%d (first: %v); upstream max open %d",
		ok[0].Load(), ok[1].Load(), ok[2].Load(), failed[0].Load(), failed[1].Load(), failed[2].Load(), firstErrDuring, up.max.Load())
	if failed[0].Load() != 0 {
		t.Errorf("%d leases failed before the stop", failed[0].Load())
	}
	// Only leases in flight on the stopped replica may fail: at most one
	// per worker (a worker holds one lease at a time).
	if f := failed[1].Load() + failed[2].Load(); f > workers {
		t.Errorf("%d leases failed around the stop, want at most %d (one per worker)", f, workers)
	}
	if m := up.max.Load(); m > fleetMax {
		t.Errorf("upstream saw %d connections at once, fleet max_connections is %d", m, fleetMax)
	}
}
