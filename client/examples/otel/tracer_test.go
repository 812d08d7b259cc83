package poolplaneotel_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/poolplane/poolplane/client"
	poolplaneotel "github.com/poolplane/poolplane/client/examples/otel"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// leaseServer is a LeaseService of two pools: "echo", whose connections
// echo what the client writes, and "slow", which never grants a lease:
// enough of poold for a lease's spans. Any other pool is not found.
type leaseServer struct {
	poolv1.UnimplementedLeaseServiceServer
}

func (leaseServer) Lease(stream grpc.BidiStreamingServer[poolv1.LeaseRequest, poolv1.LeaseResponse]) error {
	var written uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch f := req.GetFrame().(type) {
		case *poolv1.LeaseRequest_Open_:
			if f.Open.GetPool() == "slow" {
				<-stream.Context().Done()
				return stream.Context().Err()
			}
			if f.Open.GetPool() != "echo" {
				st, _ := status.New(grpccodes.NotFound, "pool not found").WithDetails(
					&errdetails.ErrorInfo{Reason: "POOL_NOT_FOUND", Domain: "poolplane.dev"})
				return st.Err()
			}
			written = 0
			if err := stream.Send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Granted_{Granted: &poolv1.LeaseResponse_Granted{
				LeaseId: "pools/echo/leases/1", UpstreamAddr: "192.0.2.7:6379", Reused: true,
				WaitTime: durationpb.New(3e6), Generation: 2,
			}}}); err != nil {
				return err
			}
		case *poolv1.LeaseRequest_Data_:
			written += uint64(len(f.Data.GetData()))
			if err := stream.Send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{
				Data: f.Data.GetData(), UpstreamWritten: written,
			}}}); err != nil {
				return err
			}
		case *poolv1.LeaseRequest_Release_:
			if err := stream.Send(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{
				Reason: poolv1.EndReason_END_REASON_RELEASED, Reused: f.Release.GetReusable(), UpstreamWritten: written,
			}}}); err != nil {
				return err
			}
		}
	}
}

func startServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	poolv1.RegisterLeaseServiceServer(srv, leaseServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestTracerSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	tr, err := poolplaneotel.NewTracer(poolplaneotel.WithTracerProvider(tp), poolplaneotel.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(startServer(t), client.WithInsecure(), client.WithTracer(tr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	// The caller's span is the lease's parent.
	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	conn, err := c.Lease(ctx, "echo")
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
	if _, err := c.Lease(ctx, "missing"); !errors.Is(err, client.ErrPoolNotFound) {
		t.Fatalf("missing pool: %v", err)
	}
	slowCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.Lease(slowCtx, "slow"); !errors.Is(err, client.ErrAcquireTimeout) {
		t.Fatalf("slow pool: %v", err)
	}
	parent.End()
	// The held span ends when the server's ended frame arrives, which
	// Close does not wait for: closing the Client waits for it.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	spans := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = append(spans[s.Name()], s)
	}
	if n := [3]int{len(spans["poolplane.lease"]), len(spans["poolplane.wait"]), len(spans["poolplane.held"])}; n != [3]int{3, 2, 1} {
		t.Fatalf("spans lease, wait, held: %v, want [3 2 1]", n)
	}
	lease, failed, timedOut := spans["poolplane.lease"][0], spans["poolplane.lease"][1], spans["poolplane.lease"][2]
	wait, slowWait, held := spans["poolplane.wait"][0], spans["poolplane.wait"][1], spans["poolplane.held"][0]

	if lease.Parent().SpanID() != parent.SpanContext().SpanID() || failed.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Error("the lease spans are not children of the caller's span")
	}
	for _, s := range []sdktrace.ReadOnlySpan{wait, held} {
		if s.Parent().SpanID() != lease.SpanContext().SpanID() {
			t.Errorf("%s is not a child of the lease span", s.Name())
		}
	}
	checkAttrs(t, lease,
		poolplaneotel.PoolKey.String("echo"),
		poolplaneotel.LeaseIDKey.String("pools/echo/leases/1"),
		poolplaneotel.UpstreamAddrKey.String("192.0.2.7"),
		poolplaneotel.UpstreamPortKey.Int(6379),
		poolplaneotel.ReusedKey.Bool(true),
		poolplaneotel.GenerationKey.Int64(2),
	)
	if lease.Status().Code != codes.Unset {
		t.Errorf("lease status %v", lease.Status())
	}
	if d := wait.EndTime().Sub(wait.StartTime()); d != 3e6 {
		t.Errorf("wait span lasts %v, want the server's 3ms", d)
	}
	checkAttrs(t, held,
		poolplaneotel.ReusableKey.Bool(true),
		poolplaneotel.ReusedKey.Bool(true),
		poolplaneotel.EndReasonKey.String("END_REASON_RELEASED"),
		poolplaneotel.BytesSentKey.Int64(4),
		poolplaneotel.BytesWrittenKey.Int64(4),
		poolplaneotel.BytesReceivedKey.Int64(4),
	)
	if held.StartTime().Before(lease.StartTime()) || held.Status().Code != codes.Unset {
		t.Errorf("held span from %v (lease from %v), status %v", held.StartTime(), lease.StartTime(), held.Status())
	}

	checkAttrs(t, failed, poolplaneotel.PoolKey.String("missing"), poolplaneotel.ErrorReasonKey.String("POOL_NOT_FOUND"))
	if failed.Status().Code != codes.Error || len(failed.Events()) != 1 || failed.Events()[0].Name != "exception" {
		t.Errorf("failed lease: status %v, events %v", failed.Status(), failed.Events())
	}
	checkAttrs(t, timedOut, poolplaneotel.PoolKey.String("slow"), poolplaneotel.ErrorReasonKey.String("ACQUIRE_TIMEOUT"))
	if slowWait.Parent().SpanID() != timedOut.SpanContext().SpanID() || slowWait.Status().Code != codes.Error ||
		slowWait.EndTime().Sub(slowWait.StartTime()) < 20*time.Millisecond {
		t.Errorf("timed-out wait: status %v, from %v to %v", slowWait.Status(), slowWait.StartTime(), slowWait.EndTime())
	}

	// The metrics: one wait per pool that answered or timed out, one use.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]uint64{} // metric, pool: count
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			got[m.Name] = map[string]uint64{}
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					pool, _ := p.Attributes.Value(poolplaneotel.PoolKey)
					got[m.Name][pool.AsString()] = p.Count
				}
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					pool, _ := p.Attributes.Value(poolplaneotel.PoolKey)
					got[m.Name][pool.AsString()] = uint64(p.Value)
				}
			}
		}
	}
	want := map[string]map[string]uint64{
		"db.client.connection.wait_time": {"echo": 1, "slow": 1},
		"db.client.connection.use_time":  {"echo": 1},
		"db.client.connection.timeouts":  {"slow": 1},
	}
	for name, pools := range want {
		for pool, n := range pools {
			if got[name][pool] != n {
				t.Errorf("%s{pool=%s} = %d, want %d (all: %v)", name, pool, got[name][pool], n, got)
			}
		}
	}
}

func checkAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want ...attribute.KeyValue) {
	t.Helper()
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		got[kv.Key] = kv.Value
	}
	for _, kv := range want {
		if v, ok := got[kv.Key]; !ok || v != kv.Value {
			t.Errorf("%s: %s = %v, want %v", s.Name(), kv.Key, v.String(), kv.Value.String())
		}
	}
}
