package server_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// sdkTracer records the SDK's lease events, one line each, and hands
// every release to releases.
type sdkTracer struct {
	mu       sync.Mutex // protects the following fields
	events   []string
	ends     []client.TraceLeaseEndData
	waits    []client.TraceLeaseWaitData
	releases chan client.TraceReleaseData
}

type sdkTraceKey struct{}

func (r *sdkTracer) TraceLeaseStart(ctx context.Context, d client.TraceLeaseStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "start "+d.Pool)
	return context.WithValue(ctx, sdkTraceKey{}, d.Pool)
}

func (r *sdkTracer) TraceLeaseWait(ctx context.Context, d client.TraceLeaseWaitData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "wait "+traced(ctx, d.Pool))
	r.waits = append(r.waits, d)
}

func (r *sdkTracer) TraceLeaseEnd(ctx context.Context, d client.TraceLeaseEndData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "end "+traced(ctx, d.Pool))
	r.ends = append(r.ends, d)
}

func (r *sdkTracer) TraceRelease(ctx context.Context, d client.TraceReleaseData) {
	r.mu.Lock()
	r.events = append(r.events, "release "+traced(ctx, d.Pool))
	r.mu.Unlock()
	r.releases <- d
}

// traced returns pool, marked when ctx is not the one TraceLeaseStart
// returned for it.
func traced(ctx context.Context, pool string) string {
	if ctx.Value(sdkTraceKey{}) != pool {
		return pool + "(without the start's context)"
	}
	return pool
}

// take returns the events recorded since the last call.
func (r *sdkTracer) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.events, ", ")
	r.events = nil
	return s
}

// TestSDKTracer traces leases against a real server: a lease granted on a
// new connection, its release and the connection's reuse by the next; a
// lease of a missing pool; a lease that waits for the one connection of
// its pool.
func TestSDKTracer(t *testing.T) {
	tr := &sdkTracer{releases: make(chan client.TraceReleaseData, 16)}
	e := startSDKEnv(t, client.WithTracer(tr))
	up := startSDKUpstream(t, testkit.EchoConn)
	e.createPool(t, "one", poolmgr.Config{
		Endpoints: []string{up.addr},
		Limits:    poolmgr.Limits{MaxConnections: 1, MaxWaiters: 4},
	})
	ctx := context.Background()

	// A lease on a new connection, dialled for it.
	conn, err := e.c.Lease(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	rel := testkit.Recv(t, tr.releases)
	if got, want := tr.take(), "start one, wait one, end one, release one"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	tr.mu.Lock()
	end := tr.ends[0]
	tr.mu.Unlock()
	info := conn.Info()
	if end.Err != nil || end.Info != info || info.Reused || info.UpstreamAddr != up.addr || !strings.HasPrefix(info.LeaseID, "pools/one/leases/") {
		t.Errorf("end %+v", end)
	}
	if rel.LeaseID != info.LeaseID || rel.UpstreamAddr != up.addr || !rel.Reusable || !rel.Reused ||
		rel.EndReason != poolv1.EndReason_END_REASON_RELEASED || rel.Err != nil ||
		rel.BytesSent != 4 || rel.BytesWritten != 4 || rel.BytesReceived != 4 || rel.Held <= 0 {
		t.Errorf("release %+v", rel)
	}

	// The next lease reuses the idle connection. Discarding it closes the
	// connection.
	conn, err = e.c.Lease(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if !conn.Info().Reused {
		t.Errorf("second lease: %+v, want a reused connection", conn.Info())
	}
	if err := conn.Discard(); err != nil {
		t.Fatal(err)
	}
	rel = testkit.Recv(t, tr.releases)
	if got, want := tr.take(), "start one, wait one, end one, release one"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if rel.Reusable || rel.Reused || rel.EndReason != poolv1.EndReason_END_REASON_RELEASED {
		t.Errorf("discarded release %+v", rel)
	}

	// A missing pool: the error, no wait, no release.
	if _, err := e.c.Lease(ctx, "missing"); !errors.Is(err, client.ErrPoolNotFound) {
		t.Fatalf("missing pool: %v", err)
	}
	if got, want := tr.take(), "start missing, end missing"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	tr.mu.Lock()
	end = tr.ends[len(tr.ends)-1]
	tr.mu.Unlock()
	if !errors.Is(end.Err, client.ErrPoolNotFound) || end.Info != (client.LeaseInfo{}) {
		t.Errorf("missing pool end %+v", end)
	}

	// A wait: the pool's one connection is held, a second lease queues
	// until it is released.
	held, err := e.c.Lease(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	tr.take()
	p, err := e.mgr.Pool("one")
	if err != nil {
		t.Fatal(err)
	}
	waiter := make(chan *client.Conn, 1)
	go func() {
		c, err := e.c.Lease(ctx, "one")
		if err != nil {
			t.Errorf("queued lease: %v", err)
		}
		waiter <- c
	}()
	testkit.WaitFor(t, "a queued waiter", func() bool { return p.Stats().Waiters == 1 })
	queued := time.Now()
	queuedFor := time.Since(queued) // the waiter waits at least this long
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	second := testkit.Recv(t, waiter)
	if second == nil {
		t.FailNow()
	}
	testkit.Recv(t, tr.releases)
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, tr.releases)
	// The held lease's release comes anywhere among the waiter's events.
	got := strings.Split(tr.take(), ", ")
	slices.Sort(got)
	if want := []string{"end one", "release one", "release one", "start one", "wait one"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q in some order", got, want)
	}
	tr.mu.Lock()
	wait := tr.waits[len(tr.waits)-1]
	tr.mu.Unlock()
	if wait.Err != nil || wait.WaitTime < queuedFor || wait.WaitTime != second.Info().WaitTime {
		t.Errorf("wait %+v, lease info %+v", wait, second.Info())
	}
}
