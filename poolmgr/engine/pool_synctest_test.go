package engine

// Every test here runs inside a testing/synctest bubble with a fake network
// that parks dials. advance steps the bubble's fake clock through idle
// timeouts, lifetimes, backoff and health intervals; state is waited for
// with synctest.Wait and the parked dials.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// advance moves the bubble's fake clock d forward (a timer in a bubble
// fires once every goroutine is durably blocked) and waits until the
// goroutines it woke are blocked again. Call it from the test's goroutine.
func advance(d time.Duration) {
	<-time.After(d)
	synctest.Wait()
}

func TestAcquireDialsThenReusesIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(nil))

		a := acquireAsync(context.Background(), p, "alice")
		n.wantDial().finish(nil)
		c, err := a.result(t)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if info := c.Info(); info.Reused || info.UpstreamAddr != "10.0.0.1:6379" || info.Generation != 1 {
			t.Fatalf("Info = %+v, want new connection to 10.0.0.1:6379 gen 1", info)
		}
		ls := p.Leases()
		if len(ls) != 1 || ls[0].Holder != "alice" || ls[0].ID != c.Info().LeaseID {
			t.Fatalf("Leases = %+v", ls)
		}
		advance(3 * time.Second)
		c.Release(true)
		advance(2 * time.Second)

		c2 := mustAcquire(t, p)
		n.wantNoDial()
		info := c2.Info()
		if c2 != c || !info.Reused || info.IdleTime != 2*time.Second || info.ConnAge != 5*time.Second {
			t.Fatalf("second acquire Info = %+v, want reused conn idle 2s, age 5s", info)
		}
		if info.LeaseID == ls[0].ID {
			t.Fatalf("lease ID %q reused", info.LeaseID)
		}
		c2.Release(true)
		c2.Release(true) // idempotent
		s := p.Stats()
		if s.Acquires != 2 || s.Reused != 1 || s.New != 1 || s.Dials != 1 || s.Idle != 1 || s.Total != 1 || s.InUse != 0 {
			t.Fatalf("Stats = %+v", s)
		}
		if s.HoldTime.Count != 2 || s.WaitTime.Count != 2 || s.DialTime.Count != 1 {
			t.Fatalf("histogram counts hold=%d wait=%d dial=%d, want 2 2 1", s.HoldTime.Count, s.WaitTime.Count, s.DialTime.Count)
		}
	})
}

func TestIdleOrder(t *testing.T) {
	for _, order := range []IdleOrder{LIFO, FIFO} {
		t.Run(order.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := newFakeNet(t, true)
				p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 3; c.IdleOrder = order }))
				cs := []*Conn{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
				for _, c := range cs {
					c.Release(true)
				}
				got := mustAcquire(t, p)
				want := cs[2]
				if order == FIFO {
					want = cs[0]
				}
				if got != want {
					t.Fatalf("%v handed out connection %d", order, slices.Index(cs, got))
				}
			})
		})
	}
}

func TestWaitersServedFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 1 }))
		c := mustAcquire(t, p)
		var ws []*asyncAcquire
		for i := range 4 {
			ws = append(ws, acquireAsync(context.Background(), p, "w"+string(rune('0'+i))))
			synctest.Wait() // queue in order
		}
		if s := p.Stats(); s.Waiters != 4 || s.Waits != 5 {
			t.Fatalf("Waiters=%d Waits=%d, want 4 5 (the first acquire waited for its dial)", s.Waiters, s.Waits)
		}
		for i, w := range ws {
			c.Release(true)
			got, err := w.result(t)
			if err != nil || got != c {
				t.Fatalf("waiter %d: (%v, %v), want the released conn", i, got, err)
			}
			for _, later := range ws[i+1:] {
				later.wantBlocked(t)
			}
		}
		c.Release(true)
		if n.dialCount() != 1 {
			t.Fatalf("dials = %d, want 1", n.dialCount())
		}
	})
}

func TestAcquireTimeoutRemovesWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = 1
			c.Limits.AcquireTimeout = 2 * time.Second
		}))
		a := acquireAsync(context.Background(), p, "a")
		d := n.wantDial() // parked: the dial never finishes in time
		start := time.Now()
		_, err := func() (*Conn, error) { <-a.done; return a.c, a.err }()
		if waited := time.Since(start); waited != 2*time.Second {
			t.Fatalf("waited %v, want 2s", waited)
		}
		var ae *AcquireError
		if !errors.As(err, &ae) || !errors.Is(err, ErrAcquireTimeout) {
			t.Fatalf("err = %v, want *AcquireError ErrAcquireTimeout", err)
		}
		if ae.Snapshot.Max != 1 || ae.Snapshot.Waiters != 0 {
			t.Fatalf("Snapshot = %+v", ae.Snapshot)
		}
		if s := p.Stats(); s.Waiters != 0 || s.Timeouts != 1 || s.Dialing != 1 {
			t.Fatalf("Stats = %+v, want no waiter, 1 timeout, dial still running", s)
		}
		// The dial belongs to the pool: it finishes and the conn goes idle.
		d.finish(nil)
		synctest.Wait()
		if s := p.Stats(); s.Idle != 1 || s.Dialing != 0 {
			t.Fatalf("after dial: Idle=%d Dialing=%d, want 1 0", s.Idle, s.Dialing)
		}
		mustAcquire(t, p).Release(true)
		n.wantNoDial()
	})
}

// TestAcquireWithinCallerTimeout: a caller's own acquire timeout ends its
// wait when it is shorter than the pool's acquire_timeout, which caps a
// longer one, as a timeout of the pool with its snapshot and count.
func TestAcquireWithinCallerTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = 1
			c.Limits.AcquireTimeout = 2 * time.Second
		}))
		held := acquireAsync(context.Background(), p, "held")
		n.wantDial().finish(nil)
		c, err := held.result(t)
		if err != nil {
			t.Fatal(err)
		}
		for i, tc := range []struct{ timeout, want time.Duration }{
			{300 * time.Millisecond, 300 * time.Millisecond},
			{5 * time.Second, 2 * time.Second}, // the pool's is shorter
			{0, 2 * time.Second},               // none of the caller's
		} {
			start := time.Now()
			_, err := p.AcquireWithin(context.Background(), "waiter", tc.timeout)
			if waited := time.Since(start); waited != tc.want {
				t.Fatalf("timeout %v: waited %v, want %v", tc.timeout, waited, tc.want)
			}
			var ae *AcquireError
			if !errors.As(err, &ae) || !errors.Is(err, ErrAcquireTimeout) || ae.Snapshot.InUse != 1 {
				t.Fatalf("timeout %v: err = %v, want *AcquireError ErrAcquireTimeout with the pool's snapshot", tc.timeout, err)
			}
			if s := p.Stats(); s.Waiters != 0 || s.Timeouts != uint64(i+1) {
				t.Fatalf("timeout %v: Stats = %+v, want no waiter, %d timeouts", tc.timeout, s, i+1)
			}
		}
		c.Release(true)
		synctest.Wait()
		if c2, err := p.AcquireWithin(context.Background(), "next", time.Millisecond); err != nil || c2 != c {
			t.Fatalf("an idle connection at hand: %v, %v; want it, whatever the timeout", c2, err)
		}
		n.wantNoDial()
	})
}

func TestContextCancelRemovesWaiterDialContinues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(nil))
		type key struct{}
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
		a := acquireAsync(ctx, p, "a")
		d := n.wantDial()
		if d.ctx.Value(key{}) != "v" {
			t.Fatal("dial context lost the caller's values")
		}
		cancel()
		if _, err := a.result(t); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if d.ctx.Err() != nil {
			t.Fatal("caller's cancel cancelled the pool's dial")
		}
		if s := p.Stats(); s.Waiters != 0 {
			t.Fatalf("Waiters = %d, want 0", s.Waiters)
		}
		d.finish(nil)
		synctest.Wait()
		if s := p.Stats(); s.Idle != 1 {
			t.Fatalf("Idle = %d, want the finished dial idle", s.Idle)
		}
		// An already cancelled ctx fails before queueing.
		if _, err := p.Acquire(ctx, "b"); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

