package client

import (
	"context"
	"log/slog"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// LeaseTracer traces leases, after pgx's QueryTracer and go-redis's hooks.
// Set one with WithTracer. A LeaseTracer may also implement LeaseWaitTracer
// and ReleaseTracer; the Client finds out once, in New.
//
// TraceLeaseStart runs at the start of Lease, LeaseWith and a Dialer's
// dial, on the caller's goroutine, and returns the context passed to the
// lease's other events: a tracer keeps its span there. TraceLeaseEnd runs
// when the call returns, once per call, with the error or the granted
// lease's LeaseInfo. Retries inside one call (see LeaseWith) are one
// lease.
//
// The methods of a tracer run concurrently for concurrent leases, and
// TraceRelease may run on a goroutine of the SDK that reads the lease's
// stream: they must be safe for concurrent use and must not block.
type LeaseTracer interface {
	TraceLeaseStart(ctx context.Context, data TraceLeaseStartData) context.Context
	TraceLeaseEnd(ctx context.Context, data TraceLeaseEndData)
}

// LeaseWaitTracer is a LeaseTracer that is also told how long each lease
// waited in the pool for its connection (OpenTelemetry's
// db.client.connection.wait_time): once the pool granted one, or once the
// lease gave up with ErrAcquireTimeout. Leases refused at once (a missing
// pool, a full backlog) and leases cancelled by their context did not wait
// for a connection and are not reported. TraceLeaseWait runs before
// TraceLeaseEnd, with the context TraceLeaseStart returned.
type LeaseWaitTracer interface {
	TraceLeaseWait(ctx context.Context, data TraceLeaseWaitData)
}

// ReleaseTracer is a LeaseTracer that is also told when a granted lease is
// over: the caller closed the Conn (Close, CloseIdle or Discard) and the
// lease ended on the server's side, in either order. TraceRelease runs once
// per granted lease whose Conn is closed, with the context TraceLeaseStart
// returned, on the goroutine that saw the later of the two.
type ReleaseTracer interface {
	TraceRelease(ctx context.Context, data TraceReleaseData)
}

// TraceLeaseStartData is the start of a lease.
type TraceLeaseStartData struct {
	// Pool is the pool, as the caller named it.
	Pool string
	// FirstWrite is the length of LeaseWith's 0-RTT data.
	FirstWrite int
}

// TraceLeaseEndData is the end of a lease call.
type TraceLeaseEndData struct {
	Pool string
	// Info describes the granted lease (the zero value when Err is set).
	Info LeaseInfo
	// Err is the error Lease returned: an *Error matching a sentinel such as
	// ErrPoolNotFound or ErrAcquireTimeout, or one wrapping the context's.
	Err error
}

// TraceLeaseWaitData is a lease's wait in the pool's queue.
type TraceLeaseWaitData struct {
	Pool string
	// WaitTime is how long the lease waited: the server's measure for a
	// granted lease (LeaseInfo.WaitTime: 0 or close to it when an idle
	// connection was at hand, more when the pool dialled one or the lease
	// queued for one), the SDK's for one that timed out.
	WaitTime time.Duration
	// Err is nil when the wait ended with a connection, and the lease's
	// error (matching ErrAcquireTimeout) when it did not.
	Err error
}

// TraceReleaseData is the end of a granted lease.
type TraceReleaseData struct {
	Pool string
	// LeaseID is the lease's "pools/{pool}/leases/{lease}".
	LeaseID string
	// UpstreamAddr is the upstream connection's "ip:port".
	UpstreamAddr string
	// Reusable is what the SDK asked of the pool at release: true when
	// the caller closed a clean connection (see Conn), false after Discard
	// or when the connection was unfit for reuse.
	Reusable bool
	// Reused is the server's answer: the connection went back to the pool.
	// False when the lease ended without the server's ended frame.
	Reused bool
	// EndReason is why the lease ended (END_REASON_RELEASED when the
	// caller released it), END_REASON_UNSPECIFIED when the stream broke
	// or was discarded first; Err then says why.
	EndReason poolv1.EndReason
	// EndMessage is the server's detail for EndReason, such as the
	// upstream's error.
	EndMessage string
	// BytesSent counts the bytes the caller wrote (0-RTT data included);
	// BytesWritten those the server confirmed written to the upstream
	// (fewer than BytesSent when some never reached it); BytesReceived
	// those the SDK received from the upstream.
	BytesSent, BytesWritten, BytesReceived int64
	// Held is how long the lease was held: from its grant to the later of
	// the caller's release and the lease's end.
	Held time.Duration
	// Err is the error of a lease that ended badly: the stream broke, or
	// the server ended the lease for a reason other than the caller's
	// release or the upstream's EOF. Nil otherwise.
	Err error
}

// WithTracer traces every lease of the Client with t (see LeaseTracer). With
// no tracer, tracing costs a nil check per lease.
func WithTracer(t LeaseTracer) Option { return func(o *options) { o.tracer = t } }

// WithLogger makes the Client log to l: at Debug what it does on its own
// (a new gRPC connection when the others are full, a lease retried on a
// new stream or another replica, a warm stream discarded) and at Warn what
// costs an upstream connection or bytes (a release that timed out or
// stalled). Lease errors are returned, not logged. The default logs
// nothing.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// tracer is a Client's tracers, found once in New.
type tracer struct {
	lease   LeaseTracer
	wait    LeaseWaitTracer
	release ReleaseTracer
}

// forConn returns a new Conn's release tracing, nil without a
// ReleaseTracer.
func (t *tracer) forConn() *connTrace {
	if t == nil || t.release == nil {
		return nil
	}
	return &connTrace{tr: t.release}
}

func newTracer(t LeaseTracer) *tracer {
	if t == nil {
		return nil
	}
	w, _ := t.(LeaseWaitTracer)
	r, _ := t.(ReleaseTracer)
	return &tracer{lease: t, wait: w, release: r}
}

// debug and warn log through the Client's logger, if it has one.
func (c *Client) debug(msg string, args ...any) {
	if c.log != nil {
		c.log.Debug(msg, args...)
	}
}

func (c *Client) warn(msg string, args ...any) {
	if c.log != nil {
		c.log.Warn(msg, args...)
	}
}
