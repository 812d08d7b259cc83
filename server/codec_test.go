package server

import (
	"bytes"
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay"
)

func testCodec() leaseCodec { return leaseCodec{proto: encoding.GetCodecV2(gproto.Name)} }

// countingPool is a mem.BufferPool that counts the buffers not yet
// returned, to check that the codec frees every reference it takes.
type countingPool struct{ out atomic.Int64 }

func (p *countingPool) Get(n int) *[]byte {
	p.out.Add(1)
	b := make([]byte, n)
	return &b
}

func (p *countingPool) Put(*[]byte) { p.out.Add(-1) }

// split cuts b into pooled buffers at the given offsets, as gRPC's receive
// path hands a message to the codec (one buffer per HTTP/2 frame).
func split(pool *countingPool, b []byte, cuts ...int) mem.BufferSlice {
	var s mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(b)) {
		if c <= prev || c > len(b) {
			continue
		}
		bp := pool.Get(c - prev)
		copy(*bp, b[prev:c])
		// Above the pooling threshold NewBuffer counts references; below it
		// it returns a plain slice that is never put back.
		if mem.IsBelowBufferPoolingThreshold(cap(*bp)) {
			pool.out.Add(-1)
		}
		s = append(s, mem.NewBuffer(bp, pool))
		prev = c
	}
	return s
}

var dataSizes = []int{1, 2, 63, 64, 127, 128, 1000, 1 << 10, 2000, 16<<10 - 20, 16 << 10, relay.SmallRead, relay.SmallRead + 1, 32 << 10, relay.LargeRead, MaxDataFrame}

func TestCodecEncodesDataLikeProto(t *testing.T) {
	c := testCodec()
	for _, n := range dataSizes {
		if n > relay.LargeRead {
			continue // the relay never reads more
		}
		payload := bytes.Repeat([]byte{0xa5, 0x01}, n)[:n]
		bp := relay.Buffers.Get(relay.Headroom + n)
		buf := mem.NewBuffer(bp, relay.Buffers)
		copy((*bp)[relay.Headroom:], payload)
		d := newOutData()
		d.set(buf, n, 0)
		got, err := c.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: payload}}})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want) {
			t.Fatalf("n=%d: codec wrote % x..., proto % x...", n, got.Materialize()[:8], want[:8])
		}
		// The embedded message is the frame too, for interceptors.
		if b, _ := proto.Marshal(&d.LeaseResponse); !bytes.Equal(b, want) {
			t.Fatalf("n=%d: the embedded LeaseResponse differs from the frame", n)
		}
		got.Free()
		d.free()
		// With upstream_written the fields go in another order than
		// proto.Marshal's; proto reads the same message.
		d.set(buf, n, 1<<33+5)
		got, err = c.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var back poolv1.LeaseResponse
		if err := proto.Unmarshal(got.Materialize(), &back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&back, &d.LeaseResponse) || back.GetData().GetUpstreamWritten() != 1<<33+5 || !bytes.Equal(back.GetData().GetData(), payload) {
			t.Fatalf("n=%d: frame with upstream_written decodes differently", n)
		}
		got.Free()
		d.free()
		buf.Free()
	}
}

