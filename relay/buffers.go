package relay

import (
	"github.com/poolplane/poolplane/internal/leasewire"
	"io"
	"net"
	"os"
	"syscall"
)

// Headroom is the room kept in front of the payload in a relay buffer,
// for the client side's frame header (a lease data frame's is at most 23
// bytes).
const Headroom = 32

// bufSizes are the sizes of Buffers: those of the HTTP/2 frames gRPC
// reads, and those of the relay buffers (a read's payload, small or
// large, with Headroom bytes in front).
var bufSizes = [...]int{4 << 10, 16 << 10, 32 << 10, Headroom + LargeRead}

// Buffers is the pool of relay buffers. It serves both the relay's
// upstream reads and, on the server, gRPC's transport, which reads each
// HTTP/2 DATA frame into one of them; it has the methods of gRPC's
// mem.BufferPool, so a gRPC client side wraps the relay's buffers without a
// copy.
var Buffers = leasewire.NewTieredPool(bufSizes[:]...)

// Reader reads an upstream connection into relay buffers.
//
// On a TCP or Unix socket it reads through the socket's RawConn, taking the
// buffer only once the socket is readable: a lease waiting for upstream
// bytes holds no buffer, so the reads can be large (up to size bytes, the
// data frame size the client accepts) without memory per idle lease. On
// anything else (a TLS connection) it reads a SmallRead-byte buffer at a
// time with Read, as the buffer is held while Read blocks. The zero value
// is ready for reset.
type Reader struct {
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

// Reset points r at nc, to read up to size bytes at a time. A stream's
// leases reuse one reader.
func (r *Reader) Reset(nc net.Conn, size int) {
	if r.fn == nil {
		r.fn = r.readFD
	}
	r.nc, r.raw, r.size = nc, nil, SmallRead
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

// Read reads into a fresh relay buffer, the payload at Headroom. It
// returns the buffer (nil when n is 0; the caller puts it back in
// Buffers), the bytes read and an error as net.Conn.Read's: io.EOF at the
// end, os.ErrDeadlineExceeded at the read deadline, net.ErrClosed after
// Close.
func (r *Reader) Read() (bp *[]byte, n int, err error) {
	if r.raw == nil {
		bp = Buffers.Get(Headroom + r.size)
		n, err = r.nc.Read((*bp)[Headroom:])
		if n == 0 {
			Buffers.Put(bp)
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
	if bp == nil || cap(*bp) <= 32<<10 || Headroom+n > 32<<10 {
		return bp
	}
	sp := Buffers.Get(Headroom + n)
	copy((*sp)[Headroom:], (*bp)[Headroom:Headroom+n])
	Buffers.Put(bp)
	return sp
}

// readFD is the RawConn callback: one read(2) into a fresh buffer, which
// goes back to the pool when the socket has nothing yet (false: wait for
// it to become readable).
func (r *Reader) readFD(fd uintptr) bool {
	bp := Buffers.Get(Headroom + r.size)
	var n int
	var err error
	for {
		n, err = syscall.Read(int(fd), (*bp)[Headroom:])
		if err != syscall.EINTR {
			break
		}
	}
	switch {
	case err == syscall.EAGAIN:
		Buffers.Put(bp)
		return false
	case err != nil:
		Buffers.Put(bp)
		// As net.Conn.Read reports it (the lease's ended message).
		r.err = &net.OpError{Op: "read", Net: r.net, Source: r.nc.LocalAddr(),
			Addr: r.nc.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	case n == 0:
		Buffers.Put(bp)
		r.err = io.EOF
	default:
		r.bp, r.n = bp, n
	}
	return true
}
