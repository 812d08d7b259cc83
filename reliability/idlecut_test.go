package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"
)

// TestSilentIdleCuts: upstreams behind a firewall or NAT that cuts
// connections idle for N. Two kinds of cut, each with the setting that
// defeats it:
//   - closing cut (the upstream or a firewall closes: FIN or RST reach the
//     pool): validate_after_idle below N peeks at checkout and drops the
//     dead connection;
//   - silent cut (NAT state dropped: nothing reaches the pool, the next
//     request vanishes): max_lifetime below N retires the connection
//     before the cut can happen. A control run with max_lifetime above N
//     shows the workload does hand out silently cut connections then.
//
// The workload comes in bursts separated by silences longer than N, so
// connections left idle across a silence are cut by the next burst.
// Figure: dead connections handed out (must be 0).
func TestSilentIdleCuts(t *testing.T) {
	t.Run("closing", func(t *testing.T) {
		// The upstream's idle clock starts at its last byte, the pool's at
		// the release, which on a loaded machine can come hundreds of
		// milliseconds later; a cut within validate_after_idle of the
		// release is by definition not peeked. N leaves 1.4 s for that lag.
		const n = 1500 * time.Millisecond
		up := startUpstream(t, "127.0.0.1:0", idleCutter(n))
		srv := startServer(t, srvOptions{})
		p := srv.create(t, "cut", poolmgr.Config{
			Endpoints: []string{up.addr},
			Limits:    poolmgr.Limits{MaxConnections: 8, AcquireTimeout: 10 * time.Second},
			Lifecycle: poolmgr.Lifecycle{ValidateAfterIdle: 100 * time.Millisecond},
		})
		r := burstLoad(t, srv.addr, "cut", 3, func() time.Duration { return n + 200*time.Millisecond + rand.N(100*time.Millisecond) }, 5*time.Second)
		st := p.Stats()
		if r.dead != 0 {
			t.Errorf("%d dead connections handed out (first: %v)", r.dead, r.firstErr)
		}
		if up.cuts.Load() == 0 || st.Closes["unhealthy"] == 0 {
			t.Errorf("no cut happened or none was caught at checkout (upstream cuts %d, closes %v): the test proves nothing", up.cuts.Load(), st.Closes)
		}
		t.Logf("FIGURE: silent idle cuts (closing cut after %v, validate_after_idle 100ms): %d dead connections handed out of %d requests; upstream cut %d connections, checkout peeks caught %d",
			n, r.dead, r.requests, up.cuts.Load(), st.Closes["unhealthy"])
	})

	silent := func(t *testing.T, maxLifetime time.Duration, bursts int) (burstResult, *upstream) {
		const n = 1200 * time.Millisecond
		up := startUpstream(t, "127.0.0.1:0", silentCutter(n))
		srv := startServer(t, srvOptions{})
		srv.create(t, "cut", poolmgr.Config{
			Endpoints: []string{up.addr},
			Limits:    poolmgr.Limits{MaxConnections: 8, AcquireTimeout: 10 * time.Second},
			Lifecycle: poolmgr.Lifecycle{MaxLifetime: maxLifetime, LifetimeJitter: 0},
		})
		r := burstLoad(t, srv.addr, "cut", bursts, func() time.Duration { return n + 100*time.Millisecond + rand.N(100*time.Millisecond) }, 2*time.Second)
		return r, up
	}
	t.Run("silent", func(t *testing.T) {
		r, up := silent(t, time.Second, 2)
		if r.dead != 0 {
			t.Errorf("%d dead connections handed out (first: %v)", r.dead, r.firstErr)
		}
		t.Logf("FIGURE: silent idle cuts (silent cut after 1.2s, max_lifetime 1s): %d dead connections handed out of %d requests; upstream cut %d connections",
			r.dead, r.requests, up.cuts.Load())
	})
	t.Run("silent-control", func(t *testing.T) {
		r, up := silent(t, time.Hour, 2)
		if r.dead == 0 || up.cuts.Load() == 0 {
			t.Errorf("control: with max_lifetime above N, %d dead connections handed out, %d cuts: the workload does not reach cut connections", r.dead, up.cuts.Load())
		}
		t.Logf("control: max_lifetime 1h: %d dead of %d requests, %d cuts", r.dead, r.requests, up.cuts.Load())
	})
}

// burstResult counts a burstLoad.
type burstResult struct {
	requests, dead int64
	firstErr       error
}

// burstLoad runs bursts of 8 clients doing 3 leases each (lease, one line
// round trip with a deadline of rtTimeout, close), with a silence between
// bursts. A lease whose round trip fails counts as a dead connection handed
// out; a failed Lease fails the test.
func burstLoad(t *testing.T, addr, pool string, bursts int, silence func() time.Duration, rtTimeout time.Duration) burstResult {
	t.Helper()
	const clients, perClient = 8, 3
	ctx := testCtx(t)
	cs := make([]*client.Client, clients)
	for i := range cs {
		cs[i] = newClient(t, addr)
	}
	var (
		requests, dead atomic.Int64
		mu             sync.Mutex // protects firstErr
		firstErr       error
	)
	for b := range bursts {
		if b > 0 {
			pause(ctx, silence())
		}
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range perClient {
					lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					conn, err := c.Lease(lctx, pool)
					cancel()
					if err != nil {
						t.Errorf("lease: %v", err)
						return
					}
					requests.Add(1)
					_ = conn.SetDeadline(time.Now().Add(rtTimeout)) // never fails on a live Conn
					line := fmt.Sprintf("ping %d.%d.%d\n", b, i, j)
					got, err := roundTrip(conn, bufio.NewReader(conn), line)
					if err == nil && got != line {
						err = fmt.Errorf("reply %q to %q", got, line)
					}
					if err != nil {
						dead.Add(1)
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("lease %+v: %w", conn.Info(), err)
						}
						mu.Unlock()
						conn.Discard()
						continue
					}
					conn.Close()
				}
			}()
		}
		wg.Wait()
	}
	return burstResult{requests: requests.Load(), dead: dead.Load(), firstErr: firstErr}
}

// silentCutter is echoLines behind a NAT that forgets connections idle
// (nothing received) for idle: from then on nothing is answered and
// nothing is sent, not even a FIN, until the peer closes.
func silentCutter(idle time.Duration) handler {
	return func(u *upstream, c net.Conn, _ int64) {
		if !echoUntilIdle(c, idle) {
			return
		}
		u.cuts.Add(1)
		if c.SetReadDeadline(time.Time{}) == nil {
			_, _ = io.Copy(io.Discard, c) // swallow until the peer or a kill closes it
		}
	}
}