// A connection delivered to a waiter that gives up at the same moment goes
// to the next waiter, not lost and not leaked. The waiter's select picks
// at random between its result and its context, so the scenario is repeated
// until the give-back path has run.
func TestConnForGivenUpWaiterGoesToNext(t *testing.T) {
	gaveBack := 0
	for range 40 {
		synctest.Test(t, func(t *testing.T) {
			n := newFakeNet(t, true)
			p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 1 }))
			c := mustAcquire(t, p)
			ctx, cancel := context.WithCancel(context.Background())
			first := acquireAsync(ctx, p, "first")
			synctest.Wait()
			second := acquireAsync(context.Background(), p, "second")
			synctest.Wait()

			cancel()        // first gives up...
			c.Release(true) // ...as the conn is delivered to it
			c1, err1 := first.result(t)
			if err1 == nil {
				second.wantBlocked(t)
				c1.Release(true)
			} else {
				gaveBack++
				if !errors.Is(err1, context.Canceled) {
					t.Fatalf("first: %v, want context.Canceled", err1)
				}
			}
			c2, err2 := second.result(t)
			if err2 != nil {
				t.Fatalf("second: %v", err2)
			}
			if s := p.Stats(); s.InUse != 1 || s.Total != 1 || s.Waiters != 0 {
				t.Fatalf("Stats = %+v", s)
			}
			c2.Release(true)
			if s := p.Stats(); s.Acquires != s.Reused+s.New {
				t.Fatalf("Acquires=%d Reused=%d New=%d", s.Acquires, s.Reused, s.New)
			}
		})
		if gaveBack >= 3 {
			return
		}
	}
	t.Fatalf("the give-back path ran %d times in 40 runs", gaveBack)
}

func TestBacklogFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = 1
			c.Limits.MaxWaiters = 2
		}))
		c := mustAcquire(t, p)
		w1 := acquireAsync(context.Background(), p, "w1")
		synctest.Wait()
		w2 := acquireAsync(context.Background(), p, "w2")
		synctest.Wait()
		_, err := p.Acquire(context.Background(), "w3")
		var ae *AcquireError
		if !errors.As(err, &ae) || !errors.Is(err, ErrExhausted) || ae.Snapshot.Waiters != 2 {
			t.Fatalf("err = %v, want *AcquireError ErrExhausted with 2 waiters", err)
		}
		if s := p.Stats(); s.BacklogRejections != 1 {
			t.Fatalf("BacklogRejections = %d", s.BacklogRejections)
		}
		c.Release(true)
		c1, _ := w1.result(t)
		c1.Release(true)
		c2, _ := w2.result(t)
		c2.Release(true)
	})
}

func TestMaxWaitersZeroStillWaitsForOwnDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		cfg := testConfig(func(c *Config) { c.Limits.MaxConnections = 1 })
		cfg.Limits.MaxWaiters = 0
		p := newTestPool(t, n, cfg)
		a := acquireAsync(context.Background(), p, "a")
		n.wantDial().finish(nil)
		c, err := a.result(t)
		if err != nil {
			t.Fatalf("Acquire with max_waiters=0 and room to dial: %v", err)
		}
		if _, err := p.Acquire(context.Background(), "b"); !errors.Is(err, ErrExhausted) {
			t.Fatalf("err = %v, want ErrExhausted", err)
		}
		c.Release(true)
	})
}

func TestIdleTimeoutKeepsMinIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = 3
			c.Limits.MinIdle = 1
			c.Lifecycle.IdleTimeout = 10 * time.Second
		}))
		synctest.Wait()
		cs := []*Conn{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
		for _, c := range cs {
			c.Release(true)
		}
		advance(9 * time.Second)
		if s := p.Stats(); s.Idle != 3 {
			t.Fatalf("Idle = %d after 9s, want 3", s.Idle)
		}
		advance(time.Second)
		s := p.Stats()
		if s.Idle != 1 || s.Closes["idle_timeout"] != 2 || n.open() != 1 {
			t.Fatalf("after idle_timeout: Idle=%d closes=%v open=%d, want 1 idle kept for min_idle", s.Idle, s.Closes, n.open())
		}
	})
}

func TestMaxLifetimeJitterSpreadsExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		const conns = 20
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = conns
			c.Lifecycle.MaxLifetime = 100 * time.Second
			c.Lifecycle.LifetimeJitter = 50 * time.Second
		}))
		var cs []*Conn
		for range conns {
			cs = append(cs, mustAcquire(t, p))
		}
		for _, c := range cs {
			c.Release(true)
		}
		opened := time.Now()
		advance(50*time.Second - time.Millisecond)
		if got := n.open(); got != conns {
			t.Fatalf("%d open before the jitter window, want %d", got, conns)
		}
		advance(50*time.Second + time.Millisecond)
		if got := p.Stats().Closes["max_lifetime"]; got != conns {
			t.Fatalf("max_lifetime closes = %d, want %d", got, conns)
		}
		distinct := map[time.Duration]bool{}
		for _, c := range n.allConns() {
			age := c.closedAt.Sub(opened)
			if age < 50*time.Second || age > 100*time.Second {
				t.Fatalf("closed at age %v, want within [50s, 100s]", age)
			}
			distinct[age.Truncate(time.Second)] = true
		}
		if len(distinct) < conns/2 {
			t.Fatalf("expiries fell in %d distinct seconds, want them spread", len(distinct))
		}
	})
}

func TestMaxLifetimeAtCheckout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Lifecycle.MaxLifetime = 10 * time.Second }))
		c := mustAcquire(t, p)
		advance(11 * time.Second) // expires while leased: never cut
		if c.NetConn().(*fakeConn).isClosed() {
			t.Fatal("lifetime closed a leased connection")
		}
		c.Release(true)
		if s := p.Stats(); s.Closes["max_lifetime"] != 1 || s.Total != 0 {
			t.Fatalf("release of an expired conn: closes=%v total=%d", s.Closes, s.Total)
		}
	})
}

func TestMaxIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 4; c.Limits.MaxIdle = 2 }))
		cs := []*Conn{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
		for _, c := range cs {
			c.Release(true)
		}
		if s := p.Stats(); s.Idle != 2 || s.Total != 2 || s.Closes["shrink"] != 2 {
			t.Fatalf("Stats = %+v, want 2 idle kept and 2 closed", s)
		}
	})
}

func TestMinIdlePrewarmAndRefill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 5; c.Limits.MinIdle = 3 }))
		synctest.Wait()
		if s := p.Stats(); s.Idle != 3 || s.Dials != 3 {
			t.Fatalf("prewarm: Idle=%d Dials=%d, want 3 3", s.Idle, s.Dials)
		}
		c := mustAcquire(t, p)
		synctest.Wait()
		if s := p.Stats(); s.Idle != 3 || s.InUse != 1 {
			t.Fatalf("after acquire: Idle=%d InUse=%d, want refill to 3", s.Idle, s.InUse)
		}
		c.Release(false)
		synctest.Wait()
		if s := p.Stats(); s.Idle != 3 || s.Total != 3 || s.Closes["dirty"] != 1 {
			t.Fatalf("after dirty release: %+v", s)
		}
	})
}

func TestDialBackoffAndCircuit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		n.setAuto(true, errRefused)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.AcquireTimeout = time.Minute }))
		start := time.Now()
		a := acquireAsync(context.Background(), p, "a")
		_, err := func() (*Conn, error) { <-a.done; return a.c, a.err }()
		var ae *AcquireError
		if !errors.As(err, &ae) || !errors.Is(err, ErrUnavailable) || !errors.Is(ae.LastDialErr, errRefused) {
			t.Fatalf("err = %v, want ErrUnavailable with the dial error once the circuit opens", err)
		}
		if n.dialCount() != circuitThreshold {
			t.Fatalf("dials = %d, want %d before the circuit opens", n.dialCount(), circuitThreshold)
		}
		// Backoff: each retry waits at least half of base*2^(k-1).
		for k := 1; k < len(n.dialLog); k++ {
			gap := n.dialLog[k].at.Sub(n.dialLog[k-1].at)
			if min := (dialBackoffBase << (k - 1)) / 2; gap < min {
				t.Fatalf("retry %d after %v, want >= %v", k, gap, min)
			}
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("circuit took %v to open", time.Since(start))
		}
		if p.Serving() {
			t.Fatal("Serving with the circuit open")
		}
		// Open circuit: fail fast, no dial, with RetryAfter.
		_, err = p.Acquire(context.Background(), "b")
		if !errors.As(err, &ae) || !errors.Is(err, ErrUnavailable) || ae.RetryAfter <= 0 {
			t.Fatalf("err = %v, want fast ErrUnavailable with RetryAfter", err)
		}
		if n.dialCount() != circuitThreshold {
			t.Fatal("an acquire dialed while the circuit was open")
		}
		if s := p.Stats(); !s.CircuitOpen || s.DialFailures != circuitThreshold || s.LastDialError == "" {
			t.Fatalf("Stats = %+v", s)
		}
		// The upstream comes back; after RetryAfter one acquire probes.
		n.setAuto(true, nil)
		advance(ae.RetryAfter)
		c, err := p.Acquire(context.Background(), "c")
		if err != nil {
			t.Fatalf("probe acquire: %v", err)
		}
		if !p.Serving() || p.Stats().LastDialError != "" {
			t.Fatal("circuit still open after a successful probe")
		}
		c.Release(true)
	})
}

