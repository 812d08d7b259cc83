// Package poolplaneotel records the leases of a poolplane SDK client as
// OpenTelemetry spans and metrics, through the SDK's tracer interface
// (client.WithTracer):
//
//	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
//	t, err := poolplaneotel.NewTracer(poolplaneotel.WithTracerProvider(tp), poolplaneotel.WithMeterProvider(mp))
//	...
//	c, err := client.New("127.0.0.1:7700", client.WithInsecure(), client.WithTracer(t))
//
// Each lease is a span "poolplane.lease" from the call to Lease (or a
// Dialer's dial) until it returns, child of the span in the call's
// context, with two children: "poolplane.wait", the time the pool took to
// hand out the connection, and "poolplane.held", from the grant to the
// release, which ends after its parent since a lease outlives the call.
//
// The metrics are OpenTelemetry's for a connection pool's client, each with
// the pool's name (db.client.connection.pool.name):
// db.client.connection.wait_time and db.client.connection.use_time
// (histograms, in seconds), db.client.connection.timeouts (acquire
// timeouts).
//
// It lives in a module of its own so that the SDK's module requires no
// OpenTelemetry package: a service that does not trace compiles none.
package poolplaneotel

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/poolplane/poolplane/client"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/poolplane/poolplane/client/examples/otel"

// The spans' attributes: OpenTelemetry's name for a connection pool, and
// poolplane's own for the rest.
const (
	PoolKey          = attribute.Key("db.client.connection.pool.name")
	LeaseIDKey       = attribute.Key("poolplane.lease.id")
	UpstreamAddrKey  = attribute.Key("poolplane.upstream.address")
	UpstreamPortKey  = attribute.Key("poolplane.upstream.port")
	ReusedKey        = attribute.Key("poolplane.connection.reused")
	IdleTimeKey      = attribute.Key("poolplane.connection.idle_time")
	GenerationKey    = attribute.Key("poolplane.connection.generation")
	FirstWriteKey    = attribute.Key("poolplane.lease.first_write")
	ErrorReasonKey   = attribute.Key("poolplane.error.reason")
	ReusableKey      = attribute.Key("poolplane.release.reusable")
	EndReasonKey     = attribute.Key("poolplane.release.end_reason")
	BytesSentKey     = attribute.Key("poolplane.release.bytes_sent")
	BytesWrittenKey  = attribute.Key("poolplane.release.bytes_written")
	BytesReceivedKey = attribute.Key("poolplane.release.bytes_received")
)

// Option configures a Tracer.
type Option func(*options)

type options struct {
	tp trace.TracerProvider
	mp metric.MeterProvider
}

// WithTracerProvider sets the provider of the spans' tracer; the default
// is the global one (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// WithMeterProvider sets the provider of the metrics' meter; the default
// is the global one (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.mp = mp }
}

// Tracer is a client.LeaseTracer, client.LeaseWaitTracer and
// client.ReleaseTracer that records spans and metrics. It is safe for
// concurrent use.
type Tracer struct {
	tracer   trace.Tracer
	waitTime metric.Float64Histogram
	useTime  metric.Float64Histogram
	timeouts metric.Int64Counter
}

var (
	_ client.LeaseTracer     = (*Tracer)(nil)
	_ client.LeaseWaitTracer = (*Tracer)(nil)
	_ client.ReleaseTracer   = (*Tracer)(nil)
)

