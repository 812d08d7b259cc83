package reliability_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestOverload drives the real poold binary with 20x more acquirers than
// max_connections + max_waiters for POOLPLANE_OVERLOAD_SECONDS (default 5s
// in CI; the figure is for 30s), sampling poold's goroutines and
// heap (runtime.NumGoroutine and runtime.ReadMemStats, read through its
// /metrics). Guarantees:
//   - the surplus fails at once with BACKLOG_FULL (rejection latency p99
//     far below acquire_timeout), and nothing fails otherwise;
//   - goroutines and heap stay flat: goroutines within 3 per acquirer of
//     the baseline, the heap's second-half peak within 1.5x (+4 MiB) of
//     its first-half peak and within 32 MiB of the baseline, and both
//     back to the baseline once the load stops;
//   - the pool serves at full rate afterwards (at least a third of the rate
//     measured before, best of three windows each, on a shared CI
//     machine);
//   - a client that stops reading a firehose upstream cannot grow poold's
//     heap past a bound: HTTP/2 flow control stops the relay, which stops
//     reading the upstream.
//
// Figures: peak goroutines, peak heap, rejection latency p99.
func TestOverload(t *testing.T) {
	const (
		maxConns   = 4
		maxWaiters = 8
		acquirers  = 20 * (maxConns + maxWaiters)
		// heapBound is what poold's heap may grow by: under the load, and
		// under a slow reader.
		heapBound = 32 << 20
	)
	seconds := envInt(t, "POOLPLANE_OVERLOAD_SECONDS", 5)
	echo := startUpstream(t, "127.0.0.1:0", echoLines)
	var fireSent atomic.Int64
	fire := startUpstream(t, "127.0.0.1:0", firehose(&fireSent))
	pd := spawnPoold(t, t.TempDir(), "--pprof")
	admin, _, closeAdmin := adminClient(t, pd.addr)
	defer closeAdmin()
	ctx := testCtx(t)
	for name, p := range map[string]*poolv1.Pool{
		"hot":      {Endpoints: []string{echo.addr}, Limits: &poolv1.Limits{MaxConnections: maxConns, MaxWaiters: maxWaiters}},
		"firehose": {Endpoints: []string{fire.addr}, Limits: &poolv1.Limits{MaxConnections: 1}},
	} {
		if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: name, Pool: p}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	clients := make([]*client.Client, 8)
	for i := range clients {
		clients[i] = newClient(t, pd.addr)
		// Connected before the baseline: each client connection costs
		// poold a few goroutines (transport, health watch) that stay.
		conn, err := clients[i].Lease(ctx, "hot")
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conn.Close()
	}

	// Baseline and full rate, before. The acquire_timeout is the default
	// 30s: a rejection that waited would show.
	rateBefore := bestRate(t, clients[:maxConns])
	base := pd.sample(t, true)

	// Overload.
	var (
		rejections     []time.Duration
		mu             sync.Mutex // protects rejections, otherErr
		otherErr       error
		served, others atomic.Int64
		// No deadline on the acquirers' context: each Lease then waits
		// up to the pool's acquire_timeout (30s), not a deadline it would
		// send along.
		octx, stop    = context.WithCancel(ctx)
		stopTimer     = time.AfterFunc(time.Duration(seconds)*time.Second, stop)
		wg            sync.WaitGroup
		samples       []memSample
		samplerDone   = make(chan struct{})
		overloadStart = time.Now()
	)
	defer stop()
	defer stopTimer.Stop()
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-octx.Done():
				return
			case <-tick.C:
				if s, err := pd.trySample(false); err == nil {
					samples = append(samples, s)
				}
			}
		}
	}()
	for i := range acquirers {
		c := clients[i%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for octx.Err() == nil {
				start := time.Now()
				conn, err := c.Lease(octx, "hot")
				d := time.Since(start)
				switch {
				case err == nil:
					_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := roundTrip(conn, bufio.NewReader(conn), "hot\n"); err != nil && octx.Err() == nil {
						others.Add(1)
						mu.Lock()
						otherErr = fmt.Errorf("round trip: %w", err)
						mu.Unlock()
					}
					conn.Close()
					served.Add(1)
				case errors.Is(err, client.ErrBacklogFull):
					mu.Lock()
					rejections = append(rejections, d)
					mu.Unlock()
				case octx.Err() != nil:
				default:
					others.Add(1)
					mu.Lock()
					otherErr = err
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	<-samplerDone
	overload := time.Since(overloadStart)

	// Back to the baseline, and full rate again.
	var after memSample
	testkit.WaitWithin(t, 20*time.Second, "goroutines back to the baseline", func() bool {
		after = pd.sample(t, true)
		return after.goroutines <= base.goroutines+10
	})
	rateAfter := bestRate(t, clients[:maxConns])
	for range 4 {
		if rateAfter >= rateBefore/3 {
			break
		}
		// A pool that degraded stays slow; a busy neighbour goes away.
		rateAfter = max(rateAfter, bestRate(t, clients[:maxConns]))
	}

	if len(rejections) == 0 {
		t.Fatal("no acquire was rejected: the pool was not overloaded")
	}
	if others.Load() != 0 {
		t.Errorf("%d acquires or round trips failed otherwise; last: %v", others.Load(), otherErr)
	}
	// "At once" means without waiting: a queued acquire would wait up to
	// acquire_timeout (30s). The bound leaves room for a loaded machine,
	// where a stream costs hundreds of milliseconds.
	p99 := percentile(rejections, 99)
	if p99 > 5*time.Second {
		t.Errorf("rejection latency p99 %v: the surplus does not fail at once (acquire_timeout 30s)", p99)
	}
	var peak memSample
	half := len(samples) / 2
	var peak1, peak2 memSample
	for i, s := range samples {
		peak = peak.max(s)
		if i < half {
			peak1 = peak1.max(s)
		} else {
			peak2 = peak2.max(s)
		}
	}
	if len(samples) < 2 {
		t.Fatalf("only %d samples of poold", len(samples))
	}
	// Goroutines follow the streams open at the moment of a sample, which
	// the scheduler decides: the bound is structural. Each acquirer has at
	// most one stream, and a stream costs poold at most three goroutines
	// (the handler, its receive loop, the relay of a granted lease); a
	// leak would also keep them after the load (checked above).
	if peak.goroutines > base.goroutines+3*acquirers {
		t.Errorf("peak goroutines %d, baseline %d: more than 3 per acquirer", peak.goroutines, base.goroutines)
	}
	if peak2.heap > peak1.heap*3/2+4<<20 {
		t.Errorf("heap grew under steady overload: first half peak %d, second half %d", peak1.heap, peak2.heap)
	}
	if peak.heap > base.heap+heapBound {
		t.Errorf("heap peak %d, baseline %d: more than %d above", peak.heap, base.heap, heapBound)
	}
	if after.heap > base.heap+4<<20 {
		t.Errorf("heap after the overload %d, baseline %d", after.heap, base.heap)
	}
	// A third, not the whole: on 2 shared cores the other test packages
	// running beside this one move a short rate window by 2x either way.
	// A pool that lost capacity (a leaked slot, a stuck circuit) serves
	// far less than that, or nothing.
	if rateAfter < rateBefore/3 {
		t.Errorf("after the overload the pool serves %.0f leases/s, before %.0f", rateAfter, rateBefore)
	}
	t.Logf("FIGURE: overload (%d acquirers on max_connections %d + max_waiters %d for %v; CI runs 5s, the issue's figure is 30s): peak goroutines %d (baseline %d, after %d), peak heap %.1f MiB (baseline %.1f, after %.1f), rejection latency p50 %s p99 %s over %d BACKLOG_FULL, %d served, %d samples; rate before %.0f/s, after %.0f/s",
		acquirers, maxConns, maxWaiters, overload.Round(time.Millisecond), peak.goroutines, base.goroutines, after.goroutines,
		mib(peak.heap), mib(base.heap), mib(after.heap), secs(percentile(rejections, 50)), secs(p99), len(rejections), served.Load(), len(samples), rateBefore, rateAfter)

	// A slow reader: lease the firehose and read nothing.
	conn, err := clients[0].Lease(ctx, "firehose")
	if err != nil {
		t.Fatal(err)
	}
	base = pd.sample(t, true)
	var stalled int64
	testkit.WaitWithin(t, 20*time.Second, "the firehose stalls", func() bool {
		s := fireSent.Load()
		if s > 0 && s == stalled {
			return true
		}
		stalled = s
		pause(ctx, 500*time.Millisecond) // a stall is no progress for this long
		return false
	})
	slow := pd.sample(t, false)
	conn.Discard()
	if slow.heap > base.heap+heapBound {
		t.Errorf("slow reader: poold heap %d, baseline %d: more than %d above", slow.heap, base.heap, heapBound)
	}
	t.Logf("FIGURE: slow reader: the upstream stalled after %.1f MiB sent; poold heap %.1f MiB (baseline %.1f), goroutines %d",
		mib(stalled), mib(slow.heap), mib(base.heap), slow.goroutines)
}

// memSample is one reading of poold's goroutines and heap.
type memSample struct {
	goroutines int
	heap       int64
}

func (s memSample) max(o memSample) memSample {
	return memSample{goroutines: max(s.goroutines, o.goroutines), heap: max(s.heap, o.heap)}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// trySample reads go_goroutines and go_memstats_heap_alloc_bytes; with gc
// it first has poold collect garbage (its pprof heap endpoint runs
// runtime.GC).
func (p *pooldProc) trySample(gc bool) (memSample, error) {
	if gc {
		resp, err := http.Get("http://" + p.metricsAddr + "/debug/pprof/heap?gc=1")
		if err != nil {
			return memSample{}, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	m, err := p.metrics("go_goroutines", "go_memstats_heap_alloc_bytes")
	if err != nil {
		return memSample{}, err
	}
	return memSample{goroutines: int(m["go_goroutines"]), heap: int64(m["go_memstats_heap_alloc_bytes"])}, nil
}

func (p *pooldProc) sample(t testing.TB, gc bool) memSample {
	t.Helper()
	s, err := p.trySample(gc)
	if err != nil {
		t.Fatalf("sample poold: %v", err)
	}
	return s
}

// bestRate is the best of three serveRate windows of 400ms: the machine
// is shared, and a neighbour's burst should not pass for a slow pool.
func bestRate(t *testing.T, cs []*client.Client) float64 {
	t.Helper()
	best := 0.0
	for range 3 {
		best = max(best, serveRate(t, cs, 400*time.Millisecond))
	}
	return best
}

// serveRate runs one lease + round trip loop per client for d and returns
// leases per second.
func serveRate(t *testing.T, cs []*client.Client, d time.Duration) float64 {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t)) // no deadline to send along
	defer cancel()
	stop := time.AfterFunc(d, cancel)
	defer stop.Stop()
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				conn, err := c.Lease(ctx, "hot")
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("lease: %v", err)
					}
					return
				}
				if _, err := roundTrip(conn, bufio.NewReader(conn), "rate\n"); err != nil {
					conn.Discard()
					t.Errorf("round trip: %v", err)
					return
				}
				conn.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// firehose writes to the connection as fast as it is read, counting bytes.
func firehose(sent *atomic.Int64) handler {
	return func(_ *upstream, c net.Conn, _ int64) {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
}
