package testkit

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

func TestEchoServer(t *testing.T) {
	c, err := net.Dial("tcp", EchoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "ping" {
		t.Fatalf("echo %q, %v", b, err)
	}
}

func TestWaitForAndRecv(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	WaitFor(t, "three increments", func() bool { return n.Load() == 3 })
	ch := make(chan int, 1)
	ch <- 7
	if v := Recv(t, ch); v != 7 {
		t.Fatalf("Recv = %d", v)
	}
	var b SyncBuffer
	_, _ = b.Write([]byte("log"))
	if b.String() != "log" {
		t.Fatal(b.String())
	}
}

func TestWaitChanged(t *testing.T) {
	var mu sync.Mutex // protects n and changed
	n, changed := 0, make(chan struct{})
	get := func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed }
	go func() {
		for range 3 {
			mu.Lock()
			n++
			close(changed)
			changed = make(chan struct{})
			mu.Unlock()
		}
	}()
	WaitChanged(t, DefaultWait, "n to reach 3", get, func() bool { mu.Lock(); defer mu.Unlock(); return n == 3 }, nil)
}

func TestRecvOpenAndDrain(t *testing.T) {
	ch := make(chan int, 3)
	ch <- 1
	ch <- 2
	ch <- 3
	close(ch)
	if v := RecvOpen(t, ch); v != 1 {
		t.Fatalf("RecvOpen = %d", v)
	}
	if vs := Drain(t, ch); len(vs) != 2 || vs[0] != 2 || vs[1] != 3 {
		t.Fatalf("Drain = %v", vs)
	}
}
