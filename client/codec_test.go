package client

import (
	"bytes"
	"context"
	"strconv"
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
)

func testCodec() leaseCodec { return leaseCodec{proto: encoding.GetCodecV2(gproto.Name)} }

var codecSizes = []int{1, 2, 63, 64, 127, 128, 1000, 1 << 10, smallBufSize - leasewire.MaxDataHeader, smallBufSize, 16 << 10, midBufSize - leasewire.MaxDataHeader, midBufSize - leasewire.MaxDataHeader + 1, maxFrame}

func TestCodecEncodesDataLikeProto(t *testing.T) {
	c := testCodec()
	for _, n := range append(codecSizes, 0, maxFrame+1, 1<<20) {
		payload := bytes.Repeat([]byte{0xa5, 0x01}, n)[:n]
		for _, req := range []*poolv1.LeaseRequest{dataReq(payload[:min(n, maxFrame)]), {Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: payload}}}} {
			got, err := c.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			want, err := proto.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Materialize(), want) {
				t.Fatalf("n=%d: codec and proto differ", n)
			}
			got.Free()
			putFrame(req)
		}
	}
	for _, req := range []*poolv1.LeaseRequest{
		{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo", AcquireTimeout: durationpb.New(3e9), ClientName: "x"}}},
		{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: true}}},
		{Frame: &poolv1.LeaseRequest_CloseWrite_{CloseWrite: &poolv1.LeaseRequest_CloseWrite{}}},
		{Frame: &poolv1.LeaseRequest_Data_{}},
		{},
	} {
		got, err := c.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := proto.Marshal(req)
		if !bytes.Equal(got.Materialize(), want) {
			t.Fatalf("%v: codec and proto differ", req)
		}
	}
}

// pieces cuts b into buffers at the given offsets, as gRPC's receive path
// hands a message to the codec (one buffer per HTTP/2 frame).
func pieces(b []byte, cuts ...int) mem.BufferSlice {
	var s mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(b)) {
		if c <= prev || c > len(b) {
			continue
		}
		s = append(s, mem.SliceBuffer(bytes.Clone(b[prev:c])))
		prev = c
	}
	return s
}

func TestCodecDecodesDataLikeProto(t *testing.T) {
	c := testCodec()
	f := new(respFrame)
	var prev []byte
	for _, n := range codecSizes {
		payload := bytes.Repeat([]byte{0x5a, 0x02, 0x03}, n)[:n]
		wire, _ := proto.Marshal(&poolv1.LeaseResponse{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: payload}}})
		for _, cuts := range [][]int{nil, {1}, {2}, {3}, {4}, {5}, {len(wire) / 2}, {1, 2, 3, 4, 5, 6}, {len(wire) - 1}} {
			checkRespLikeProto(t, c, f, wire, cuts...)
			// A chunk handed to a Conn stays valid after the next frame.
			if prev != nil && !bytes.Equal(prev, bytes.Repeat([]byte{0x5a, 0x02, 0x03}, len(prev))[:len(prev)]) {
				t.Fatal("the previous chunk changed")
			}
			prev = f.GetData().GetData()
		}
	}
	for _, m := range []*poolv1.LeaseResponse{
		{Frame: &poolv1.LeaseResponse_Granted_{Granted: &poolv1.LeaseResponse_Granted{LeaseId: "pools/a/leases/1", UpstreamAddr: "127.0.0.1:1", IdleTime: durationpb.New(5)}}},
		{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{Reason: poolv1.EndReason_END_REASON_RELEASED, Reused: true}}},
		{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{}}},
		{},
	} {
		wire, _ := proto.Marshal(m)
		checkRespLikeProto(t, c, f, wire)
	}
	for _, wire := range [][]byte{
		{0x12, 0x03, 0x0a, 0x01, 'a', 0x12, 0x03, 0x0a, 0x01, 'b'},
		{0x12, 0x05, 0x0a, 0x01, 'a', 0x10, 0x01},
		{0x12, 0x04, 0x0a, 0x81, 0x00, 'a'},
		{0x12, 0x83, 0x00, 0x0a, 0x01, 'a'},
	} {
		checkRespLikeProto(t, c, f, wire)
	}
}