func TestCircuitProbeIsSingle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		n.setAuto(true, errRefused)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 5 }))
		for range circuitThreshold {
			p.Acquire(context.Background(), "x")
		}
		for !p.Stats().CircuitOpen {
			advance(100 * time.Millisecond)
		}
		n.setAuto(false, nil)
		advance(dialBackoffMax)
		a := acquireAsync(context.Background(), p, "a") // starts the probe
		d := n.wantDial()
		if _, err := p.Acquire(context.Background(), "b"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("second acquire during the probe: %v, want ErrUnavailable", err)
		}
		n.wantNoDial()
		d.finish(nil)
		c, err := a.result(t)
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		c.Release(true)
	})
}

func TestCircuitClosesWithoutAcquires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		n.setAuto(true, errRefused)
		p := newTestPool(t, n, testConfig(nil))
		p.Acquire(context.Background(), "x")
		if p.Serving() {
			t.Fatal("Serving with the circuit open")
		}
		n.setAuto(true, nil)
		advance(2 * dialBackoffMax)
		if s := p.Stats(); !p.Serving() || s.Idle != 1 {
			t.Fatalf("after the upstream came back: serving=%v %+v", p.Serving(), s)
		}
	})
}

func TestMaxLeaseDurationRevokes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Lifecycle.MaxLeaseDuration = 30 * time.Second }))
		c := mustAcquire(t, p)
		advance(29 * time.Second)
		select {
		case <-c.Done():
			t.Fatal("revoked early")
		default:
		}
		advance(time.Second)
		select {
		case <-c.Done():
		default:
			t.Fatal("lease not revoked at max_lease_duration")
		}
		if !c.NetConn().(*fakeConn).isClosed() {
			t.Fatal("revoked connection not closed")
		}
		if r := c.CloseReason(); r != CloseMaxLeaseDuration {
			t.Fatalf("CloseReason = %v, want max_lease_duration", r)
		}
		s := p.Stats()
		if s.Closes["max_lease_duration"] != 1 || s.Closes["revoked"] != 0 || s.Total != 0 || s.InUse != 0 {
			t.Fatalf("Stats = %+v", s)
		}
		c.Release(true) // just accounts
		if s2 := p.Stats(); s2.Total != 0 || s2.Idle != 0 {
			t.Fatalf("release after revoke changed the pool: %+v", s2)
		}
	})
}

func TestRevoke(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(nil))
		c1, c2 := mustAcquire(t, p), mustAcquire(t, p)
		id := c1.Info().LeaseID
		if err := p.Revoke(id); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		<-c1.Done()
		if err := p.Revoke(id); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("second Revoke: %v, want ErrLeaseNotFound", err)
		}
		if err := p.Revoke("nope"); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("Revoke(nope): %v", err)
		}
		if ls := p.Leases(); len(ls) != 1 || ls[0].ID != c2.Info().LeaseID {
			t.Fatalf("Leases = %+v", ls)
		}
		c1.Release(true)
		c2.Release(true)
	})
}

func TestPauseResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.AcquireTimeout = 10 * time.Second }))
		mustAcquire(t, p).Release(true)
		p.Pause()
		if p.State() != StatePaused || p.Serving() {
			t.Fatal("not paused")
		}
		a := acquireAsync(context.Background(), p, "a")
		a.wantBlocked(t)
		advance(5 * time.Second)
		a.wantBlocked(t)
		p.Resume()
		c, err := a.result(t)
		if err != nil || !c.Info().Reused || c.Info().WaitTime != 5*time.Second {
			t.Fatalf("after Resume: (%v, %v)", c, err)
		}
		c.Release(true)
		// Paused time counts against acquire_timeout.
		p.Pause()
		b := acquireAsync(context.Background(), p, "b")
		advance(10 * time.Second)
		if _, err := b.result(t); !errors.Is(err, ErrAcquireTimeout) {
			t.Fatalf("paused acquire: %v, want ErrAcquireTimeout", err)
		}
	})
}

func TestDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 2 }))
		leased := mustAcquire(t, p)
		mustAcquire(t, p).Release(true)
		// A waiter queued behind a full pool fails when the drain starts.
		leased2 := mustAcquire(t, p)
		w := acquireAsync(context.Background(), p, "w")
		w.wantBlocked(t)
		p.Drain()
		if _, err := w.result(t); !errors.Is(err, ErrDraining) {
			t.Fatalf("queued acquire: %v, want ErrDraining", err)
		}
		if _, err := p.Acquire(context.Background(), "x"); !errors.Is(err, ErrDraining) {
			t.Fatalf("Acquire while draining: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := p.WaitDrained(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitDrained with leases: %v", err)
		}
		done := make(chan error)
		go func() { done <- p.WaitDrained(context.Background()) }()
		leased.Release(true)
		leased2.Release(true)
		if err := <-done; err != nil {
			t.Fatalf("WaitDrained: %v", err)
		}
		if s := p.Stats(); s.Total != 0 || s.Closes["drain"] != 2 {
			t.Fatalf("Stats after drain = %+v", s)
		}
		p.Resume()
		mustAcquire(t, p).Release(true)
	})
}

func TestReconfigureShrinkWhileLeased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		cfg := testConfig(func(c *Config) { c.Limits.MaxConnections = 4 })
		p := newTestPool(t, n, cfg)
		cs := []*Conn{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
		cs[3].Release(true)
		smaller := cfg
		smaller.Limits.MaxConnections, smaller.Limits.MaxIdle = 2, 2
		if r := p.Plan(smaller); r != (Retired{Idle: 1, Leased: 1}) {
			t.Fatalf("Plan = %+v, want 1 idle 1 leased", r)
		}
		if s := p.Stats(); s.Total != 4 {
			t.Fatal("Plan changed the pool")
		}
		r, err := p.Reconfigure(smaller)
		if err != nil || r != (Retired{Idle: 1, Leased: 1}) {
			t.Fatalf("Reconfigure = %+v, %v", r, err)
		}
		for _, c := range cs[:3] {
			if c.NetConn().(*fakeConn).isClosed() {
				t.Fatal("shrink cut a lease")
			}
		}
		cs[0].Release(true) // 3 > 2: closes
		cs[1].Release(true) // 2: kept
		s := p.Stats()
		if s.Total != 2 || s.Idle != 1 || s.Closes["shrink"] != 2 || s.Max != 2 {
			t.Fatalf("Stats = %+v", s)
		}
		cs[2].Release(true)
	})
}

func TestReconfigureGrowServesWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		cfg := testConfig(func(c *Config) { c.Limits.MaxConnections = 1 })
		p := newTestPool(t, n, cfg)
		c := mustAcquire(t, p)
		w := acquireAsync(context.Background(), p, "w")
		w.wantBlocked(t)
		bigger := cfg
		bigger.Limits.MaxConnections, bigger.Limits.MaxIdle = 2, 2
		if _, err := p.Reconfigure(bigger); err != nil {
			t.Fatal(err)
		}
		c2, err := w.result(t)
		if err != nil || c2 == c {
			t.Fatalf("waiter after grow: (%v, %v), want a new connection", c2, err)
		}
		c.Release(true)
		c2.Release(true)
	})
}

