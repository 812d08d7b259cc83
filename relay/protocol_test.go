package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/protocol"
)

// lineProto is a protocol of lines: each request line has one reply line.
// A request line "STUCK" leaves state no reset clears. Its reset writes
// "RESET\n" and expects every outstanding reply, then "OK\n".
type lineProto struct{}

func (lineProto) Setup(_ context.Context, nc net.Conn) (net.Conn, any, error) { return nc, nil, nil }
func (lineProto) Probe(net.Conn) error                                        { return nil }
func (lineProto) NewSession(any) protocol.Session                             { return &lineSession{} }

type lineSession struct {
	sent, got atomic.Int64
	partial   bool // the client's last request line is unfinished
	stuck     bool
}

func (s *lineSession) Request(b []byte) int {
	s.sent.Add(int64(bytes.Count(b, []byte("\n"))))
	s.partial = len(b) > 0 && b[len(b)-1] != '\n'
	s.stuck = s.stuck || bytes.Contains(b, []byte("STUCK"))
	return len(b)
}

func (s *lineSession) Reply(b []byte) { s.got.Add(int64(bytes.Count(b, []byte("\n")))) }

func (s *lineSession) State() protocol.State {
	switch {
	case s.partial || s.stuck:
		return protocol.NotResettable
	case s.sent.Load() > s.got.Load():
		return protocol.Outstanding
	}
	return protocol.Idle
}

func (s *lineSession) Reset(nc net.Conn) error {
	if _, err := io.WriteString(nc, "RESET\n"); err != nil {
		return err
	}
	br := bufio.NewReader(nc)
	for s.sent.Load() > s.got.Load() {
		if _, err := br.ReadString('\n'); err != nil {
			return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
		}
		s.got.Add(1)
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "OK\n" {
		return errors.New("reset answered " + line)
	}
	return nil
}

// TestProtocolRelease covers the relay's part in a protocol pool's
// release: the client's word does not count, the session's state and the
// reset's outcome do, and the client has its end before the reset runs.
func TestProtocolRelease(t *testing.T) {
	cases := []struct {
		name string
		// lease runs the exchange; far is the upstream's end.
		lease func(t *testing.T, l *Lease, far *bufio.ReadWriter)
		// upstream plays the upstream's part of the reset (nil: none).
		upstream func(t *testing.T, far *bufio.ReadWriter)
		abandon  bool
		want     End
		reason   poolmgr.CloseReason // -1: released for reuse
	}{
		{name: "idle: reset and reused", lease: exchange, upstream: answerReset("OK\n"),
			want: End{Reason: Released, Reused: true, Written: 5}, reason: -1},
		{name: "outstanding reply drained", lease: func(t *testing.T, l *Lease, far *bufio.ReadWriter) {
			exchange(t, l, far)
			l.Write(net.Buffers{[]byte("slow\n")})
			expectLine(t, far, "slow\n")
		}, upstream: func(t *testing.T, far *bufio.ReadWriter) {
			writeLine(t, far, "late\n")
			answerReset("OK\n")(t, far)
		}, want: End{Reason: Released, Reused: true, Written: 10}, reason: -1},
		{name: "outstanding reply never comes", lease: func(t *testing.T, l *Lease, far *bufio.ReadWriter) {
			l.Write(net.Buffers{[]byte("slow\n")})
			expectLine(t, far, "slow\n")
		}, upstream: func(t *testing.T, far *bufio.ReadWriter) { expectLine(t, far, "RESET\n") },
			want: End{Reason: Released, Reused: true, Written: 5}, reason: poolmgr.CloseOutstanding},
		{name: "reset refused", lease: exchange, upstream: answerReset("NO\n"),
			want: End{Reason: Released, Reused: true, Written: 5}, reason: poolmgr.CloseResetFailed},
		{name: "unfinished request", lease: func(t *testing.T, l *Lease, far *bufio.ReadWriter) {
			l.Write(net.Buffers{[]byte("half")})
		}, want: End{Reason: Released, Written: 4}, reason: poolmgr.CloseNotResettable},
		{name: "state no reset clears", lease: func(t *testing.T, l *Lease, far *bufio.ReadWriter) {
			l.Write(net.Buffers{[]byte("STUCK\n")})
		}, want: End{Reason: Released, Written: 6}, reason: poolmgr.CloseNotResettable},
		{name: "abandoned by the client side: reset", lease: exchange, upstream: answerReset("OK\n"),
			abandon: true, reason: -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			near, farConn := tcpPair(t)
			far := bufio.NewReadWriter(bufio.NewReader(farConn), bufio.NewWriter(farConn))
			up := newFakeUp(near)
			up.handler = lineProto{}
			up.resetTimeout = 200 * time.Millisecond
			s := newFakeSink()
			l := New(up, s, Options{})
			l.Start()
			tc.lease(t, l, far)
			if tc.abandon {
				l.Cut(ReasonNone) // the client side's stream ended
				l.Abandon()
			} else {
				// The client says "not reusable": a protocol pool decides.
				if err := l.Release(false); err != nil {
					t.Fatal(err)
				}
				if e := testkit.Recv(t, s.ended); e != tc.want {
					t.Fatalf("ended %+v; want %+v", e, tc.want)
				}
			}
			if tc.upstream != nil {
				tc.upstream(t, far)
			}
			reused := testkit.Recv(t, up.released)
			l.Wait(nil)
			switch {
			case tc.reason == -1 && !reused:
				t.Fatalf("closed (%v), want reused", up.discarded)
			case tc.reason != -1 && reused:
				t.Fatalf("reused, want closed for %v", tc.reason)
			case tc.reason != -1 && up.discarded != tc.reason:
				t.Fatalf("closed for %v, want %v", up.discarded, tc.reason)
			}
		})
	}
}

