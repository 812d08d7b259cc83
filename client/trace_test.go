package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/testkit"
)

// traceKey marks the context TraceLeaseStart returns, so the test sees
// that the other events get it.
type traceKey struct{}

// recTracer records every event; releases also go to releasec.
type recTracer struct {
	mu       sync.Mutex // protects the following fields
	events   []string
	starts   []TraceLeaseStartData
	ends     []TraceLeaseEndData
	waits    []TraceLeaseWaitData
	badCtx   []string // events whose context lacks traceKey
	releasec chan TraceReleaseData
}

func newRecTracer() *recTracer { return &recTracer{releasec: make(chan TraceReleaseData, 16)} }

func (r *recTracer) record(ctx context.Context, event string) {
	r.events = append(r.events, event)
	if ctx.Value(traceKey{}) == nil {
		r.badCtx = append(r.badCtx, event)
	}
}

func (r *recTracer) TraceLeaseStart(ctx context.Context, d TraceLeaseStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "start")
	r.starts = append(r.starts, d)
	return context.WithValue(ctx, traceKey{}, d.Pool)
}

func (r *recTracer) TraceLeaseWait(ctx context.Context, d TraceLeaseWaitData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record(ctx, "wait")
	r.waits = append(r.waits, d)
}

func (r *recTracer) TraceLeaseEnd(ctx context.Context, d TraceLeaseEndData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record(ctx, "end")
	r.ends = append(r.ends, d)
}

func (r *recTracer) TraceRelease(ctx context.Context, d TraceReleaseData) {
	r.mu.Lock()
	r.record(ctx, "release")
	r.mu.Unlock()
	r.releasec <- d
}

func (r *recTracer) check(t *testing.T, want ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := strings.Join(r.events, " "); got != strings.Join(want, " ") {
		t.Errorf("events %q, want %q", got, strings.Join(want, " "))
	}
	if len(r.badCtx) > 0 {
		t.Errorf("events without the start's context: %v", r.badCtx)
	}
}

