package reliability_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestUnreachableAndBlackholedUpstreams: an upstream that refuses
// connections (closed port) and one that accepts but never answers (a TLS
// pool whose upstream never completes the handshake). For each:
//   - the first acquire fails within acquire_timeout, with ACQUIRE_TIMEOUT
//     or UPSTREAM_UNAVAILABLE and the last dial error in its metadata;
//   - the circuit opens and acquires then fail fast with
//     UPSTREAM_UNAVAILABLE and a RetryInfo delay;
//   - once the upstream is back, the circuit closes within one probe: by
//     the RetryInfo delay seen at that moment, plus the dial.
//
// Figures: time to fail, time to recover.
func TestUnreachableAndBlackholedUpstreams(t *testing.T) {
	const (
		acquireTimeout = 500 * time.Millisecond
		dialTimeout    = 200 * time.Millisecond
		slack          = time.Second // a loaded CI machine
	)
	cases := []struct {
		name    string
		dialErr string // in last_dial_error
		setup   func(t *testing.T) (*upstream, poolmgr.TLSConfig, func())
	}{
		{
			name:    "unreachable",
			dialErr: "refused",
			setup: func(t *testing.T) (*upstream, poolmgr.TLSConfig, func()) {
				up := startUpstream(t, "127.0.0.1:0", echoLines)
				up.kill() // the port is closed
				return up, poolmgr.TLSConfig{}, func() { up.restart(t) }
			},
		},
		{
			name:    "blackholed",
			dialErr: "tls handshake",
			setup: func(t *testing.T) (*upstream, poolmgr.TLSConfig, func()) {
				self := testkit.SelfSigned(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "reliability upstream"}, Hosts: []string{"127.0.0.1"}, Server: true})
				cert, caPEM := self.TLS, string(self.CertPEM)
				up := startUpstream(t, "127.0.0.1:0", blackhole)
				restore := func() {
					up.kill()
					up.restartWith(t, func(ln net.Listener) net.Listener {
						return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
					}, echoLines)
				}
				return up, poolmgr.TLSConfig{Enabled: true, CAPEM: caPEM}, restore
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up, tlsCfg, restore := tc.setup(t)
			srv := startServer(t, srvOptions{})
			srv.create(t, "down", poolmgr.Config{
				Endpoints: []string{up.addr},
				TLS:       tlsCfg,
				Limits:    poolmgr.Limits{MaxConnections: 4, AcquireTimeout: acquireTimeout, DialTimeout: dialTimeout},
			})
			c := newClient(t, srv.addr)
			ctx := testCtx(t)

			// 1. The first acquire fails within acquire_timeout.
			start := time.Now()
			_, err := c.Lease(ctx, "down")
			timeToFail := time.Since(start)
			var e *client.Error
			if !errors.As(err, &e) || !errors.Is(err, client.ErrAcquireTimeout) && !errors.Is(err, client.ErrUpstreamUnavailable) {
				t.Fatalf("first lease: %v, want ACQUIRE_TIMEOUT or UPSTREAM_UNAVAILABLE", err)
			}
			if !strings.Contains(e.Metadata["last_dial_error"], tc.dialErr) {
				t.Errorf("first lease: metadata %v, want last_dial_error with %q", e.Metadata, tc.dialErr)
			}
			if timeToFail > acquireTimeout+slack {
				t.Errorf("first lease failed after %v, acquire_timeout is %v", timeToFail, acquireTimeout)
			}

			// 2. Acquires drive dials until the circuit opens; then
			// they fail fast with UPSTREAM_UNAVAILABLE.
			open := time.Now()
			for i := 0; ; i++ {
				_, err := c.Lease(ctx, "down")
				if errors.Is(err, client.ErrUpstreamUnavailable) && stats(t, srv, "down").GetCircuitOpen() {
					break
				}
				if err == nil || i == 20 {
					t.Fatalf("lease %d: %v; the circuit did not open", i, err)
				}
			}
			timeToOpen := time.Since(open)
			var fast []time.Duration
			var retryAfter time.Duration
			for range 10 {
				s := time.Now()
				_, err := c.Lease(ctx, "down")
				fast = append(fast, time.Since(s))
				if !errors.As(err, &e) || !errors.Is(err, client.ErrUpstreamUnavailable) || e.RetryAfter <= 0 {
					t.Fatalf("lease with the circuit open: %v, want UPSTREAM_UNAVAILABLE with RetryInfo", err)
				}
				retryAfter = e.RetryAfter
			}
			if p50 := percentile(fast, 50); p50 > acquireTimeout/2 {
				t.Errorf("fail-fast median %v, want well below acquire_timeout %v", p50, acquireTimeout)
			}

			// 3. The upstream comes back: the pool's own probe closes
			// the circuit by the next probe.
			restore()
			dials0 := stats(t, srv, "down").GetDials()
			timeToRecover := testkit.WaitWithin(t, 15*time.Second, "circuit closed", func() bool {
				return !stats(t, srv, "down").GetCircuitOpen()
			})
			st := stats(t, srv, "down")
			if bound := retryAfter + dialTimeout + slack; timeToRecover > bound {
				t.Errorf("recovered after %v; the next probe was due in %v (bound %v)", timeToRecover, retryAfter, bound)
			}
			if !st.GetServing() {
				t.Errorf("circuit closed but not serving: %v", st)
			}
			conn, err := c.Lease(ctx, "down")
			if err != nil {
				t.Fatalf("lease after recovery: %v", err)
			}
			if got, err := roundTrip(conn, bufio.NewReader(conn), "back\n"); err != nil || got != "back\n" {
				t.Fatalf("round trip after recovery: %q, %v", got, err)
			}
			conn.Close()
			t.Logf("FIGURE: %s upstream: time to fail %s (acquire_timeout %v), circuit open after %s more, fail-fast p50 %s p99 %s, time to recover %s (next probe was due in %s; %d probe dials after the restore)",
				tc.name, secs(timeToFail), acquireTimeout, secs(timeToOpen), secs(percentile(fast, 50)), secs(percentile(fast, 99)),
				secs(timeToRecover), secs(retryAfter), st.GetDials()-dials0)
		})
	}
}

// stats returns a pool's stats over the API.
func stats(t testing.TB, srv *inproc, pool string) *poolv1.PoolStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := srv.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/" + pool})
	if err != nil {
		t.Fatalf("GetPoolStats: %v", err)
	}
	return st
}

// blackhole accepts and never answers: the TLS handshake of a dial hangs
// until dial_timeout.
func blackhole(_ *upstream, c net.Conn, _ int64) {
	_, _ = io.Copy(io.Discard, c)
}