func TestCodecDecodesDataByReference(t *testing.T) {
	c := testCodec()
	for _, n := range dataSizes {
		payload := bytes.Repeat([]byte{0x5a, 0x02, 0x03}, n)[:n]
		wire, err := proto.Marshal(dataFrame(payload))
		if err != nil {
			t.Fatal(err)
		}
		for _, cuts := range [][]int{nil, {1}, {2}, {3}, {4}, {5}, {len(wire) / 2}, {1, 2, 3, 4, 5, 6}, {len(wire) - 1}, {16 << 10, 32 << 10}} {
			var pool countingPool
			data := split(&pool, wire, cuts...)
			var f inFrame
			if err := c.Unmarshal(data, &f); err != nil {
				t.Fatal(err)
			}
			data.Free() // what gRPC does once Unmarshal returns
			if f.GetData() == nil {
				t.Fatalf("n=%d cuts=%v: not a data frame", n, cuts)
			}
			if got := f.payload.Materialize(); !bytes.Equal(got, payload) {
				t.Fatalf("n=%d cuts=%v: payload differs", n, cuts)
			}
			if len(f.payload) == 1 && !bytes.Equal(f.GetData().GetData(), payload) {
				t.Fatalf("n=%d cuts=%v: Data.data differs from the payload", n, cuts)
			}
			f.free()
			if out := pool.out.Load(); out != 0 {
				t.Fatalf("n=%d cuts=%v: %d buffers not returned", n, cuts, out)
			}
		}
	}
}

func TestCodecFallsBackToProto(t *testing.T) {
	c := testCodec()
	msgs := []*poolv1.LeaseRequest{
		openFrame("pools/echo"),
		{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo", AcquireTimeout: durationpb.New(3e9)}}},
		releaseFrame(true),
		closeWriteFrame(),
		dataFrame(nil),
		{Frame: &poolv1.LeaseRequest_Data_{}},
		{},
	}
	for _, m := range msgs {
		wire, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var f inFrame
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &f); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&f.LeaseRequest, m) {
			t.Fatalf("decoded %v, want %v", &f.LeaseRequest, m)
		}
		f.free()
	}
	// Shapes proto.Marshal does not write: a repeated data field (the last
	// wins), an unknown field, a non-minimal varint.
	for _, wire := range [][]byte{
		{0x12, 0x03, 0x0a, 0x01, 'a', 0x12, 0x03, 0x0a, 0x01, 'b'},
		{0x12, 0x05, 0x0a, 0x01, 'a', 0x10, 0x01},
		{0x12, 0x04, 0x0a, 0x81, 0x00, 'a'},
		{0x12, 0x83, 0x00, 0x0a, 0x01, 'a'},
	} {
		checkDecodeLikeProto(t, c, wire, 0)
	}
	// Other messages (admin, health, reflection) are plain proto both ways.
	p := &poolv1.Pool{Name: "pools/x", Endpoints: []string{"127.0.0.1:1"}}
	b, err := c.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q poolv1.Pool
	if err := c.Unmarshal(b, &q); err != nil || !proto.Equal(p, &q) {
		t.Fatalf("pool round trip: %v, %v", &q, err)
	}
}

// checkDecodeLikeProto decodes wire (cut in two at cut) with the codec and
// with proto and fails unless they agree.
func checkDecodeLikeProto(t *testing.T, c leaseCodec, wire []byte, cut int) {
	t.Helper()
	var want poolv1.LeaseRequest
	werr := proto.Unmarshal(wire, &want)
	var pool countingPool
	var cuts []int
	if cut > 0 {
		cuts = []int{cut}
	}
	data := split(&pool, wire, cuts...)
	var f inFrame
	err := c.Unmarshal(data, &f)
	data.Free()
	defer func() {
		f.free()
		if out := pool.out.Load(); out != 0 {
			t.Fatalf("% x: %d buffers not returned", wire, out)
		}
	}()
	if (err == nil) != (werr == nil) {
		t.Fatalf("% x: codec error %v, proto error %v", wire, err, werr)
	}
	if err != nil {
		return
	}
	if want.GetData() != nil && !bytes.Equal(f.payload.Materialize(), want.GetData().GetData()) {
		t.Fatalf("% x: codec payload % x, proto % x", wire, f.payload.Materialize(), want.GetData().GetData())
	}
	got := &f.LeaseRequest
	if len(f.payload) > 1 && f.GetData().GetData() == nil {
		got = dataFrame(f.payload.Materialize()) // by reference, in pieces
	}
	if !proto.Equal(got, &want) {
		t.Fatalf("% x: codec decoded %v, proto %v", wire, got, &want)
	}
}

