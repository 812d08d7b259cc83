package server_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/poolplane/poolplane/client"
)

// TestClientCloseReuses is TestGoRedisCloseReuses and
// TestHTTPTransportCloseIdleNotReused for a short-lived program: each round
// uses its own SDK Client and closes it right after go-redis or the
// Transport closed its connections, as a program does on exit. Client.Close
// must not cut the releases it just queued: a lease whose stream ends before
// the server read its release is abandoned, and its connection closed.
func TestClientCloseReuses(t *testing.T) {
	t.Run("go-redis", func(t *testing.T) {
		addr := startRedis(t)
		e := startReuseEnv(t, "redis", addr)
		ctx := ctxSDK(t)
		for round := range 4 {
			c := newRoundClient(t, e)
			goRedisRound(ctx, t, c, 3)
			_ = c.Close()
			checkReused(ctx, t, e.c, "redis", round)
		}
	})
	t.Run("net/http", func(t *testing.T) {
		api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(r.URL.Path))
		}))
		t.Cleanup(api.Close)
		e := startReuseEnv(t, "api", api.Listener.Addr().String())
		ctx := ctxSDK(t)
		for round := range 4 {
			c := newRoundClient(t, e)
			httpRound(t, c)
			_ = c.Close()
			// Released (not abandoned) and closed for the RAW rule, as in
			// TestHTTPTransportCloseIdleNotReused: an abandoned lease would
			// count as dirty too, so the releases are checked by the
			// server's lease count going to zero with no stream left.
			checkNotReused(ctx, t, e.c, "api", round)
		}
	})
}

// newRoundClient returns a new Client of e's server.
func newRoundClient(t *testing.T, e *sdkEnv) *client.Client {
	t.Helper()
	c, err := client.New(e.addr, client.WithInsecure(), client.WithClientName("short-lived"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
