package engine

import (
	"context"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Dials count per configured endpoint: started, failed and opened, and the
// counters of an endpoint removed from the configuration are forgotten.
func TestStatsPerEndpointDials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Endpoints = []string{"10.0.0.1:1", "10.0.0.2:1"}
			c.Limits.MaxConnections = 4
		}))
		a := acquireAsync(context.Background(), p, "a")
		n.wantDial().finish(nil) // 10.0.0.1:1 opens
		c, err := a.result(t)
		if err != nil {
			t.Fatal(err)
		}
		b := acquireAsync(context.Background(), p, "b")
		n.wantDial().finish(errRefused) // 10.0.0.2:1 fails
		synctest.Wait()
		s := p.Stats()
		want := []EndpointStats{
			{Endpoint: "10.0.0.1:1", Dials: 1, Opened: 1},
			{Endpoint: "10.0.0.2:1", Dials: 1, DialFailures: 1},
		}
		if !slices.Equal(s.Endpoints, want) || s.Dials != 2 || s.DialFailures != 1 || s.Opened != 1 {
			t.Fatalf("Endpoints = %+v Dials=%d DialFailures=%d Opened=%d, want %+v 2 1 1", s.Endpoints, s.Dials, s.DialFailures, s.Opened, want)
		}
		// The failed acquire's retry, after the backoff, goes round to the
		// first endpoint again.
		advance(time.Second)
		n.wantDial().finish(nil)
		if _, err := b.result(t); err != nil {
			t.Fatal(err)
		}
		c.Release(true)

		cfg := p.Config()
		cfg.Endpoints = []string{"10.0.0.2:1", "10.0.0.3:1"}
		if _, err := p.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
		s = p.Stats()
		want = []EndpointStats{
			{Endpoint: "10.0.0.2:1", Dials: 1, DialFailures: 1},
			{Endpoint: "10.0.0.3:1"},
		}
		if !slices.Equal(s.Endpoints, want) {
			t.Fatalf("after the endpoint change: %+v, want %+v", s.Endpoints, want)
		}
	})
}

// Acquires count by the connection that served them; a prewarmed
// connection's first lease is New although no acquire dialed it, and
// Opened counts it when its dial succeeds.
func TestStatsAcquiresAndOpened(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, true)
		p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MinIdle = 2 }))
		synctest.Wait()
		if s := p.Stats(); s.Opened != 2 || s.Acquires != 0 {
			t.Fatalf("after prewarm: Opened=%d Acquires=%d, want 2 0", s.Opened, s.Acquires)
		}
		mustAcquire(t, p).Release(true)
		mustAcquire(t, p).Release(true)
		if s := p.Stats(); s.Opened != 2 || s.Acquires != 2 || s.New != 1 || s.Reused != 1 {
			t.Fatalf("Opened=%d Acquires=%d New=%d Reused=%d, want 2 2 1 1", s.Opened, s.Acquires, s.New, s.Reused)
		}
	})
}

// OldestWait is the age of the longest-queued acquire, read through the
// pool's clock, and 0 once no one waits.
func TestStatsOldestWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet(t, false)
		p := newTestPool(t, n, testConfig(func(c *Config) {
			c.Limits.MaxConnections = 1
			c.Limits.AcquireTimeout = time.Minute
			c.Limits.DialTimeout = time.Minute
		}))
		if s := p.Stats(); s.OldestWait != 0 {
			t.Fatalf("OldestWait = %v with no one queued", s.OldestWait)
		}
		a := acquireAsync(context.Background(), p, "a")
		d := n.wantDial()
		advance(3 * time.Second)
		b := acquireAsync(context.Background(), p, "b")
		advance(2 * time.Second)
		if s := p.Stats(); s.OldestWait != 5*time.Second || s.Waiters != 2 {
			t.Fatalf("OldestWait=%v Waiters=%d, want 5s 2", s.OldestWait, s.Waiters)
		}
		d.finish(nil)
		c, err := a.result(t)
		if err != nil {
			t.Fatal(err)
		}
		if s := p.Stats(); s.OldestWait != 2*time.Second {
			t.Fatalf("OldestWait = %v, want 2s (b's)", s.OldestWait)
		}
		c.Release(true)
		c, err = b.result(t)
		if err != nil {
			t.Fatal(err)
		}
		c.Release(true)
		if s := p.Stats(); s.OldestWait != 0 {
			t.Fatalf("OldestWait = %v, want 0", s.OldestWait)
		}
	})
}

// Health checks count by outcome.
func TestStatsHealthChecks(t *testing.T) {
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
			c.Limits.MinIdle = 1
			c.Limits.MaxConnections = 1
		}))
		synctest.Wait()
		advance(10 * time.Second)
		if s := p.Stats(); s.HealthChecks != 1 || s.HealthFailures != 0 {
			t.Fatalf("HealthChecks=%d HealthFailures=%d, want 1 0", s.HealthChecks, s.HealthFailures)
		}
		healthy.Store(false)
		advance(10 * time.Second)
		if s := p.Stats(); s.HealthChecks != 2 || s.HealthFailures != 1 || s.Closes["unhealthy"] != 1 {
			t.Fatalf("HealthChecks=%d HealthFailures=%d closes=%v, want 2 1 unhealthy:1", s.HealthChecks, s.HealthFailures, s.Closes)
		}
	})
}

func TestCloseReasonsNameEveryReason(t *testing.T) {
	names := CloseReasons()
	if len(names) != int(numCloseReasons) {
		t.Fatalf("%d names for %d reasons", len(names), numCloseReasons)
	}
	for i, name := range names {
		if name == "" || name != CloseReason(i).String() {
			t.Fatalf("reason %d: name %q, String %q", i, name, CloseReason(i).String())
		}
	}
}