// checkRespLikeProto decodes wire (cut at cuts) into f with the codec and
// with proto and fails unless they agree.
func checkRespLikeProto(t *testing.T, c leaseCodec, f *respFrame, wire []byte, cuts ...int) {
	t.Helper()
	var want poolv1.LeaseResponse
	werr := proto.Unmarshal(wire, &want)
	err := c.Unmarshal(pieces(wire, cuts...), f)
	if (err == nil) != (werr == nil) {
		t.Fatalf("% x: codec error %v, proto error %v", wire, err, werr)
	}
	if err == nil && !proto.Equal(&f.LeaseResponse, &want) {
		t.Fatalf("% x: codec decoded %v, proto %v", wire, &f.LeaseResponse, &want)
	}
}

func FuzzCodecUnmarshal(f *testing.F) {
	for _, m := range []*poolv1.LeaseResponse{
		{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: []byte("hello")}}},
		{Frame: &poolv1.LeaseResponse_Data_{Data: &poolv1.LeaseResponse_Data{Data: make([]byte, 300)}}},
		{Frame: &poolv1.LeaseResponse_Ended_{Ended: &poolv1.LeaseResponse_Ended{Reason: poolv1.EndReason_END_REASON_RELEASED}}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b, 1)
		f.Add(b, 3)
	}
	f.Add([]byte{0x12, 0x04, 0x0a, 0x81, 0x00, 'a'}, 2)
	c := testCodec()
	f.Fuzz(func(t *testing.T, wire []byte, cut int) {
		var cuts []int
		if cut > 0 && cut < len(wire) {
			cuts = []int{cut}
		}
		checkRespLikeProto(t, c, new(respFrame), wire, cuts...)
	})
}

// TestFrameSizeNegotiation checks that Write sends data frames of at most
// smallDataFrame bytes to a server that does not say it takes larger ones
// (an older poold), and of the size it says (at most maxFrame) otherwise;
// and that the SDK says it takes frames of maxFrame bytes.
func TestFrameSizeNegotiation(t *testing.T) {
	for _, tc := range []struct {
		header string // the server's leasewire.FrameSizeKey header, "" for none
		want   int
	}{
		{"", smallDataFrame},
		{"junk", smallDataFrame},
		{"1000", smallDataFrame},
		{"40000", 40000},
		{strconv.Itoa(1 << 20), maxFrame},
	} {
		f := newFake(t)
		asked := make(chan []string, 1)
		f.onOpen = func(ctx context.Context, _ *poolv1.LeaseRequest_Open) error {
			md, _ := metadata.FromIncomingContext(ctx)
			asked <- md.Get(leasewire.FrameSizeKey)
			if tc.header != "" {
				return grpc.SetHeader(ctx, metadata.Pairs(leasewire.FrameSizeKey, tc.header))
			}
			return nil
		}
		c := newTestClient(t, f)
		conn := leaseAPI(t, c)
		if got := <-asked; len(got) != 1 || got[0] != strconv.Itoa(maxFrame) {
			t.Fatalf("the SDK sent %s %q, want %d", leasewire.FrameSizeKey, got, maxFrame)
		}
		l := <-f.leases
		payload := bytes.Repeat([]byte{1, 2, 3}, 1<<20)
		werr := make(chan error, 1)
		go func() {
			_, err := conn.Write(payload)
			werr <- err
		}()
		// The fake writes each data frame to the pipe at once, and a pipe
		// read returns at most one write.
		buf := make([]byte, 2<<20)
		var got []byte
		largest := 0
		for len(got) < len(payload) {
			n, err := l.far.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			largest = max(largest, n)
			got = append(got, buf[:n]...)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("header %q: the upstream got other bytes", tc.header)
		}
		if largest != tc.want {
			t.Fatalf("header %q: largest data frame %d bytes, want %d", tc.header, largest, tc.want)
		}
		conn.Close()
	}
}
