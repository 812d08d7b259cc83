package server_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
)

// The lease benchmarks compare the tunnel with two references measured in
// the same run: a direct TCP connection to the same loopback echo upstream
// (what a client pays without poolplane, once connected), and a bare
// grpc-go bidi echo stream (the floor any gRPC tunnel stands on). Each
// poolplane case reports its ratio to them as x-direct and x-grpc metrics,
// and lease-per-request also its ratio to an open lease (x-lease).

const rtSize = 64

// benchEnv is poold in-process: a manager over a real store, the real gRPC
// server, an echo upstream and an SDK client.
type benchEnv struct {
	upstream string
	client   *client.Client
	grpcEcho poolv1.LeaseServiceClient
}

func newBenchEnv(b *testing.B, maxConns int32) *benchEnv {
	b.Helper()
	up := testkit.EchoServer(b)
	srv := servertest.Start(b, servertest.Options{Store: store.Options{NoSync: true}})
	cfg := poolmgr.Config{Endpoints: []string{up}, Limits: poolmgr.Limits{MaxConnections: int(maxConns), MaxWaiters: 4096}}
	if _, err := srv.Manager.Create(context.Background(), "echo", cfg, poolmgr.WriteOptions{}); err != nil {
		b.Fatal(err)
	}

	// The bare gRPC echo reference: same messages, no upstream.
	// Same flow-control windows as the lease server and the SDK.
	es := grpc.NewServer(grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(16<<20))
	poolv1.RegisterLeaseServiceServer(es, grpcEchoServer{})
	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go es.Serve(eln)
	ecc, err := grpc.NewClient(eln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(16<<20))
	if err != nil {
		b.Fatal(err)
	}

	c := newBenchClient(b, srv.Addr)
	b.Cleanup(func() {
		ecc.Close()
		es.Stop()
	})
	return &benchEnv{upstream: up, client: c, grpcEcho: poolv1.NewLeaseServiceClient(ecc)}
}

// newBenchClient is an SDK client of the benchmarks' server.
func newBenchClient(b *testing.B, addr string) *client.Client {
	b.Helper()
	c, err := client.New(addr, client.WithInsecure(), client.WithIdleStreams(64))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// grpcEchoServer echoes data frames on a LeaseService stream.
type grpcEchoServer struct {
	poolv1.UnimplementedLeaseServiceServer
}

func (grpcEchoServer) Lease(s poolv1.LeaseService_LeaseServer) error {
	var req poolv1.LeaseRequest
	data := &poolv1.LeaseResponse_Data{}
	resp := &poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: data}}
	for {
		req.Reset()
		if err := s.RecvMsg(&req); err != nil {
			return nil
		}
		data.Data = req.GetData().GetData()
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

// grpcEchoConn adapts a bare echo stream to round trips.
type grpcEchoConn struct {
	s    poolv1.LeaseService_LeaseClient
	req  *poolv1.LeaseRequest
	data *poolv1.LeaseRequest_Data
	resp poolv1.LeaseResponse
}

func newGRPCEchoConn(b *testing.B, c poolv1.LeaseServiceClient) *grpcEchoConn {
	b.Helper()
	s, err := c.Lease(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	d := &poolv1.LeaseRequest_Data{}
	return &grpcEchoConn{s: s, data: d, req: &poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: d}}}
}

func (g *grpcEchoConn) roundTrip(msg []byte) error {
	g.data.Data = msg
	if err := g.s.Send(g.req); err != nil {
		return err
	}
	for got := 0; got < len(msg); {
		g.resp.Reset()
		if err := g.s.RecvMsg(&g.resp); err != nil {
			return err
		}
		got += len(g.resp.GetData().GetData())
	}
	return nil
}

func roundTrip(c net.Conn, msg, buf []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf[:len(msg)])
	return err
}

// perOp is the last measured time per operation of each case, for ratios.
type perOp map[string]float64

func (p perOp) record(b *testing.B, name string) float64 {
	b.Helper()
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	p[name] = ns
	return ns
}

func (p perOp) ratio(b *testing.B, ns float64, ref, unit string) {
	b.Helper()
	if r := p[ref]; r > 0 {
		b.ReportMetric(ns/r, unit)
	}
}

