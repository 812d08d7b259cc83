package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// flipResolver resolves one name to one address that the test can move.
type flipResolver struct {
	name string
	ip   atomic.Pointer[string]
}

func (r *flipResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	if host != r.name {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return []string{*r.ip.Load()}, nil
}

func (r *flipResolver) set(ip string) { r.ip.Store(&ip) }

// TestDNSFlip: a pool's endpoint name moves from 127.0.0.2 to 127.0.0.3
// (an injected resolver; both are loopback listeners on the same port)
// while 8 clients hold leases of up to 300ms. Every connection to the old
// address is closed within dns_refresh plus the longest lease, no lease
// fails, and later leases go to the new address.
// Figure: seconds until no old-address connection remains.
func TestDNSFlip(t *testing.T) {
	const (
		dnsRefresh = time.Second
		maxHold    = 300 * time.Millisecond
		clients    = 8
		slack      = time.Second
	)
	oldUp, newUp := twoLoopbackUpstreams(t)
	_, port, _ := net.SplitHostPort(oldUp.addr)
	res := &flipResolver{name: "upstream.reliability.test"}
	res.set("127.0.0.2")
	srv := startServer(t, srvOptions{env: poolmgr.Env{Resolver: res}})
	srv.create(t, "flip", poolmgr.Config{
		Endpoints:  []string{net.JoinHostPort(res.name, port)},
		Limits:     poolmgr.Limits{MaxConnections: clients, AcquireTimeout: 10 * time.Second},
		DNSRefresh: dnsRefresh,
	})

	var (
		flippedAt   atomic.Int64 // unix nanos of the flip; 0 before
		longest     atomic.Int64 // the longest lease held, in ns
		requests    atomic.Int64
		lateOld     atomic.Int64 // leases of the old address granted after the bound
		mu          sync.Mutex   // protects firstErr
		firstErr    error
		ctx, cancel = context.WithCancel(testCtx(t))
		wg          sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	for i := range clients {
		c := newClient(t, srv.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				conn, err := c.Lease(ctx, "flip")
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("lease: %w", err))
					}
					return
				}
				held := time.Now()
				if f := flippedAt.Load(); f != 0 && held.Sub(time.Unix(0, f)) > dnsRefresh+slack && conn.Info().UpstreamAddr == oldUp.addr {
					lateOld.Add(1)
				}
				br := bufio.NewReader(conn)
				line := "a " + strconv.Itoa(i) + "." + strconv.Itoa(n) + "\n"
				_, err = roundTrip(conn, br, line)
				pause(ctx, rand.N(maxHold))
				if err == nil {
					_, err = roundTrip(conn, br, line)
				}
				conn.Close()
				if d := time.Since(held); int64(d) > longest.Load() {
					longest.Store(int64(d)) // racy max: close enough for a bound
				}
				if err != nil && ctx.Err() == nil {
					fail(fmt.Errorf("round trip on %s: %w", conn.Info().UpstreamAddr, err))
				}
				requests.Add(1)
			}
		}()
	}

	testkit.WaitWithin(t, 10*time.Second, "connections to the old address", func() bool { return oldUp.open.Load() >= clients/2 })
	flip := time.Now()
	flippedAt.Store(flip.UnixNano())
	res.set("127.0.0.3")
	retired := testkit.WaitWithin(t, 20*time.Second, "every old-address connection closed", func() bool { return oldUp.open.Load() == 0 })
	testkit.WaitWithin(t, 10*time.Second, "leases on the new address", func() bool { return newUp.accepted.Load() > 0 })
	// Keep the load on for one more refresh: nothing goes back.
	pause(ctx, dnsRefresh)
	cancel()
	wg.Wait()

	if firstErr != nil {
		t.Errorf("a lease failed during the flip: %v", firstErr)
	}
	bound := dnsRefresh + time.Duration(longest.Load()) + slack
	if retired > bound {
		t.Errorf("old-address connections closed after %v, want within dns_refresh %v + longest lease %v (+%v)", retired, dnsRefresh, time.Duration(longest.Load()), slack)
	}
	if n := oldUp.open.Load(); n != 0 {
		t.Errorf("%d connections to the old address after the flip", n)
	}
	if n := lateOld.Load(); n != 0 {
		t.Errorf("%d leases granted on the old address more than dns_refresh after the flip", n)
	}
	t.Logf("FIGURE: DNS flip: no old-address connection %s after the flip (dns_refresh %v, longest lease %s); %d leases, 0 failed; %d old-address connections had been opened",
		secs(retired), dnsRefresh, secs(time.Duration(longest.Load())), requests.Load(), oldUp.accepted.Load())
}

// twoLoopbackUpstreams starts line echo upstreams on 127.0.0.2 and
// 127.0.0.3 with the same port.
func twoLoopbackUpstreams(t *testing.T) (*upstream, *upstream) {
	t.Helper()
	for range 20 {
		ln2, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Skipf("no 127.0.0.2 loopback: %v", err)
		}
		_, port, _ := net.SplitHostPort(ln2.Addr().String())
		ln3, err := net.Listen("tcp", net.JoinHostPort("127.0.0.3", port))
		if err != nil {
			ln2.Close() // port taken on .3: try another
			continue
		}
		return upstreamOn(t, ln2, echoLines), upstreamOn(t, ln3, echoLines)
	}
	t.Fatal("no port free on both 127.0.0.2 and 127.0.0.3")
	return nil, nil
}
