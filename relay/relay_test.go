package relay

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"

	"github.com/poolplane/poolplane/internal/testkit"
)

// fakeUp is an Upstream over one end of a TCP pair.
type fakeUp struct {
	nc      net.Conn
	done    chan struct{}
	reason  poolmgr.CloseReason
	handler protocol.Handler
	// resetTimeout is ResetTimeout's answer (0: 5 s).
	resetTimeout time.Duration
	// discarded is the reason of Discard; read after released.
	discarded poolmgr.CloseReason
	released  chan bool // the reusable flag of the one Release
}

func newFakeUp(nc net.Conn) *fakeUp {
	return &fakeUp{nc: nc, done: make(chan struct{}), released: make(chan bool, 1)}
}

func (u *fakeUp) NetConn() net.Conn                { return u.nc }
func (u *fakeUp) Done() <-chan struct{}            { return u.done }
func (u *fakeUp) CloseReason() poolmgr.CloseReason { return u.reason }
func (u *fakeUp) AddBytes(int64, int64)            {}
func (u *fakeUp) Release(reusable bool)            { u.released <- reusable }
func (u *fakeUp) Discard(r poolmgr.CloseReason) {
	u.discarded = r
	u.released <- false
}
func (u *fakeUp) ProtocolState() any         { return nil }
func (u *fakeUp) Protocol() protocol.Handler { return u.handler }
func (u *fakeUp) ResetTimeout() time.Duration {
	if u.resetTimeout == 0 {
		return 5 * time.Second
	}
	return u.resetTimeout
}

// revoke closes the connection as the pool does on RevokeLease.
func (u *fakeUp) revoke(r poolmgr.CloseReason) {
	u.reason = r
	close(u.done)
	_ = u.nc.Close()
}

// fakeSink records a lease's events.
type fakeSink struct {
	mu         sync.Mutex // protects data and closeWrite
	data       []byte
	closeWrite bool
	ended      chan End
}

func newFakeSink() *fakeSink { return &fakeSink{ended: make(chan End, 1)} }

func (s *fakeSink) Data(bp *[]byte, n int, _ int64) error {
	s.mu.Lock()
	s.data = append(s.data, (*bp)[Headroom:Headroom+n]...)
	s.mu.Unlock()
	Buffers.Put(bp)
	return nil
}
func (s *fakeSink) Progress(int64) error { return nil }
func (s *fakeSink) CloseWrite() error {
	s.mu.Lock()
	s.closeWrite = true
	s.mu.Unlock()
	return nil
}
func (s *fakeSink) Ended(e End) error { s.ended <- e; return nil }

func (s *fakeSink) got() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.data), s.closeWrite
}

// TestReuseDecision: Release reuses a connection only on the client's word
// with nothing seen on the lease that makes it unfit; every other path
// releases it for closing, with the reason the client side is told.
func TestReuseDecision(t *testing.T) {
	tests := []struct {
		name      string
		halfClose bool
		act       func(t *testing.T, l *Lease, up *fakeUp, far net.Conn, s *fakeSink)
		reusable  bool // the client's word at Release
		release   bool // the client side releases (else the lease ends upstream)
		want      End
	}{
		{name: "clean release", release: true, reusable: true,
			act:  func(*testing.T, *Lease, *fakeUp, net.Conn, *fakeSink) {},
			want: End{Reason: Released, Reused: true, Written: 4}},
		{name: "client says not reusable", release: true, reusable: false,
			act:  func(*testing.T, *Lease, *fakeUp, net.Conn, *fakeSink) {},
			want: End{Reason: Released, Written: 4}},
		{name: "client half-closed", release: true, reusable: true,
			act: func(_ *testing.T, l *Lease, _ *fakeUp, _ net.Conn, _ *fakeSink) {
				l.CloseWrite()
			},
			want: End{Reason: Released, Written: 4}},
		{name: "upstream half-closed, client takes it", halfClose: true, release: true, reusable: true,
			act: func(t *testing.T, _ *Lease, _ *fakeUp, far net.Conn, s *fakeSink) {
				_ = far.(*net.TCPConn).CloseWrite()
				testkit.WaitFor(t, "close_write", func() bool { _, cw := s.got(); return cw })
			},
			want: End{Reason: Released, Written: 4}},
		{name: "upstream EOF, client does not take half-closes",
			act: func(_ *testing.T, _ *Lease, _ *fakeUp, far net.Conn, _ *fakeSink) {
				_ = far.Close()
			},
			want: End{Reason: UpstreamEOF, Written: 4}},
		{name: "revoked",
			act: func(_ *testing.T, _ *Lease, up *fakeUp, _ net.Conn, _ *fakeSink) {
				up.revoke(poolmgr.CloseRevoked)
			},
			want: End{Reason: Revoked, Written: 4}},
		{name: "max_lease_duration",
			act: func(_ *testing.T, _ *Lease, up *fakeUp, _ net.Conn, _ *fakeSink) {
				up.revoke(poolmgr.CloseMaxLeaseDuration)
			},
			want: End{Reason: MaxLeaseDuration, Written: 4}},
		{name: "shutdown",
			act: func(_ *testing.T, l *Lease, _ *fakeUp, _ net.Conn, _ *fakeSink) {
				l.Cut(Shutdown)
			},
			want: End{Reason: Shutdown, Written: 4}},
		{name: "cut by the client side's end, then released", release: true, reusable: true,
			act: func(t *testing.T, l *Lease, _ *fakeUp, _ net.Conn, _ *fakeSink) {
				l.Cut(ReasonNone)
				testkit.WaitFor(t, "the reader to stop", func() bool { return l.ended.Load() })
			},
			want: End{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			near, far := tcpPair(t)
			up := newFakeUp(near)
			s := newFakeSink()
			l := New(up, s, Options{HalfClose: tc.halfClose})
			l.Start()
			l.Write(net.Buffers{[]byte("ping")})
			buf := make([]byte, 4)
			if _, err := io.ReadFull(far, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("upstream read %q, %v", buf, err)
			}
			if _, err := far.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, "the reply", func() bool { d, _ := s.got(); return d == "pong" })
			tc.act(t, l, up, far, s)
			if tc.release {
				if err := l.Release(tc.reusable); err != nil {
					t.Fatal(err)
				}
			} else {
				l.Wait(nil)
			}
			if tc.want == (End{}) {
				select {
				case e := <-s.ended:
					if e.Reason != UpstreamError && e.Reason != ReasonNone {
						t.Fatalf("ended %+v after a cut with no reason", e)
					}
				default:
				}
				if testkit.Recv(t, up.released) {
					t.Fatal("a cut connection was reused")
				}
				return
			}
			if e := testkit.Recv(t, s.ended); e.Reason != tc.want.Reason || e.Reused != tc.want.Reused || e.Written != tc.want.Written {
				t.Fatalf("ended %+v; want %+v", e, tc.want)
			}
			if reused := testkit.Recv(t, up.released); reused != tc.want.Reused {
				t.Fatalf("Release(%v); want %v", reused, tc.want.Reused)
			}
		})
	}
}