func TestTracerLeaseAndRelease(t *testing.T) {
	f := newFake(t)
	tr := newRecTracer()
	c := newTestClient(t, f, WithTracer(tr))
	conn, err := c.LeaseWith(context.Background(), "api", []byte("hel"))
	if err != nil {
		t.Fatal(err)
	}
	l := testkit.Recv(t, f.leases)
	if _, err := conn.Write([]byte("lo")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(l.far, buf); err != nil {
		t.Fatal(err)
	}
	go l.far.Write([]byte("HELLO!"))
	if _, err := io.ReadFull(conn, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	tr.check(t, "start", "wait", "end")
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	rel := testkit.Recv(t, tr.releasec)
	tr.check(t, "start", "wait", "end", "release")

	tr.mu.Lock()
	start, wait, end := tr.starts[0], tr.waits[0], tr.ends[0]
	tr.mu.Unlock()
	if start != (TraceLeaseStartData{Pool: "api", FirstWrite: 3}) {
		t.Errorf("start %+v", start)
	}
	if wait != (TraceLeaseWaitData{Pool: "api", WaitTime: time.Millisecond}) {
		t.Errorf("wait %+v", wait)
	}
	if end.Err != nil || end.Pool != "api" || end.Info != conn.Info() {
		t.Errorf("end %+v, want the lease's info %+v", end, conn.Info())
	}
	if rel.Pool != "api" || rel.LeaseID != "pools/api/leases/1" || rel.UpstreamAddr != "192.0.2.1:6379" ||
		!rel.Reusable || rel.EndReason != poolv1.EndReason_END_REASON_RELEASED || rel.Err != nil ||
		rel.BytesSent != 5 || rel.BytesWritten != 5 || rel.BytesReceived != 6 || rel.Held <= 0 {
		t.Errorf("release %+v", rel)
	}
}

func TestTracerLeaseError(t *testing.T) {
	f := newFake(t)
	f.onOpen = func(context.Context, *poolv1.LeaseRequest_Open) error {
		return fakeStatus(codes.NotFound, "POOL_NOT_FOUND", "no pool", nil)
	}
	tr := newRecTracer()
	c := newTestClient(t, f, WithTracer(tr))
	if _, err := c.Lease(context.Background(), "nope"); !errors.Is(err, ErrPoolNotFound) {
		t.Fatalf("Lease: %v", err)
	}
	tr.check(t, "start", "end")
	tr.mu.Lock()
	end := tr.ends[0]
	tr.mu.Unlock()
	if !errors.Is(end.Err, ErrPoolNotFound) || end.Info != (LeaseInfo{}) || end.Pool != "nope" {
		t.Errorf("end %+v", end)
	}
}

// TestTracerDiscardAndRevoke: a discarded lease is traced as not reusable;
// a lease the server ended first is traced once the caller closes it, with
// the server's reason.
func TestTracerDiscardAndRevoke(t *testing.T) {
	f := newFake(t)
	tr := newRecTracer()
	c := newTestClient(t, f, WithTracer(tr))

	conn := leaseAPI(t, c)
	testkit.Recv(t, f.leases)
	if err := conn.Discard(); err != nil {
		t.Fatal(err)
	}
	if rel := testkit.Recv(t, tr.releasec); rel.Reusable || rel.EndReason != poolv1.EndReason_END_REASON_RELEASED || rel.Err != nil {
		t.Errorf("discarded: %+v", rel)
	}

	conn = leaseAPI(t, c)
	testkit.Recv(t, f.leases).revoke()
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, ErrLeaseEnded) {
		t.Fatalf("Read: %v", err)
	}
	select {
	case rel := <-tr.releasec:
		t.Fatalf("release traced before Close: %+v", rel)
	default:
	}
	conn.Close()
	if rel := testkit.Recv(t, tr.releasec); rel.Reusable || rel.EndReason != poolv1.EndReason_END_REASON_REVOKED || !errors.Is(rel.Err, ErrLeaseEnded) {
		t.Errorf("revoked: %+v", rel)
	}
}

// TestTracerAcquireTimeout: a lease that times out waiting is traced as a
// wait that ended with the error.
func TestTracerAcquireTimeout(t *testing.T) {
	f := newFake(t)
	f.onOpen = func(ctx context.Context, _ *poolv1.LeaseRequest_Open) error {
		<-ctx.Done()
		return ctx.Err()
	}
	tr := newRecTracer()
	c := newTestClient(t, f, WithTracer(tr))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Lease(ctx, "api"); !errors.Is(err, ErrAcquireTimeout) {
		t.Fatalf("Lease: %v", err)
	}
	tr.check(t, "start", "wait", "end")
	tr.mu.Lock()
	wait := tr.waits[0]
	tr.mu.Unlock()
	if !errors.Is(wait.Err, ErrAcquireTimeout) || wait.WaitTime <= 0 {
		t.Errorf("wait %+v", wait)
	}
}

// leaseOnly implements LeaseTracer alone: the Client must not look for the
// other events.
type leaseOnly struct{ n chan string }

func (l leaseOnly) TraceLeaseStart(ctx context.Context, _ TraceLeaseStartData) context.Context {
	l.n <- "start"
	return ctx
}

func (l leaseOnly) TraceLeaseEnd(context.Context, TraceLeaseEndData) { l.n <- "end" }

func TestTracerLeaseOnly(t *testing.T) {
	f := newFake(t)
	tr := leaseOnly{n: make(chan string, 4)}
	c := newTestClient(t, f, WithTracer(tr))
	conn := leaseAPI(t, c)
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	close(tr.n) // every event of a lease ran before Lease returned
	if got := testkit.Drain(t, tr.n); strings.Join(got, " ") != "start end" {
		t.Errorf("events %v", got)
	}
}

func TestLoggerEndedTimeout(t *testing.T) {
	f := newFake(t)
	f.noEnded = true
	var logs testkit.SyncBuffer
	c := newTestClient(t, f, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	c.endedTimeout = 20 * time.Millisecond
	conn := leaseAPI(t, c)
	conn.Close()
	testkit.Recv(t, f.streamEnd) // discarded: its context was cancelled
	if got := logs.String(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "no ended frame") || !strings.Contains(got, "pool=api") {
		t.Errorf("log: %q", got)
	}
}

// TestLoggerNewConnection: a lease past the streams one connection takes
// goes on a new connection, logged at Debug.
func TestLoggerNewConnection(t *testing.T) {
	f := newFake(t)
	var logs testkit.SyncBuffer
	c := newTestClient(t, f, WithMaxStreamsPerConn(1),
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	a, b := leaseAPI(t, c), leaseAPI(t, c)
	a.Close()
	b.Close()
	if got := logs.String(); c.conns() != 2 || !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, "new gRPC connection") {
		t.Errorf("%d connections, log: %q", c.conns(), got)
	}
}
