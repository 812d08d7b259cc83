// Package testkit holds the helpers poolplane's tests share: a log buffer
// safe for concurrent use, bounded waits, an echo upstream on loopback. It
// is a module of its own with no requirements, so the SDK's module uses it
// without taking in the server's.
package testkit

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer safe for concurrent use, for captured logs
// and process output.
type SyncBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DefaultWait bounds WaitFor and Recv.
const DefaultWait = 10 * time.Second

// deadlineMargin is kept free before the test binary's deadline, so that a
// failing wait still reports and cleans up.
const deadlineMargin = 5 * time.Second

// pollEvery is the longest pause between two checks of a condition.
const pollEvery = 2 * time.Millisecond

// WaitFor polls cond until it holds, and fails the test after DefaultWait
// (earlier when the test's deadline is near).
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitWithin(t, DefaultWait, what, cond)
}

// WaitWithin polls cond until it holds and returns how long that took; it
// fails the test after limit, or earlier when the test's deadline is near.
func WaitWithin(t testing.TB, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	end := waitEnd(t, limit)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s (%v)", what, time.Since(start).Round(time.Millisecond))
		}
		<-tick.C
	}
	return time.Since(start)
}

// WaitChanged waits until cond holds, checking it again each time the
// channel changed returned before the check is closed (a change
// notification such as a pool's Changed), so that it never sleeps. It
// fails the test after limit, or earlier when the test's deadline is near;
// the failure names what and, when state is not nil, what state says.
func WaitChanged(t testing.TB, limit time.Duration, what string, changed func() <-chan struct{}, cond func() bool, state func() string) {
	t.Helper()
	timer := time.NewTimer(time.Until(waitEnd(t, limit)))
	defer timer.Stop()
	for {
		ch := changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			if state != nil {
				t.Fatalf("timed out waiting for %s: %s", what, state())
			}
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitEnd is when a wait of limit from now ends: earlier when the test's
// deadline is near.
func waitEnd(t testing.TB, limit time.Duration) time.Time {
	end := time.Now().Add(limit)
	if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := tt.Deadline(); ok && dl.Add(-deadlineMargin).Before(end) {
			end = dl.Add(-deadlineMargin)
		}
	}
	return end
}

// Recv takes one value from ch, failing the test after DefaultWait.
func Recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(DefaultWait)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting on %T", ch)
		panic("unreachable")
	}
}

// RecvOpen takes one value from ch, failing the test if ch closes first
// or after DefaultWait.
func RecvOpen[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(DefaultWait)
	defer timer.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("%T closed", ch)
		}
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting on %T", ch)
		panic("unreachable")
	}
}

// Drain takes values from ch until it closes and returns them, failing the
// test if it is still open after DefaultWait.
func Drain[T any](t testing.TB, ch <-chan T) []T {
	t.Helper()
	timer := time.NewTimer(DefaultWait)
	defer timer.Stop()
	var vs []T
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				return vs
			}
			vs = append(vs, v)
		case <-timer.C:
			t.Fatalf("%T not closed after %v", ch, DefaultWait)
		}
	}
}

// EchoServer starts an echo server on 127.0.0.1:0 and returns its address.
// Each connection's bytes come back until the peer half-closes; then the
// connection closes. The test's cleanup closes the listener and every
// connection and waits for their goroutines.
func EchoServer(t testing.TB) string {
	t.Helper()
	return Serve(t, EchoConn)
}

// EchoConn copies c to itself until it ends, then closes it.
func EchoConn(c net.Conn) {
	_, _ = io.Copy(c, c)
	_ = c.Close()
}

// DiscardConn reads c until it ends, then closes it: an upstream that
// holds connections open and never answers.
func DiscardConn(c net.Conn) {
	_, _ = io.Copy(io.Discard, c)
	_ = c.Close()
}

// Serve accepts connections on 127.0.0.1:0 and runs handler on each in its
// own goroutine; it returns the address. The test's cleanup closes the
// listener and every connection and waits for the handlers.
func Serve(t testing.TB, handler func(net.Conn)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex // protects conns and closed
		conns  []net.Conn
		closed bool
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed { // accepted as the cleanup ran: nobody closes it later
				mu.Unlock()
				_ = c.Close()
				continue
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handler(c) })
		}
	})
	t.Cleanup(func() {
		_ = lis.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return lis.Addr().String()
}

// Poll polls cond until it holds or limit passes (earlier when the test's
// deadline is near), and reports whether it held. For a caller that says
// more than WaitWithin on a timeout.
func Poll(t testing.TB, limit time.Duration, cond func() bool) bool {
	t.Helper()
	end := waitEnd(t, limit)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		<-tick.C
	}
	return true
}

// GoBuild builds the package pkg (an import path or a directory relative to
// dir) into the file out with the go command, in dir ("" for the test's
// own), with -race when race is set. It skips the test when there is no go
// command, and fails it when the build fails.
func GoBuild(t testing.TB, dir, out, pkg string, race bool) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		// The go command sets GOROOT for the tests it runs.
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, serr := os.Stat(gobin); os.Getenv("GOROOT") == "" || serr != nil {
			t.Skipf("no go command to build %s: %v", pkg, err)
		}
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command(gobin, append(args, pkg)...)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}
