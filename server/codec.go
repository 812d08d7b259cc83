package server

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
	"github.com/poolplane/poolplane/relay"
)

// The lease codec is the server's gRPC codec: protobuf, with a fast path for
// the lease data frames, which carry nearly every byte the server handles.
// A data frame is two nested length-delimited fields around the payload
// (LeaseRequest.data = 2 or LeaseResponse.data = 2, then Data.data = 1), so
// the codec writes or reads those few header bytes by hand instead of
// copying the payload through proto.Marshal and proto.Unmarshal:
//
//   - an outgoing data frame (*outData, built by the relay) is the upstream
//     read buffer itself, its header written into the room kept in front of
//     the payload, handed to gRPC by reference;
//   - an incoming data frame decoded into an *inFrame keeps references to
//     gRPC's receive buffers, and the relay writes them to the upstream
//     before freeing them.
//
// Everything else, and any data frame not in the exact shape proto.Marshal
// gives it, goes through grpc-go's own proto codec, so the bytes on the
// wire are plain protobuf and every other client (grpcurl included) is
// unaffected. The codec keeps no state of its own.
type leaseCodec struct {
	proto encoding.CodecV2
}

// codecOption installs the lease codec on a server. It handles every
// message type, so it can be forced on the whole server.
func codecOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(leaseCodec{proto: encoding.GetCodecV2(proto.Name)})
}

var _ encoding.CodecV2 = leaseCodec{}

// Name is "proto": the codec speaks protobuf, and the content-subtype stays
// what every client sends.
func (leaseCodec) Name() string { return proto.Name }

// Marshal encodes an *outData by reference and anything else with proto.
func (c leaseCodec) Marshal(v any) (mem.BufferSlice, error) {
	if d, ok := v.(*outData); ok && d.msg != nil {
		d.msg.Ref() // gRPC frees it once written
		return mem.BufferSlice{d.msg}, nil
	}
	return c.proto.Marshal(v)
}

// Unmarshal decodes a data frame into an *inFrame by reference and anything
// else with proto.
func (c leaseCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*inFrame)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	f.free()
	if f.decodeData(data) {
		return nil
	}
	if err := c.proto.Unmarshal(data, &f.LeaseRequest); err != nil {
		return err
	}
	if d, ok := f.Frame.(*poolv1.LeaseRequest_Data_); ok {
		f.payload = append(f.payload, mem.SliceBuffer(d.Data.GetData()))
	}
	return nil
}

// inFrame is a LeaseRequest as the receive loop reads it. The codec decodes
// a data frame into it by reference: payload holds references to gRPC's
// receive buffers (the Data message's bytes alias them when they are one
// buffer and are nil otherwise); the receive loop writes them out and frees
// them with free before the next read. Other frames are decoded by proto
// into the embedded LeaseRequest. It is a proto.Message, for interceptors.
type inFrame struct {
	poolv1.LeaseRequest
	payload mem.BufferSlice // a data frame's bytes, referenced; nil otherwise

	oneof poolv1.LeaseRequest_Data_ // reused for data frames
	data  poolv1.LeaseRequest_Data
}

// decodeData decodes a data frame by reference, or reports false and leaves
// f untouched.
func (f *inFrame) decodeData(data mem.BufferSlice) bool {
	total := data.Len()
	var hb [leasewire.MaxDataHeader]byte
	head := hb[:0]
	for _, b := range data {
		head = append(head, b.ReadOnlyData()[:min(b.Len(), cap(head)-len(head))]...)
		if len(head) == cap(head) {
			break
		}
	}
	hlen, ok := leasewire.ParseDataHeader(head, total)
	if !ok {
		return false
	}
	f.Reset()
	skip := hlen
	for _, b := range data {
		n := b.Len()
		switch {
		case skip >= n:
			skip -= n
		case skip > 0:
			f.payload = append(f.payload, b.Slice(skip, n)) // takes a reference
			skip = 0
		default:
			b.Ref()
			f.payload = append(f.payload, b)
		}
	}
	f.data.Data = nil
	if len(f.payload) == 1 {
		f.data.Data = f.payload[0].ReadOnlyData()
	}
	f.oneof.Data = &f.data
	f.Frame = &f.oneof
	return true
}

// free drops the references to a data frame's bytes.
func (f *inFrame) free() {
	for i, b := range f.payload {
		b.Free()
		f.payload[i] = nil
	}
	f.payload = f.payload[:0]
	f.data.Data = nil
}

// outData is an outgoing data frame as the relay builds it in a relay
// buffer. It is a proto.Message (the embedded LeaseResponse, its bytes
// aliasing the payload), for interceptors and stats handlers; the codec
// sends msg, the encoded frame, by reference.
type outData struct {
	poolv1.LeaseResponse
	oneof poolv1.LeaseResponse_Data_
	data  poolv1.LeaseResponse_Data
	msg   mem.Buffer // the encoded frame: header and payload
}

func newOutData() *outData {
	d := &outData{}
	d.oneof.Data = &d.data
	d.Frame = &d.oneof
	return d
}

// set points d at the n payload bytes read into buf (a relay buffer, the
// payload at relay.Headroom), writing the header in front of them; written
// is the lease's upstream_written. The caller frees d.msg after sending.
func (d *outData) set(buf mem.Buffer, n int, written uint64) {
	b := buf.ReadOnlyData()
	var hb [leasewire.MaxRespDataHeader]byte
	h := leasewire.AppendRespDataHeader(hb[:0], n, written)
	start := relay.Headroom - len(h)
	copy(b[start:], h)
	d.data.Data = b[relay.Headroom : relay.Headroom+n]
	d.data.UpstreamWritten = written
	d.msg = buf.Slice(start, relay.Headroom+n)
}

// free drops d's reference to the frame after sending.
func (d *outData) free() {
	d.msg.Free()
	d.msg = nil
	d.data.Data = nil
}