func TestGenerationBump(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		cfg := testConfig(nil)
		p := newTestPool(t, n, cfg)
		leased := mustAcquire(t, p)
		mustAcquire(t, p).Release(true)

		moved := cfg
		moved.Endpoints = []string{"10.0.0.2:6379"}
		if r := p.Plan(moved); r != (Retired{Idle: 1, Leased: 1}) {
			t.Fatalf("Plan = %+v", r)
		}
		if _, err := p.Reconfigure(moved); err != nil {
			t.Fatal(err)
		}
		if p.Generation() != 2 {
			t.Fatalf("Generation = %d, want 2", p.Generation())
		}
		fresh := mustAcquire(t, p)
		if fresh.Info().UpstreamAddr != "10.0.0.2:6379" || fresh.Info().Generation != 2 {
			t.Fatalf("new lease Info = %+v", fresh.Info())
		}
		done := make(chan error)
		go func() { done <- p.WaitGeneration(context.Background(), 2) }()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("WaitGeneration returned while a gen-1 lease is out")
		default:
		}
		leased.Release(true)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if s := p.Stats(); s.Closes["generation"] != 2 {
			t.Fatalf("generation closes = %d, want 2", s.Closes["generation"])
		}

		gen := p.Reconnect()
		fresh.Release(true)
		if gen != 3 || p.Stats().Closes["generation"] != 3 {
			t.Fatalf("Reconnect = %d, closes %v", gen, p.Stats().Closes)
		}
		if err := p.WaitGeneration(context.Background(), gen); err != nil {
			t.Fatal(err)
		}
	})
}

func TestSingleUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Reuse = SingleUse; c.Limits.MinIdle = 1 }))
		synctest.Wait()
		c := mustAcquire(t, p)
		c.Release(true)
		synctest.Wait()
		if s := p.Stats(); s.Closes["single_use"] != 1 || s.Idle != 1 || s.Dials != 2 {
			t.Fatalf("Stats = %+v, want the used conn closed and min_idle refilled", s)
		}
		if c2 := mustAcquire(t, p); c2 == c {
			t.Fatal("single-use connection reused")
		}
	})
}

func TestCloseFailsWaitersAndEndsLeases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 2 }))
		a := acquireAsync(context.Background(), p, "a")
		n.wantDial().finish(nil)
		c, _ := a.result(t)
		w := acquireAsync(context.Background(), p, "w")
		d := n.wantDial() // parked in flight
		_ = d
		p.Close()
		if _, err := w.result(t); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("waiter: %v, want ErrPoolClosed", err)
		}
		select {
		case <-c.Done():
		default:
			t.Fatal("lease's Done not closed by Close")
		}
		c.Release(true)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Acquire(context.Background(), "x"); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("Acquire after Close: %v", err)
		}
		if _, err := p.Reconfigure(p.Config()); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("Reconfigure after Close: %v", err)
		}
		if n.open() != 0 {
			t.Fatalf("%d connections open after Close", n.open())
		}
	})
}

func TestHealthCheckRedisPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		var healthy atomic.Bool
		healthy.Store(true)
		n.serve = func(server net.Conn) {
			buf := make([]byte, len(redisPing))
			for {
				if _, err := io.ReadFull(server, buf); err != nil {
					return
				}
				reply := "+PONG\r\n"
				if !healthy.Load() {
					reply = "-ERR no\r\n"
				}
				if _, err := server.Write([]byte(reply)); err != nil {
					return
				}
			}
		}
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.HealthCheck = HealthCheck{Kind: HealthRedisPing, Interval: 10 * time.Second, Timeout: time.Second}
			c.Limits.MinIdle = 2
		}))
		synctest.Wait()
		advance(25 * time.Second)
		if s := p.Stats(); s.Idle != 2 || len(s.Closes) != 0 {
			t.Fatalf("healthy: %+v", s)
		}
		healthy.Store(false)
		advance(10 * time.Second)
		if s := p.Stats(); s.Closes["unhealthy"] < 2 {
			t.Fatalf("unhealthy closes = %v", s.Closes)
		}
	})
}

