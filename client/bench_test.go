package client

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
)

// BenchmarkLeasePerRequest is a 64-byte request and its reply on a lease of
// its own (LeaseWith's 0-RTT data, then Close), against the fake server
// with a loopback echo upstream: the SDK's cost per lease, with no tracer
// and with a tracer that does nothing.
func BenchmarkLeasePerRequest(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"tracer=none", nil},
		{"tracer=noop", []Option{WithTracer(noopTracer{})}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFake(b)
			echo := testkit.EchoServer(b)
			f.newUpstream = func() (net.Conn, net.Conn, error) {
				c, err := net.Dial("tcp", echo)
				return c, c, err
			}
			c := newTestClient(b, f, bc.opts...)
			msg, buf := make([]byte, 64), make([]byte, 64)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				conn, err := c.LeaseWith(ctx, "api", msg)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, buf); err != nil {
					b.Fatal(err)
				}
				if err := conn.Close(); err != nil {
					b.Fatal(err)
				}
				<-f.leases
			}
		})
	}
}

// noopTracer implements every tracer interface and does nothing.
type noopTracer struct{}

func (noopTracer) TraceLeaseStart(ctx context.Context, _ TraceLeaseStartData) context.Context {
	return ctx
}
func (noopTracer) TraceLeaseWait(context.Context, TraceLeaseWaitData) {}
func (noopTracer) TraceLeaseEnd(context.Context, TraceLeaseEndData)   {}
func (noopTracer) TraceRelease(context.Context, TraceReleaseData)     {}
