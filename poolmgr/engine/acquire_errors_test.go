package engine

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

// An upstream refused by the policy at dial time fails the acquire at once
// with ErrUpstreamNotAllowed (not retryable), never with ErrUnavailable:
// neither the backoff between refused dials nor the circuit they open turns
// it into an outage. Nothing reaches the network.
func TestDialRefusalIsNotAllowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		env := Env{Dial: n.dial, Resolver: fakeResolver{}, Logger: slog.New(slog.DiscardHandler),
			Upstreams: mustAllowlist(t, "192.168.0.0/16")} // not 10.0.0.1
		p, err := NewPool("refused", testConfig(func(c *Config) { c.Limits.AcquireTimeout = time.Minute }), env)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })

		wantRefused := func(what string, err error) {
			t.Helper()
			var ae *AcquireError
			if !errors.As(err, &ae) || !errors.Is(err, ErrUpstreamNotAllowed) || errors.Is(err, ErrUnavailable) ||
				!errors.Is(ae.LastDialErr, ErrUpstreamNotAllowed) || ae.RetryAfter != 0 {
				t.Fatalf("%s: %v, want *AcquireError ErrUpstreamNotAllowed with the refused dial and no RetryAfter", what, err)
			}
		}
		start := time.Now()
		_, err = p.Acquire(context.Background(), "a")
		wantRefused("first acquire", err)
		if waited := time.Since(start); waited != 0 {
			t.Fatalf("first acquire failed after %v, want at once", waited)
		}
		// Later acquires wait out the backoff, then are refused again,
		// until the circuit opens; then they fail fast, still refused.
		for i := range circuitThreshold + 2 {
			_, err := p.Acquire(context.Background(), "b")
			wantRefused("acquire "+string(rune('1'+i)), err)
		}
		if s := p.Stats(); !s.CircuitOpen {
			t.Fatalf("circuit closed after %d refusals", s.DialFailures)
		}
		start = time.Now()
		_, err = p.Acquire(context.Background(), "c")
		wantRefused("acquire with the circuit open", err)
		if waited := time.Since(start); waited != 0 {
			t.Fatalf("acquire with the circuit open waited %v", waited)
		}
		if got := n.dialCount(); got != 0 {
			t.Fatalf("%d dials reached the network", got)
		}
	})
}

// Acquires refused by a draining pool, at once or queued when the drain
// starts, carry the pool's state.
func TestDrainingErrorCarriesSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MaxConnections = 1 }))
		held := mustAcquire(t, p)
		w := acquireAsync(context.Background(), p, "w")
		w.wantBlocked(t)
		p.Drain()
		_, queued := w.result(t)
		_, direct := p.Acquire(context.Background(), "x")
		for what, err := range map[string]error{"queued": queued, "direct": direct} {
			var ae *AcquireError
			if !errors.As(err, &ae) || !errors.Is(err, ErrDraining) || ae.Pool != "test" ||
				ae.Snapshot.Max != 1 || ae.Snapshot.Total != 1 || ae.Snapshot.InUse != 1 {
				t.Fatalf("%s acquire: %#v, want *AcquireError ErrDraining with 1 in use of 1", what, err)
			}
		}
		held.Release(true)
	})
}
