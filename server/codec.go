package server

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/leasewire"
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

// relayHeadroom is the room kept in front of the payload in a relay buffer
// for the data frame's header.
const relayHeadroom = 32

// bufPool is a mem.BufferPool of buffers in a few sizes: those of the
// HTTP/2 frames gRPC reads, and those of the relay buffers (a data frame's
// payload, small or large, with relayHeadroom bytes in front). It serves
// both: the relay reads upstream bytes into its buffers, and gRPC's
// transport reads each HTTP/2 DATA frame into one of them (the server's
// buffer pool, set in New). Unlike grpc-go's default pool it does not zero
// a buffer it hands out: each user writes over the whole of it. That
// zeroing was about 2% of the CPU of a bulk transfer.
type bufPool struct {
	pools [len(bufSizes)]sync.Pool
}

// bufSizes are bufPool's sizes, ascending. A larger buffer is allocated
// and not kept.
var bufSizes = [...]int{4 << 10, 16 << 10, 32 << 10, relayHeadroom + largeRelay}

var relayBufs = &bufPool{}

var _ mem.BufferPool = (*bufPool)(nil)

// Get returns a buffer of length n.
func (p *bufPool) Get(n int) *[]byte {
	for i, size := range bufSizes {
		if n <= size {
			if bp, ok := p.pools[i].Get().(*[]byte); ok {
				*bp = (*bp)[:n]
				return bp
			}
			b := make([]byte, n, size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

// Put returns a buffer from Get.
func (p *bufPool) Put(bp *[]byte) {
	c := cap(*bp)
	for i, size := range bufSizes {
		if c == size {
			p.pools[i].Put(bp)
			return
		}
	}
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
// payload at relayHeadroom), writing the header in front of them; written
// is the lease's upstream_written. The caller frees d.msg after sending.
func (d *outData) set(buf mem.Buffer, n int, written uint64) {
	b := buf.ReadOnlyData()
	var hb [leasewire.MaxRespDataHeader]byte
	h := leasewire.AppendRespDataHeader(hb[:0], n, written)
	start := relayHeadroom - len(h)
	copy(b[start:], h)
	d.data.Data = b[relayHeadroom : relayHeadroom+n]
	d.data.UpstreamWritten = written
	d.msg = buf.Slice(start, relayHeadroom+n)
}

// free drops d's reference to the frame after sending.
func (d *outData) free() {
	d.msg.Free()
	d.msg = nil
	d.data.Data = nil
}

// upstreamReader reads an upstream connection into relay buffers.
//
// On a TCP or Unix socket it reads through the socket's RawConn, taking the
// buffer only once the socket is readable: a lease waiting for upstream
// bytes holds no buffer, so the reads can be large (up to size bytes, the
// data frame size the client accepts) without memory per idle lease. On
// anything else (a TLS connection) it reads a smallRelay-byte buffer at a
// time with Read, as the buffer is held while Read blocks. The zero value
// is ready for reset.
type upstreamReader struct {
	nc   net.Conn
	raw  syscall.RawConn // nil: read with nc.Read
	net  string          // "tcp" or "unix", for errors
	size int             // payload bytes per read

	// The RawConn callback (readFD, bound once) and its results.
	fn  func(fd uintptr) bool
	bp  *[]byte
	n   int
	err error
}

// reset points r at nc, to read up to size bytes at a time. A stream's
// leases reuse one reader.
func (r *upstreamReader) reset(nc net.Conn, size int) {
	if r.fn == nil {
		r.fn = r.readFD
	}
	r.nc, r.raw, r.size = nc, nil, smallRelay
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc, r.net = c, "tcp"
	case *net.UnixConn:
		sc, r.net = c, "unix"
	default:
		return
	}
	if raw, err := sc.SyscallConn(); err == nil {
		r.raw = raw
		r.size = size
	}
}

// read reads into a fresh relay buffer, the payload at relayHeadroom. It
// returns the buffer (nil when n is 0; the caller puts it back in
// relayBufs), the bytes read and an error as net.Conn.Read's: io.EOF at the
// end, os.ErrDeadlineExceeded at the read deadline, net.ErrClosed after
// Close.
func (r *upstreamReader) read() (bp *[]byte, n int, err error) {
	if r.raw == nil {
		bp = relayBufs.Get(relayHeadroom + r.size)
		n, err = r.nc.Read((*bp)[relayHeadroom:])
		if n == 0 {
			relayBufs.Put(bp)
			bp = nil
		}
		return bp, n, err
	}
	r.bp, r.n, r.err = nil, 0, nil
	if err := r.raw.Read(r.fn); err != nil {
		r.err = err // the deadline or Close, a *net.OpError of op "raw-read"
	}
	bp, n, err = r.bp, r.n, r.err
	r.bp = nil
	return compact(bp, n), n, err
}

// compact moves n bytes read into a relay buffer into a smaller pooled
// buffer when they fit one of at most 32 KiB, so that a small frame, which
// gRPC holds until it is written, does not hold a large buffer.
func compact(bp *[]byte, n int) *[]byte {
	if bp == nil || cap(*bp) <= 32<<10 || relayHeadroom+n > 32<<10 {
		return bp
	}
	sp := relayBufs.Get(relayHeadroom + n)
	copy((*sp)[relayHeadroom:], (*bp)[relayHeadroom:relayHeadroom+n])
	relayBufs.Put(bp)
	return sp
}

// readFD is the RawConn callback: one read(2) into a fresh buffer, which
// goes back to the pool when the socket has nothing yet (false: wait for
// it to become readable).
func (r *upstreamReader) readFD(fd uintptr) bool {
	bp := relayBufs.Get(relayHeadroom + r.size)
	var n int
	var err error
	for {
		n, err = syscall.Read(int(fd), (*bp)[relayHeadroom:])
		if err != syscall.EINTR {
			break
		}
	}
	switch {
	case err == syscall.EAGAIN:
		relayBufs.Put(bp)
		return false
	case err != nil:
		relayBufs.Put(bp)
		// As net.Conn.Read reports it (the lease's ended message).
		r.err = &net.OpError{Op: "read", Net: r.net, Source: r.nc.LocalAddr(),
			Addr: r.nc.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	case n == 0:
		relayBufs.Put(bp)
		r.err = io.EOF
	default:
		r.bp, r.n = bp, n
	}
	return true
}
