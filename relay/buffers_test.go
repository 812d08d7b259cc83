package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestBufPool(t *testing.T) {
	for _, n := range []int{0, 1, 1000, 4 << 10, 4<<10 + 1, 16 << 10, Headroom + SmallRead, 32 << 10, 32<<10 + 1, Headroom + LargeRead, Headroom + LargeRead + 1, 1 << 20} {
		bp := Buffers.Get(n)
		if len(*bp) != n {
			t.Fatalf("Get(%d): len %d", n, len(*bp))
		}
		want := n // not pooled
		for _, size := range bufSizes {
			if n <= size {
				want = size
				break
			}
		}
		if cap(*bp) != want {
			t.Fatalf("Get(%d): cap %d, want %d", n, cap(*bp), want)
		}
		Buffers.Put(bp)
	}
	if Headroom+SmallRead > 32<<10 {
		t.Fatal("a small relay buffer does not fit the 32 KiB size")
	}
}

// TestUpstreamReader reads a TCP upstream through the RawConn path: data in
// buffers of the asked size, small reads moved to small buffers, the read
// deadline, EOF and a closed connection as net.Conn.Read reports them.
func TestUpstreamReader(t *testing.T) {
	nc, peer := tcpPair(t)
	var r Reader
	r.Reset(nc, LargeRead)
	if r.raw == nil || r.size != LargeRead {
		t.Fatalf("TCP upstream: raw %v, size %d", r.raw != nil, r.size)
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	bp, n, err := r.Read()
	if err != nil || n != 5 || string((*bp)[Headroom:Headroom+n]) != "hello" {
		t.Fatalf("read: %d, %v", n, err)
	}
	if cap(*bp) != 4<<10 {
		t.Fatalf("5 bytes in a %d-byte buffer, want 4 KiB", cap(*bp))
	}
	Buffers.Put(bp)

	big := bytes.Repeat([]byte{7}, 2<<20)
	go func() { _, _ = peer.Write(big) }()
	var got int
	for got < len(big) {
		bp, n, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		if n > LargeRead || len(*bp) < Headroom+n {
			t.Fatalf("read %d into %d bytes", n, len(*bp))
		}
		got += n
		Buffers.Put(bp)
	}

	if err := nc.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if bp, n, err := r.Read(); bp != nil || n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("at the deadline: %v, %d, %v", bp != nil, n, err)
	}
	if err := nc.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	if bp, n, err := r.Read(); bp != nil || n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("at EOF: %v, %d, %v", bp != nil, n, err)
	}
	nc.Close()
	if _, _, err := r.Read(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}

	// A reset reads as it does through Read.
	nc, peer = tcpPair(t)
	r.Reset(nc, LargeRead)
	if err := peer.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	want := "read tcp " + nc.LocalAddr().String() + "->" + nc.RemoteAddr().String() + ": read: connection reset by peer"
	if _, _, err := r.Read(); !errors.Is(err, syscall.ECONNRESET) || err.Error() != want {
		t.Fatalf("after a reset: %v, want %s", err, want)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (near, far net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	near, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { near.Close() })
	far = <-accepted
	if far == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { far.Close() })
	return near, far
}