// exchange sends "ping\n" and answers it.
func exchange(t *testing.T, l *Lease, far *bufio.ReadWriter) {
	t.Helper()
	l.Write(net.Buffers{[]byte("pin"), []byte("g\n")})
	expectLine(t, far, "ping\n")
	writeLine(t, far, "pong\n")
	testkit.WaitFor(t, "the reply", func() bool { return l.sess.(*lineSession).got.Load() == 1 })
}

func answerReset(reply string) func(*testing.T, *bufio.ReadWriter) {
	return func(t *testing.T, far *bufio.ReadWriter) {
		expectLine(t, far, "RESET\n")
		writeLine(t, far, reply)
	}
}

func expectLine(t *testing.T, far *bufio.ReadWriter, want string) {
	t.Helper()
	if got, err := far.ReadString('\n'); got != want || err != nil {
		t.Fatalf("upstream read %q, %v; want %q", got, err, want)
	}
}

func writeLine(t *testing.T, far *bufio.ReadWriter, line string) {
	t.Helper()
	if _, err := far.WriteString(line); err != nil {
		t.Fatal(err)
	}
	if err := far.Flush(); err != nil {
		t.Fatal(err)
	}
}

// greetProto is lineProto with an opening the pool answers itself: the
// client's first line "HELLO <name>\n" gets "WELCOME\n" (or "DENIED\n" for
// any name but "ok"), and "BYE\n" ends the lease without reaching the
// upstream.
type greetProto struct{ lineProto }

func (greetProto) NewSession(any) protocol.Session { return &greetSession{} }

type greetSession struct {
	lineSession
	opening []byte
}

func (s *greetSession) Greet(_ net.Conn, b []byte) ([]byte, int, bool, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		s.opening = append(s.opening, b...)
		return nil, len(b), false, nil
	}
	line := string(append(s.opening, b[:i]...))
	if line != "HELLO ok" {
		return []byte("DENIED\n"), i + 1, false, errors.New("denied")
	}
	return []byte("WELCOME\n"), i + 1, true, nil
}

func (s *greetSession) Request(b []byte) int {
	if i := bytes.Index(b, []byte("BYE\n")); i >= 0 {
		s.lineSession.Request(b[:i])
		return i
	}
	return s.lineSession.Request(b)
}

// TestProtocolGreeting: a greeter answers the opening before anything
// reaches the upstream, the bytes after it in the same write go on, a
// refused client reaches nothing, and the pool's own message (BYE) never
// reaches the upstream.
func TestProtocolGreeting(t *testing.T) {
	t.Run("welcomed", func(t *testing.T) {
		near, farConn := tcpPair(t)
		far := bufio.NewReadWriter(bufio.NewReader(farConn), bufio.NewWriter(farConn))
		up := newFakeUp(near)
		up.handler = greetProto{}
		s := newFakeSink()
		l := New(up, s, Options{})
		l.Start()
		l.Write(net.Buffers{[]byte("HEL"), []byte("LO ok\nping\n")})
		testkit.WaitFor(t, "the welcome", func() bool { d, _ := s.got(); return d == "WELCOME\n" })
		expectLine(t, far, "ping\n")
		writeLine(t, far, "pong\n")
		testkit.WaitFor(t, "the reply", func() bool { d, _ := s.got(); return d == "WELCOME\npong\n" })
		l.Write(net.Buffers{[]byte("BYE\n")})
		if err := l.Release(true); err != nil {
			t.Fatal(err)
		}
		// Every client byte counts as taken: the opening and BYE, which the
		// pool answered, and ping, which the upstream got.
		if e := testkit.Recv(t, s.ended); !e.Reused || e.Written != 18 {
			t.Fatalf("ended %+v; want reused, all 18 client bytes taken", e)
		}
		answerReset("OK\n")(t, far) // the next line after ping is the reset's: BYE never came
		if !testkit.Recv(t, up.released) {
			t.Fatalf("closed for %v, want reused", up.discarded)
		}
		l.Wait(nil)
	})
	t.Run("refused", func(t *testing.T) {
		near, farConn := tcpPair(t)
		up := newFakeUp(near)
		up.handler = greetProto{}
		s := newFakeSink()
		done := make(chan struct{})
		l := New(up, s, Options{Done: func() { close(done) }})
		l.Start()
		l.Write(net.Buffers{[]byte("HELLO intruder\nFLUSHALL\n")})
		testkit.WaitFor(t, "the refusal", func() bool { d, _ := s.got(); return d == "DENIED\n" })
		// As a server closes after its error: the client side gets its end.
		if e := testkit.Recv(t, s.ended); e.Reason != UpstreamEOF || !e.Reused {
			t.Fatalf("ended %+v, want UpstreamEOF with the connection kept", e)
		}
		l.Write(net.Buffers{[]byte("more\n")})
		l.Abandon()
		testkit.Recv(t, done) // Done runs once, in place of the reader that never started
		if !testkit.Recv(t, up.released) {
			t.Fatalf("closed for %v: nothing reached the upstream, it should be reused", up.discarded)
		}
		_ = farConn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		var b [1]byte
		if n, _ := farConn.Read(b[:]); n > 0 {
			t.Fatal("a refused client's bytes reached the upstream")
		}
	})
}
