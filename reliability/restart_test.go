package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestUpstreamRestartUnderLoad: 32 SDK clients do lease + round trip
// against an upstream that is killed (listener and every connection closed)
// and restarted on the same port 5 times. Guarantees:
//   - only requests in flight at a kill fail: a request fails only if a
//     kill began after its lease started;
//   - no request is sent on a connection the upstream had closed before
//     the lease began: every reply carries the epoch of the connection,
//     which must not be older than the epoch the lease started in.
//
// Figure: failed requests per restart.
func TestUpstreamRestartUnderLoad(t *testing.T) {
	const (
		clients  = 32
		restarts = 5
		downtime = 50 * time.Millisecond
	)
	up := startUpstream(t, "127.0.0.1:0", epochEcho)
	srv := startServer(t, srvOptions{})
	srv.create(t, "restart", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: clients, AcquireTimeout: 5 * time.Second, DialTimeout: time.Second},
	})

	// killsBegun counts kills started; epoch counts kills finished (every
	// old connection closed). Both only grow.
	var killsBegun, epoch atomic.Int64
	var (
		requests, fails atomic.Int64
		okByEpoch       [restarts + 1]atomic.Int64 // successful requests by lease epoch
		mu              sync.Mutex                 // protects violations
		violations      []string
	)
	violate := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(violations) < 20 {
			violations = append(violations, fmt.Sprintf(format, args...))
		}
	}

	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	for i := range clients {
		c := newClient(t, srv.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				e0 := epoch.Load()
				id := fmt.Sprintf("%d.%d", i, n)
				ok, ce, err := restartRequest(ctx, c, id, e0)
				if ctx.Err() != nil {
					return
				}
				requests.Add(1)
				if ok {
					okByEpoch[e0].Add(1)
					if ce < e0 {
						violate("request %s: lease began in epoch %d, reply came from a connection of epoch %d", id, e0, ce)
					}
					continue
				}
				fails.Add(1)
				if killsBegun.Load() <= e0 {
					violate("request %s failed with no kill since its lease began (epoch %d): %v", id, e0, err)
				}
			}
		}()
	}

	// Each kill comes once every client could have done a request in the
	// current epoch (the machine may be slow), at a random moment after.
	start := time.Now()
	for k := 1; k <= restarts; k++ {
		testkit.WaitWithin(t, 20*time.Second, fmt.Sprintf("%d requests in epoch %d", clients, k-1), func() bool {
			return okByEpoch[k-1].Load() >= clients
		})
		pause(ctx, rand.N(100*time.Millisecond))
		killsBegun.Add(1)
		up.kill()
		epoch.Add(1)
		pause(ctx, downtime)
		up.restart(t)
	}
	testkit.WaitWithin(t, 20*time.Second, "requests after the last restart", func() bool { return okByEpoch[restarts].Load() >= clients })
	cancel()
	wg.Wait()
	elapsed := time.Since(start)

	for _, v := range violations {
		t.Error(v)
	}
	if n := up.stale.Load(); n > 0 {
		t.Errorf("the upstream saw %d requests on connections older than their lease", n)
	}
	if requests.Load() < clients*restarts {
		t.Errorf("only %d requests in %v: the load did not run", requests.Load(), elapsed)
	}
	if f := fails.Load(); f > clients*restarts {
		t.Errorf("%d failed requests: more than the %d that can be in flight at %d kills", f, clients*restarts, restarts)
	}
	t.Logf("FIGURE: upstream restart under load: %.1f failed requests per restart (%d failed of %d, %d restarts, %d clients, %v); stale-connection requests: %d",
		float64(fails.Load())/restarts, fails.Load(), requests.Load(), restarts, clients, elapsed.Round(time.Millisecond), up.stale.Load())
}

// restartRequest leases, sends one request tagged with the lease's epoch
// and reads the reply. It reports success and the connection's epoch.
func restartRequest(ctx context.Context, c *client.Client, id string, e0 int64) (bool, int64, error) {
	conn, err := c.Lease(ctx, "restart")
	if err != nil {
		return false, 0, fmt.Errorf("lease: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second)) // a Conn's deadlines never fail
	got, err := roundTrip(conn, bufio.NewReader(conn), fmt.Sprintf("req %s %d\n", id, e0))
	if err != nil {
		conn.Discard()
		return false, 0, err
	}
	f := strings.Fields(got)
	if len(f) != 3 || f[0] != "ok" || f[1] != id {
		conn.Discard()
		return false, 0, fmt.Errorf("reply %q to request %s", got, id)
	}
	ce, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return false, 0, fmt.Errorf("reply %q: %w", got, err)
	}
	return true, ce, nil
}