// TestWriteAfterUpstreamHalfClose: with HalfClose, client bytes reach the
// upstream after its FIN.
func TestWriteAfterUpstreamHalfClose(t *testing.T) {
	near, far := tcpPair(t)
	up := newFakeUp(near)
	s := newFakeSink()
	l := New(up, s, Options{HalfClose: true})
	l.Start()
	_ = far.(*net.TCPConn).CloseWrite()
	testkit.WaitFor(t, "close_write", func() bool { _, cw := s.got(); return cw })
	l.Write(net.Buffers{[]byte("late"), []byte(" bytes")})
	buf := make([]byte, 10)
	if _, err := io.ReadFull(far, buf); err != nil || string(buf) != "late bytes" {
		t.Fatalf("upstream read %q, %v", buf, err)
	}
	if err := l.Release(true); err != nil {
		t.Fatal(err)
	}
	if e := testkit.Recv(t, s.ended); e.Reason != Released || e.Reused || e.Written != 10 {
		t.Fatalf("ended %+v", e)
	}
}

// TestReaderOnLentGoroutine: with Options.Go the reader runs where the
// client side puts it (here, a goroutine the test owns) and Release ends
// it there as on a goroutine of the relay's own.
func TestReaderOnLentGoroutine(t *testing.T) {
	near, far := tcpPair(t)
	up := newFakeUp(near)
	s := newFakeSink()
	lent := make(chan func(), 1)
	l := New(up, s, Options{Go: func(reader func()) { lent <- reader }})
	l.Start()
	reader := testkit.Recv(t, lent)
	ran := make(chan struct{})
	go func() {
		reader()
		close(ran)
	}()
	if _, err := far.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the reply", func() bool { d, _ := s.got(); return d == "pong" })
	if err := l.Release(true); err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, ran) // the reader returned
	if e := testkit.Recv(t, s.ended); e.Reason != Released || !e.Reused {
		t.Fatalf("ended %+v", e)
	}
}

// TestCutAfterRelease: a cut that comes after a clean release (the client
// side's stream ending just after its release) leaves the connection
// alone: it is back in the pool, idle or leased to another client, and a
// past deadline on it would fail that client's reads.
func TestCutAfterRelease(t *testing.T) {
	near, far := tcpPair(t)
	up := newFakeUp(near)
	s := newFakeSink()
	l := New(up, s, Options{})
	l.Start()
	l.Write(net.Buffers{[]byte("ping")})
	buf := make([]byte, 4)
	if _, err := io.ReadFull(far, buf); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(true); err != nil {
		t.Fatal(err)
	}
	if !testkit.Recv(t, up.released) {
		t.Fatal("a clean release was not reusable")
	}
	l.Cut(Shutdown)
	// The next lease's read: bytes the upstream sends must arrive, not a
	// timeout left by the stale cut.
	if _, err := far.Write([]byte("next")); err != nil {
		t.Fatal(err)
	}
	n, err := near.Read(buf) // no deadline of its own: "next" is there already

	if err != nil || string(buf[:n]) != "next" {
		t.Fatalf("read after a late cut: %q, %v", buf[:n], err)
	}
}