func FuzzCodecUnmarshal(f *testing.F) {
	for _, m := range []*poolv1.LeaseRequest{dataFrame([]byte("hello")), dataFrame(make([]byte, 300)), openFrame("echo"), releaseFrame(false), dataFrame(nil)} {
		b, _ := proto.Marshal(m)
		f.Add(b, 1)
		f.Add(b, 3)
	}
	f.Add([]byte{0x12, 0x04, 0x0a, 0x81, 0x00, 'a'}, 2)
	c := testCodec()
	f.Fuzz(func(t *testing.T, wire []byte, cut int) {
		if cut < 0 || cut >= len(wire) {
			cut = 0
		}
		checkDecodeLikeProto(t, c, wire, cut)
	})
}

// TestCodecLeaseWithPlainProtoClient leases through a server with the lease
// codec from a client without it (as grpcurl or another language's client
// would), with data frames of every size, including a 1 MiB frame that
// reaches the server in many HTTP/2 frames.
func TestCodecLeaseWithPlainProtoClient(t *testing.T) {
	env := newLeaseEnv(t, poolmgr.Config{}, codecOption(), grpc.MaxRecvMsgSize(DefaultMaxRecvMsgSize))

	// Without leasewire.FrameSizeKey (an older or another client) the server sends
	// data frames of at most relay.SmallRead bytes; with it, of at most what the
	// client asked for, within [relay.SmallRead, relay.LargeRead].
	for _, tc := range []struct {
		md   []string
		want int
	}{
		{nil, relay.SmallRead},
		{[]string{leasewire.FrameSizeKey, "junk"}, relay.SmallRead},
		{[]string{leasewire.FrameSizeKey, "100"}, relay.SmallRead},
		{[]string{leasewire.FrameSizeKey, "100000"}, 100000},
		{[]string{leasewire.FrameSizeKey, "4194304"}, relay.LargeRead},
	} {
		ctx := context.Background()
		if tc.md != nil {
			ctx = metadata.AppendToOutgoingContext(ctx, tc.md...)
		}
		s, err := env.client.Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, openFrame("echo"))
		recvGranted(t, s)
		if md, err := s.Header(); err != nil || len(md.Get(leasewire.FrameSizeKey)) != 1 || md.Get(leasewire.FrameSizeKey)[0] != strconv.Itoa(MaxDataFrame) {
			t.Fatalf("header %v, %v: want %s: %d", md, err, leasewire.FrameSizeKey, MaxDataFrame)
		}
		for _, n := range dataSizes {
			payload := bytes.Repeat([]byte{0x11, 0x22, 0x33, 0x44, 0x55}, n)[:n]
			mustSend(t, s, dataFrame(payload))
			got, largest := readEchoFrames(t, s, n)
			if !bytes.Equal(got, payload) {
				t.Fatalf("md %v, n=%d: echo differs", tc.md, n)
			}
			if largest > tc.want {
				t.Fatalf("md %v, n=%d: a %d-byte data frame, want at most %d", tc.md, n, largest, tc.want)
			}
		}
		mustSend(t, s, releaseFrame(true))
		if e := recvEnded(t, s); e.GetReason() != poolv1.EndReason_END_REASON_RELEASED {
			t.Fatalf("ended %v", e)
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
	}
}

// readEchoFrames reads n echoed bytes and the size of the largest frame.
func readEchoFrames(t *testing.T, s poolv1.LeaseService_LeaseClient, n int) (got []byte, largest int) {
	t.Helper()
	for len(got) < n {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		d := m.GetData().GetData()
		if len(d) == 0 && m.GetData().GetUpstreamWritten() > 0 {
			continue // a progress report
		}
		if len(d) == 0 {
			t.Fatalf("want data, got %v", m)
		}
		largest = max(largest, len(d))
		got = append(got, d...)
	}
	return got, largest
}