// durationBuckets are the histograms' bucket bounds in seconds, from 10µs
// (a warm lease on loopback) to 10s (an acquire timeout).
var durationBuckets = []float64{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// NewTracer returns a Tracer for client.WithTracer. It fails only when the
// meter provider refuses an instrument.
func NewTracer(opts ...Option) (*Tracer, error) {
	o := options{tp: otel.GetTracerProvider(), mp: otel.GetMeterProvider()}
	for _, opt := range opts {
		opt(&o)
	}
	meter := o.mp.Meter(ScopeName)
	t := &Tracer{tracer: o.tp.Tracer(ScopeName)}
	var err error
	if t.waitTime, err = meter.Float64Histogram("db.client.connection.wait_time", metric.WithUnit("s"),
		metric.WithDescription("The time it took to obtain a connection from the pool."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, err
	}
	if t.useTime, err = meter.Float64Histogram("db.client.connection.use_time", metric.WithUnit("s"),
		metric.WithDescription("The time between borrowing a connection and returning it to the pool."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, err
	}
	if t.timeouts, err = meter.Int64Counter("db.client.connection.timeouts", metric.WithUnit("{timeout}"),
		metric.WithDescription("The number of connection timeouts that have occurred trying to obtain a connection from the pool.")); err != nil {
		return nil, err
	}
	return t, nil
}

// TraceLeaseStart starts the lease's span.
func (t *Tracer) TraceLeaseStart(ctx context.Context, d client.TraceLeaseStartData) context.Context {
	attrs := []attribute.KeyValue{PoolKey.String(d.Pool)}
	if d.FirstWrite > 0 {
		attrs = append(attrs, FirstWriteKey.Int(d.FirstWrite))
	}
	ctx, _ = t.tracer.Start(ctx, "poolplane.lease", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// TraceLeaseWait records the wait as a child span that ends now, and in
// the wait_time histogram (an acquire timeout in the timeouts counter).
func (t *Tracer) TraceLeaseWait(ctx context.Context, d client.TraceLeaseWaitData) {
	now := time.Now()
	pool := metric.WithAttributes(PoolKey.String(d.Pool))
	t.waitTime.Record(ctx, d.WaitTime.Seconds(), pool)
	if errors.Is(d.Err, client.ErrAcquireTimeout) {
		t.timeouts.Add(ctx, 1, pool)
	}
	_, span := t.tracer.Start(ctx, "poolplane.wait", trace.WithTimestamp(now.Add(-d.WaitTime)),
		trace.WithAttributes(PoolKey.String(d.Pool)))
	setError(span, d.Err)
	span.End(trace.WithTimestamp(now))
}

// TraceLeaseEnd ends the lease's span with the lease's details or its
// error.
func (t *Tracer) TraceLeaseEnd(ctx context.Context, d client.TraceLeaseEndData) {
	span := trace.SpanFromContext(ctx)
	if d.Err != nil {
		setError(span, d.Err)
		span.End()
		return
	}
	i := d.Info
	span.SetAttributes(
		LeaseIDKey.String(i.LeaseID),
		ReusedKey.Bool(i.Reused),
		IdleTimeKey.Float64(i.IdleTime.Seconds()),
		GenerationKey.Int64(int64(i.Generation)),
	)
	span.SetAttributes(upstream(i.UpstreamAddr)...)
	span.End()
}

// TraceRelease records the lease's hold, from its grant to now, as a child
// span of the lease's, and in the use_time histogram.
func (t *Tracer) TraceRelease(ctx context.Context, d client.TraceReleaseData) {
	now := time.Now()
	t.useTime.Record(ctx, d.Held.Seconds(), metric.WithAttributes(PoolKey.String(d.Pool)))
	attrs := []attribute.KeyValue{
		PoolKey.String(d.Pool),
		LeaseIDKey.String(d.LeaseID),
		ReusableKey.Bool(d.Reusable),
		ReusedKey.Bool(d.Reused),
		EndReasonKey.String(d.EndReason.String()),
		BytesSentKey.Int64(d.BytesSent),
		BytesWrittenKey.Int64(d.BytesWritten),
		BytesReceivedKey.Int64(d.BytesReceived),
	}
	_, span := t.tracer.Start(ctx, "poolplane.held", trace.WithTimestamp(now.Add(-d.Held)), trace.WithAttributes(attrs...))
	setError(span, d.Err)
	span.End(trace.WithTimestamp(now))
}

// setError marks span failed with err, if any, and names its poolplane
// reason.
func setError(span trace.Span, err error) {
	if err == nil {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	var e *client.Error
	if errors.As(err, &e) && e.Reason != "" {
		span.SetAttributes(ErrorReasonKey.String(e.Reason))
	}
}

// upstream splits an upstream "ip:port" into attributes.
func upstream(addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return []attribute.KeyValue{UpstreamAddrKey.String(addr)}
	}
	attrs := []attribute.KeyValue{UpstreamAddrKey.String(host)}
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, UpstreamPortKey.Int(p))
	}
	return attrs
}