// Health checks run on idle connections in place: a pool at min_idle
// dials nothing while they run, and still holds min_idle connections,
// whatever max_idle allows, after many intervals with no traffic (it
// used to dial a replacement for each connection under check, 2 -> 11 idle
// in 12 s). During a check the connection counts as idle.
func TestHealthCheckDoesNotOverDial(t *testing.T) {
	for _, kind := range []HealthCheckKind{HealthTCP, HealthRedisPing} {
		t.Run(kind.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := newFakeNet(t, true)
				gate := make(chan struct{}) // closed: PINGs are answered
				var openGate sync.Once
				t.Cleanup(func() { openGate.Do(func() { close(gate) }) })
				n.serve = func(server net.Conn) {
					buf := make([]byte, len(redisPing))
					for {
						if _, err := io.ReadFull(server, buf); err != nil {
							return
						}
						<-gate
						if _, err := server.Write(redisPong); err != nil {
							return
						}
					}
				}
				const interval = time.Second
				p := newTestPool(t, n, testConfig(func(c *Config) {
					c.HealthCheck = HealthCheck{Kind: kind, Interval: interval, Timeout: 500 * time.Millisecond}
					c.Limits.MinIdle = 2
					c.Limits.MaxConnections = 16 // max_idle defaults to it
				}))
				synctest.Wait()
				if kind == HealthRedisPing {
					// The first check is parked on its PING: the
					// connection under check still counts as idle.
					advance(interval)
					if s := p.Stats(); s.Idle != 2 || s.Total != 2 || s.Dialing != 0 || s.Dials != 2 {
						t.Fatalf("during a check: Idle=%d Total=%d Dialing=%d Dials=%d, want 2 2 0 2", s.Idle, s.Total, s.Dialing, s.Dials)
					}
				}
				openGate.Do(func() { close(gate) })
				for i := range 12 {
					advance(interval)
					if s := p.Stats(); s.Idle != 2 || s.Total != 2 || s.Dials != 2 {
						t.Fatalf("after %d intervals: Idle=%d Total=%d Dials=%d, want 2 2 2", i+1, s.Idle, s.Total, s.Dials)
					}
				}
				if got := n.open(); got != 2 {
					t.Fatalf("%d upstream connections open, want 2", got)
				}
			})
		})
	}
}

func TestHealthCheckTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		n.serve = func(server net.Conn) { io.Copy(io.Discard, server) } // never answers
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.HealthCheck = HealthCheck{Kind: HealthRedisPing, Interval: 10 * time.Second, Timeout: time.Second}
			c.Limits.MinIdle = 1
			c.Limits.MaxConnections = 1
		}))
		synctest.Wait()
		advance(11 * time.Second)
		if s := p.Stats(); s.Closes["unhealthy"] != 1 {
			t.Fatalf("closes = %v, want the silent conn closed after the probe timeout", s.Closes)
		}
	})
}

func TestDNSDepartedAddressRetires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		var m sync.Map
		m.Store("cache.internal", []string{"10.0.0.1"})
		cfg := testConfig(func(c *Config) {
			c.Endpoints = []string{"cache.internal:6379"}
			c.DNSRefresh = 10 * time.Second
		})
		p, err := NewPool("dns", cfg, Env{Dial: n.dial, Resolver: fakeResolver{&m}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		leased := mustAcquire(t, p)
		mustAcquire(t, p).Release(true)
		if leased.Info().UpstreamAddr != "10.0.0.1:6379" {
			t.Fatalf("dialed %s", leased.Info().UpstreamAddr)
		}
		m.Store("cache.internal", []string{"10.0.0.9"})
		advance(10 * time.Second)
		if s := p.Stats(); s.Idle != 0 || s.Closes["dns"] != 1 {
			t.Fatalf("after re-resolution: %+v", s)
		}
		leased.Release(true)
		if s := p.Stats(); s.Closes["dns"] != 2 || s.Total != 0 {
			t.Fatalf("leased departed conn not closed on release: %+v", s)
		}
		c := mustAcquire(t, p)
		if c.Info().UpstreamAddr != "10.0.0.9:6379" {
			t.Fatalf("new dial went to %s", c.Info().UpstreamAddr)
		}
		c.Release(true)
	})
}

func TestDialRoundRobin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Endpoints = []string{"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}
			c.Limits.MaxConnections = 6
		}))
		seen := map[string]int{}
		for range 6 {
			seen[mustAcquire(t, p).Info().UpstreamAddr]++
		}
		if len(seen) != 3 || seen["10.0.0.1:1"] != 2 {
			t.Fatalf("dials per address = %v, want 2 each", seen)
		}
	})
}

func TestChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(nil))
		ch := p.Changed()
		select {
		case <-ch:
			t.Fatal("Changed closed with no change")
		default:
		}
		p.Pause()
		select {
		case <-ch:
		default:
			t.Fatal("Changed not closed by Pause")
		}
	})
}