// cpuTime is the CPU time (user and system) the process has used. The
// benchmarks report it per operation (cpu-ns/op) next to the wall time: it
// counts the client, server and upstream work of an operation together and
// is far less sensitive than the wall time to other load on the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time used since start per operation.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkRoundTrip is a 64-byte request/response over an open connection
// at 1 and 32 concurrent connections.
func BenchmarkRoundTrip(b *testing.B) {
	for _, conc := range []int{1, 32} {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			env := newBenchEnv(b, 64)
			ns := perOp{}
			run := func(b *testing.B, open func(b *testing.B) (func([]byte, []byte) error, func())) {
				b.ReportAllocs()
				b.SetParallelism(max(1, conc/2)) // 2 cores
				if conc == 1 {
					rt, done := open(b)
					defer done()
					msg, buf := make([]byte, rtSize), make([]byte, rtSize)
					b.ResetTimer()
					defer reportCPU(b, cpuTime())
					for b.Loop() {
						if err := rt(msg, buf); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.ResetTimer()
				defer reportCPU(b, cpuTime())
				b.RunParallel(func(pb *testing.PB) {
					rt, done := open(b)
					defer done()
					msg, buf := make([]byte, rtSize), make([]byte, rtSize)
					for pb.Next() {
						if err := rt(msg, buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.Run("impl=direct", func(b *testing.B) {
				run(b, func(b *testing.B) (func([]byte, []byte) error, func()) {
					c, err := net.Dial("tcp", env.upstream)
					if err != nil {
						b.Fatal(err)
					}
					return func(m, buf []byte) error { return roundTrip(c, m, buf) }, func() { c.Close() }
				})
				ns.record(b, "direct")
			})
			b.Run("impl=grpc-echo", func(b *testing.B) {
				run(b, func(b *testing.B) (func([]byte, []byte) error, func()) {
					g := newGRPCEchoConn(b, env.grpcEcho)
					return func(m, _ []byte) error { return g.roundTrip(m) }, func() { g.s.CloseSend() }
				})
				ns.record(b, "grpc")
			})
			b.Run("impl=lease", func(b *testing.B) {
				run(b, func(b *testing.B) (func([]byte, []byte) error, func()) {
					c, err := env.client.Lease(context.Background(), "echo")
					if err != nil {
						b.Fatal(err)
					}
					return func(m, buf []byte) error { return roundTrip(c, m, buf) }, func() { c.Close() }
				})
				got := ns.record(b, "lease")
				ns.ratio(b, got, "direct", "x-direct")
				ns.ratio(b, got, "grpc", "x-grpc")
			})
			b.Run("impl=lease-per-request", func(b *testing.B) {
				run(b, func(b *testing.B) (func([]byte, []byte) error, func()) {
					return func(m, buf []byte) error {
						c, err := env.client.LeaseWith(context.Background(), "echo", m)
						if err != nil {
							return err
						}
						if _, err := io.ReadFull(c, buf[:len(m)]); err != nil {
							c.Discard()
							return err
						}
						return c.Close()
					}, func() {}
				})
				got := ns.record(b, "lpr")
				ns.ratio(b, got, "lease", "x-lease")
				ns.ratio(b, got, "grpc", "x-grpc")
			})
		})
	}
}

// BenchmarkBulk is throughput through one connection with 32 KiB writes,
// the echoes read concurrently.
func BenchmarkBulk(b *testing.B) {
	env := newBenchEnv(b, 4)
	ns := perOp{}
	const chunk = 32 << 10
	run := func(b *testing.B, c net.Conn) {
		b.ReportAllocs()
		b.SetBytes(chunk)
		msg := make([]byte, chunk)
		total := int64(b.N) * chunk
		readDone := make(chan error, 1)
		go func() {
			_, err := io.CopyN(io.Discard, c, total)
			readDone <- err
		}()
		b.ResetTimer()
		start := cpuTime()
		for range b.N {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-readDone; err != nil {
			b.Fatal(err)
		}
		reportCPU(b, start)
	}
	b.Run("impl=direct", func(b *testing.B) {
		c, err := net.Dial("tcp", env.upstream)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
		ns.record(b, "direct")
	})
	b.Run("impl=lease", func(b *testing.B) {
		c, err := env.client.Lease(context.Background(), "echo")
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
		got := ns.record(b, "lease")
		// Throughput ratio: direct time over lease time.
		if d := ns["direct"]; d > 0 {
			b.ReportMetric(d/got, "x-direct-throughput")
		}
	})
}
