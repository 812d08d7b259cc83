package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// reusePoolSize is the go-redis PoolSize and the net/http MaxConnsPerHost of
// the reuse tests; their pools allow twice as many connections, so a lease
// that is not reused shows as an extra dial instead of a wait.
const reusePoolSize = 4

// startReuseEnv starts a server and an SDK client with pool id in front of
// endpoint, allowing twice reusePoolSize connections.
func startReuseEnv(t *testing.T, id, endpoint string) *sdkEnv {
	t.Helper()
	e := startSDKEnv(t)
	e.createPool(t, id, poolmgr.Config{
		Endpoints: []string{endpoint},
		Limits:    poolmgr.Limits{MaxConnections: 2 * reusePoolSize},
	})
	return e
}

// TestGoRedisCloseReuses closes a go-redis client (its pool closes every
// connection, each a lease) round after round: the leases are released
// reusable, so the pool dials at most PoolSize upstream connections in all
// and closes none. Rounds alternate RESP3 (go-redis's default) and RESP2:
// go-redis sends HELLO on every new connection, so a connection a RESP3
// client used serves a RESP2 client in RESP2, and the reverse.
func TestGoRedisCloseReuses(t *testing.T) {
	addr := startRedis(t)
	e := startReuseEnv(t, "redis", addr)
	ctx := ctxSDK(t)
	for round := range 4 {
		goRedisRound(ctx, t, e.c, 3-round%2)
		checkReused(ctx, t, e.c, "redis", round)
	}
}

// TestHTTPTransportCloseIdleNotReused is TestGoRedisCloseReuses for
// net/http on a pool without protocol knowledge: net/http closes every
// connection, idle or with a response still coming (a cancelled request),
// under a Read of its own, so the SDK cannot tell that an exchange is
// complete and the pool never reuses the connection: each round dials
// afresh and closes what it dialed as dirty. No response can reach the
// next lease.
func TestHTTPTransportCloseIdleNotReused(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.Path)
	}))
	t.Cleanup(api.Close)
	e := startReuseEnv(t, "api", api.Listener.Addr().String())
	ctx := ctxSDK(t)
	for round := range 4 {
		httpRound(t, e.c)
		checkNotReused(ctx, t, e.c, "api", round)
	}
}

// goRedisRound runs a go-redis client speaking RESP protocol over pool
// "redis" of c: reusePoolSize goroutines of commands, then Close.
func goRedisRound(ctx context.Context, t *testing.T, c *client.Client, protocol int) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr:     "redis.pool", // unused: the Dialer picks the pool
		Dialer:   c.Dialer("redis"),
		PoolSize: reusePoolSize,
		Protocol: protocol,
	})
	defer func() { _ = rdb.Close() }()
	var wg sync.WaitGroup
	for g := range reusePoolSize {
		wg.Go(func() {
			key := "reuse" + strconv.Itoa(g)
			for i := range 50 {
				if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
					t.Errorf("SET: %v", err)
					return
				}
				if v, err := rdb.Get(ctx, key).Int(); err != nil || v != i {
					t.Errorf("GET %s = %d, %v; want %d", key, v, err, i)
					return
				}
			}
			info, err := rdb.Do(ctx, "CLIENT", "INFO").Text()
			if want := " resp=" + strconv.Itoa(protocol); err != nil || !strings.Contains(info, want) {
				t.Errorf("CLIENT INFO = %q, %v; want %q", info, err, want)
			}
		})
	}
	wg.Wait()
}

// httpRound sends requests over pool "api" of c from reusePoolSize
// goroutines, then closes the Transport's idle connections.
func httpRound(t *testing.T, c *client.Client) {
	t.Helper()
	tr := &http.Transport{DialContext: c.Dialer("api"), MaxConnsPerHost: reusePoolSize, MaxIdleConnsPerHost: reusePoolSize}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	for g := range reusePoolSize {
		wg.Go(func() {
			for i := range 20 {
				path := fmt.Sprintf("/%d/%d", g, i)
				resp, err := hc.Get("http://api" + path)
				if err != nil {
					t.Errorf("GET %s: %v", path, err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if err != nil || string(body) != path {
					t.Errorf("GET %s = %q, %v", path, body, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// releasedStats waits until pool has no lease left and no dial under way,
// logs its stats and returns them.
func releasedStats(ctx context.Context, t *testing.T, c *client.Client, pool string, round int) *poolv1.PoolStats {
	t.Helper()
	var st *poolv1.PoolStats
	testkit.WaitFor(t, "every lease of "+pool+" to be released", func() bool {
		var err error
		st, err = c.PoolStats(ctx, pool)
		return err == nil && st.GetInUse() == 0 && st.GetDialing() == 0
	})
	t.Logf("round %d: %d dials, %d acquires, %d reused, closes %v", round, st.GetDials(), st.GetAcquires(), st.GetReused(), st.GetCloses())
	return st
}

// checkReused waits until pool has no lease left, then fails unless the
// pool dialed at most reusePoolSize connections since it was created and
// closed none: every released lease was reused.
func checkReused(ctx context.Context, t *testing.T, c *client.Client, pool string, round int) {
	t.Helper()
	st := releasedStats(ctx, t, c, pool, round)
	if st.GetDials() > reusePoolSize || len(st.GetCloses()) > 0 {
		t.Errorf("round %d: %d dials for %d connections at a time, closes %v: released connections were not reused",
			round, st.GetDials(), reusePoolSize, st.GetCloses())
	}
}

// checkNotReused waits until pool has no lease left, then fails unless
// net/http's closes were closes: at most reusePoolSize dials a round, and
// the connections net/http closed under its reader closed as dirty, not
// reused (a connection it closed before its reader started may be reused:
// no request went out on it).
func checkNotReused(ctx context.Context, t *testing.T, c *client.Client, pool string, round int) {
	t.Helper()
	st := releasedStats(ctx, t, c, pool, round)
	dirty := st.GetCloses()["dirty"]
	if st.GetDials() > uint64((round+1)*reusePoolSize) || dirty < uint64(round+1) || len(st.GetCloses()) != 1 {
		t.Errorf("round %d: %d dials, closes %v; want at most %d dials, closed as dirty",
			round, st.GetDials(), st.GetCloses(), (round+1)*reusePoolSize)
	}
}
