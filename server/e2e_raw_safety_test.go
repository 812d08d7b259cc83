package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestRawPoolNetHTTPCancelNoReplyHandedOver: net/http cancelling a request
// before or during its response closes the lease under its own reader; on
// a RAW pool of one connection that connection is closed, so the late
// response never reaches the next request.
func TestRawPoolNetHTTPCancelNoReplyHandedOver(t *testing.T) {
	gate := make(chan struct{})
	arrived := make(chan struct{}, 1) // a slow handler waits at the gate
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow-head":
			arrived <- struct{}{}
			<-gate
			fmt.Fprint(w, "late "+r.URL.Query().Get("n"))
		case "/slow-body":
			w.Header().Set("Content-Length", "20")
			fmt.Fprint(w, "first half")
			w.(http.Flusher).Flush()
			arrived <- struct{}{}
			<-gate
			fmt.Fprint(w, "secondhalf")
		default:
			fmt.Fprint(w, "fast "+r.URL.Query().Get("n"))
		}
	}))
	t.Cleanup(api.Close)
	e := startSDKEnv(t)
	e.createPool(t, "api", poolmgr.Config{
		Endpoints: []string{api.Listener.Addr().String()},
		Limits:    poolmgr.Limits{MaxConnections: 1},
	})
	tr := &http.Transport{DialContext: e.c.Dialer("api")}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	const trials = 10
	for i := range trials {
		for _, path := range []string{"/slow-head", "/slow-body"} {
			ctx, cancel := context.WithCancel(ctxSDK(t))
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://api%s?n=%d", path, i), nil)
			done := make(chan error, 1)
			go func() {
				resp, err := hc.Do(req)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					_ = resp.Body.Close()
				}
				done <- err
			}()
			// The handler has the request and sent nothing (slow-head) or
			// half the body (slow-body): cancel now.
			testkit.Recv(t, arrived)
			cancel()
			if err := testkit.Recv(t, done); !errors.Is(err, context.Canceled) {
				t.Fatalf("trial %d %s: cancelled request = %v", i, path, err)
			}
			gate <- struct{}{} // the upstream now sends the rest
			// The next request must read its own response.
			resp, err := hc.Get(fmt.Sprintf("http://api/fast?n=%d", i))
			if err != nil {
				t.Fatalf("trial %d %s: next request: %v", i, path, err)
			}
			b, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if want := fmt.Sprintf("fast %d", i); err != nil || string(b) != want {
				t.Fatalf("trial %d %s: next request read %q, %v; want %q", i, path, b, err, want)
			}
			tr.CloseIdleConnections()
		}
	}
	st, err := e.c.PoolStats(ctxSDK(t), "api")
	if err != nil {
		t.Fatal(err)
	}
	// A connection net/http closed before its reader started may be
	// reused (no request went out on it); the responses above show that
	// none that carried a cancelled request was.
	t.Logf("%d trials of each cancel: %d dials, %d reused, closes %v", trials, st.GetDials(), st.GetReused(), st.GetCloses())
	if st.GetCloses()["dirty"] < 2*trials {
		t.Fatalf("closes %v: want at least the %d cancelled requests' connections closed", st.GetCloses(), 2*trials)
	}
}

// TestRawPoolGoRedisTimeoutNoReplyHandedOver: go-redis timing out on a
// blocking command closes its connection; on a RAW pool of one connection
// that connection is closed, so the next client never gets the reply meant
// for the abandoned command, and the job stays queued.
func TestRawPoolGoRedisTimeoutNoReplyHandedOver(t *testing.T) {
	addr := startRedis(t)
	e := startSDKEnv(t)
	e.createPool(t, "redis", poolmgr.Config{
		Endpoints: []string{addr},
		Limits:    poolmgr.Limits{MaxConnections: 1},
	})
	direct := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
	t.Cleanup(func() { _ = direct.Close() })
	ctx := ctxSDK(t)
	const trials = 10
	for i := range trials {
		a := redis.NewClient(&redis.Options{Addr: "pool", Dialer: e.c.Dialer("redis"), Protocol: 2,
			PoolSize: 1, MaxRetries: -1, ContextTimeoutEnabled: true})
		actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := a.BLPop(actx, 5*time.Second, "jobs").Err()
		cancel()
		var ne interface{ Timeout() bool }
		if !errors.Is(err, context.DeadlineExceeded) && (!errors.As(err, &ne) || !ne.Timeout()) {
			t.Fatalf("trial %d: BLPOP with a 100 ms deadline = %v; want a timeout", i, err)
		}
		_ = a.Close()
		if err := direct.RPush(ctx, "jobs", fmt.Sprint("job ", i)).Err(); err != nil {
			t.Fatal(err)
		}
		if err := direct.Set(ctx, "key", fmt.Sprint("value ", i), 0).Err(); err != nil {
			t.Fatal(err)
		}
		b := redis.NewClient(&redis.Options{Addr: "pool", Dialer: e.c.Dialer("redis"), Protocol: 2, PoolSize: 1})
		got, err := b.Get(ctx, "key").Result()
		_ = b.Close()
		if want := fmt.Sprint("value ", i); err != nil || got != want {
			t.Fatalf("trial %d: GET key = %q, %v; want %q", i, got, err, want)
		}
		// The abandoned BLPOP did not take the job.
		if job, err := direct.LPop(ctx, "jobs").Result(); err != nil || !strings.HasPrefix(job, "job ") {
			t.Fatalf("trial %d: LPOP jobs = %q, %v; the job is gone", i, job, err)
		}
	}
}
