package client

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
)

// leaseCodec is the gRPC codec of the Lease call (a CallOption on that call
// only): protobuf, with a fast path for the data frames that carry nearly
// every byte. A data frame is two nested length-delimited fields around the
// payload (LeaseRequest.data = 2 or LeaseResponse.data = 2, then Data.data
// = 1), so the codec writes or reads those few header bytes by hand:
//
//   - an outgoing data frame is written, header and payload, into one
//     pooled buffer that gRPC hands back once it is on the wire (proto
//     would size the message, then marshal it into a zeroed buffer);
//   - an incoming data frame decoded into a *respFrame reuses its
//     messages and copies the payload once, into the chunk a Read gets.
//
// Everything else, and any frame not in the exact shape proto.Marshal gives
// it, goes through grpc-go's own proto codec: the bytes on the wire are
// plain protobuf. The codec keeps no per-call state.
type leaseCodec struct {
	proto encoding.CodecV2
}

var _ encoding.CodecV2 = leaseCodec{}

// leaseCallOption sets the lease codec on a Lease call.
func leaseCallOption() grpc.CallOption {
	return grpc.ForceCodecV2(leaseCodec{proto: encoding.GetCodecV2(proto.Name)})
}

// Name is "proto": the codec speaks protobuf and the content-subtype stays
// the one every server expects.
func (leaseCodec) Name() string { return proto.Name }

// Marshal encodes a LeaseRequest data frame by hand and anything else with
// proto.
func (c leaseCodec) Marshal(v any) (mem.BufferSlice, error) {
	if req, ok := v.(*poolv1.LeaseRequest); ok {
		if b := marshalData(req); b != nil {
			return mem.BufferSlice{b}, nil
		}
	}
	return c.proto.Marshal(v)
}

// Unmarshal decodes a data frame into a *respFrame by hand and anything else
// with proto.
func (c leaseCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*respFrame); ok {
		if f.decodeData(data) {
			return nil
		}
		return c.proto.Unmarshal(data, &f.LeaseResponse)
	}
	return c.proto.Unmarshal(data, v)
}

// marshalData encodes req into a pooled buffer if it is a data frame of at
// most maxFrame bytes with no unknown fields, as proto.Marshal would; it
// returns nil otherwise.
func marshalData(req *poolv1.LeaseRequest) mem.Buffer {
	f, ok := req.GetFrame().(*poolv1.LeaseRequest_Data_)
	if !ok || f.Data == nil {
		return nil
	}
	p := f.Data.GetData()
	if len(p) == 0 || len(p) > maxFrame ||
		len(req.ProtoReflect().GetUnknown()) > 0 || len(f.Data.ProtoReflect().GetUnknown()) > 0 {
		return nil
	}
	pool := &largeBufs
	switch {
	case len(p) <= smallBufSize-leasewire.MaxDataHeader:
		pool = &smallBufs
	case len(p) <= midBufSize-leasewire.MaxDataHeader:
		pool = &midBufs
	}
	bp := pool.Get(0)
	b := append(leasewire.AppendDataHeader((*bp)[:0], len(p)), p...)
	*bp = b
	return mem.NewBuffer(bp, pool)
}

// Encoded data frames go into buffers of three sizes that gRPC returns once
// written. Unlike grpc-go's pools these do not zero a buffer they hand out:
// it is written over. The small size is above mem's pooling threshold
// (1 KiB), below which gRPC would not return the buffer; the middle one
// holds a 32 KiB write.
const (
	smallBufSize = 2 << 10
	midBufSize   = midFrame + leasewire.MaxDataHeader
)

var (
	smallBufs = frameBufPool{size: smallBufSize}
	midBufs   = frameBufPool{size: midBufSize}
	largeBufs = frameBufPool{size: maxFrame + leasewire.MaxDataHeader}
)

// frameBufPool is a mem.BufferPool of buffers of one size.
type frameBufPool struct {
	size int
	p    sync.Pool
}

var _ mem.BufferPool = (*frameBufPool)(nil)

// Get returns a buffer of length n (at most the pool's size).
func (p *frameBufPool) Get(n int) *[]byte {
	if bp, ok := p.p.Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, p.size)
	return &b
}

// Put returns a buffer from Get.
func (p *frameBufPool) Put(bp *[]byte) {
	if cap(*bp) == p.size {
		p.p.Put(bp)
	}
}

// respFrame is a LeaseResponse as the receive goroutine reads it: the codec
// decodes a data frame into it reusing its messages, so only the payload is
// allocated (it becomes the chunk a Read takes). It is a proto.Message, for
// interceptors.
type respFrame struct {
	poolv1.LeaseResponse
	oneof poolv1.LeaseResponse_Data_
	data  poolv1.LeaseResponse_Data
	// pooled is the payloadBufs buffer of a data frame's bytes, nil for a
	// frame proto decoded; the receive goroutine hands it on with them.
	pooled *[]byte
}

// payloadBufs holds the buffers data frames are decoded into: the copy a
// Read takes from goes back once read to its end, so a bulk transfer
// neither allocates nor zeroes a buffer per frame.
var payloadBufs = leasewire.NewTieredPool(4<<10, 32<<10, maxFrame)

// putPayload returns a payloadBufs buffer; nil is none.
func putPayload(bp *[]byte) {
	if bp != nil {
		payloadBufs.Put(bp)
	}
}

// decodeData decodes a data frame, or reports false and leaves f untouched.
func (f *respFrame) decodeData(data mem.BufferSlice) bool {
	total := data.Len()
	var hb [leasewire.MaxRespDataHeader]byte
	head := hb[:0]
	for _, b := range data {
		head = append(head, b.ReadOnlyData()[:min(b.Len(), cap(head)-len(head))]...)
		if len(head) == cap(head) {
			break
		}
	}
	hlen, written, ok := leasewire.ParseRespDataHeader(head, total)
	if !ok {
		return false
	}
	bp := payloadBufs.Get(total - hlen)
	p := *bp
	skip, off := hlen, 0
	for _, b := range data {
		d := b.ReadOnlyData()
		if skip >= len(d) {
			skip -= len(d)
			continue
		}
		off += copy(p[off:], d[skip:])
		skip = 0
	}
	f.Reset()
	f.data.Data = p
	f.data.UpstreamWritten = written
	f.oneof.Data = &f.data
	f.Frame = &f.oneof
	f.pooled = bp
	return true
}

// recvBufs is the buffer pool of the SDK's gRPC connections: gRPC reads
// each HTTP/2 DATA frame (at most 16 KiB) into one of its buffers.
var recvBufs = leasewire.NewTieredPool(4<<10, 16<<10, 32<<10)

var _ mem.BufferPool = (*leasewire.TieredPool)(nil)
