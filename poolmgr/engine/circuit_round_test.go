package engine

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestConcurrentDialFailuresCountOnce: a burst of dials started together
// (one per waiter) that all fail is one failed round, not one per dial: it
// must neither open the circuit (failing every waiter with ErrUnavailable)
// nor escalate the backoff past its first step. An upstream that restarts
// within acquire_timeout then serves every waiter. Regression: 32 waiters
// whose dials were refused once opened the circuit at once, with a backoff
// of up to 5s.
func TestConcurrentDialFailuresCountOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		const waiters = 2 * circuitThreshold
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = waiters
			c.Limits.AcquireTimeout = time.Minute
		}))
		as := make([]*asyncAcquire, waiters)
		for i := range as {
			as[i] = acquireAsync(context.Background(), p, "w")
		}
		synctest.Wait()
		dials := make([]*fakeDial, waiters)
		for i := range dials {
			dials[i] = n.wantDial()
		}
		for _, d := range dials {
			d.finish(errRefused) // the upstream is restarting
		}
		synctest.Wait()
		s := p.Stats()
		if s.CircuitOpen {
			t.Fatalf("%d concurrent refused dials opened the circuit", waiters)
		}
		if s.DialFailures != waiters {
			t.Fatalf("DialFailures = %d, want %d", s.DialFailures, waiters)
		}
		for _, a := range as {
			a.wantBlocked(t)
		}
		// The next round comes after the first backoff step at most.
		n.setAuto(true, nil)
		advance(dialBackoffBase)
		for _, a := range as {
			c, err := a.result(t)
			if err != nil {
				t.Fatalf("waiter after the upstream came back: %v", err)
			}
			c.Release(true)
		}
	})
}
