package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// bulkSize is what the delivery tests write: more than the kernel's socket
// buffers and gRPC's windows hold, so the upstream's pace decides.
const bulkSize = 4600 << 10

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(b)
	return b
}

// pacedReader reads c a chunk at a time, waiting for a tick before each
// chunk, until it has want bytes or c ends, and sends what it read on got.
func pacedReader(c net.Conn, want int, tick <-chan time.Time, got chan<- []byte) {
	var all bytes.Buffer
	buf := make([]byte, 64<<10)
	for all.Len() < want {
		<-tick
		n, err := c.Read(buf[:min(len(buf), want-all.Len())])
		all.Write(buf[:n])
		if err != nil {
			break
		}
	}
	got <- all.Bytes()
}

// inQueue returns how many bytes wait unread in c's socket receive queue.
func inQueue(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return n
}

// TestCloseDeliversToSlowUpstream: bytes Write accepted reach an upstream
// that reads slowly, after Close returned nil; Close waits while they make
// progress. With a write deadline too: every byte Write reported written
// arrives.
func TestCloseDeliversToSlowUpstream(t *testing.T) {
	for _, withDeadline := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "write deadline"}[withDeadline]
		t.Run(name, func(t *testing.T) {
			// The upstream's pace is a goroutine's: on a loaded machine it
			// may stall past the default release timeout, which this test
			// is not about (TestCloseReportsUndelivered is).
			e := startSDKEnv(t, client.WithReleaseTimeout(5*time.Second))
			up := startSDKUpstream(t, nil)
			e.createPool(t, "slow", poolmgr.Config{Endpoints: []string{up.addr}})
			conn, err := e.c.Lease(ctxSDK(t), "slow")
			if err != nil {
				t.Fatal(err)
			}
			uc := testkit.Recv(t, up.conns)
			ticker := time.NewTicker(2 * time.Millisecond) // about 30 MB/s
			defer ticker.Stop()
			got := make(chan []byte, 1)
			data := randomBytes(bulkSize)
			if withDeadline {
				_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
			}
			n, err := conn.Write(data)
			if withDeadline {
				if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(data) {
					t.Logf("write deadline did not fire before %d bytes: %v", n, err)
				}
			} else if err != nil || n != len(data) {
				t.Fatalf("Write = %d, %v", n, err)
			}
			go pacedReader(uc, n, ticker.C, got)
			if err := conn.Close(); err != nil {
				t.Fatalf("Close after %d bytes: %v", n, err)
			}
			b := testkit.Recv(t, got)
			if !bytes.Equal(b, data[:n]) {
				t.Fatalf("upstream got %d bytes, want the %d Write accepted (equal: %v)", len(b), n, bytes.Equal(b, data[:min(n, len(b))]))
			}
			t.Logf("%d bytes written, Close nil, upstream got them all", n)
		})
	}
}

// TestCloseReportsUndelivered: Close after a Write to an upstream that
// stopped reading returns ErrUndelivered within the release timeout of no
// progress, and the pool slot is free at once: the connection is closed,
// never reused. Close returns nil only if the upstream gets every byte
// Write accepted.
func TestCloseReportsUndelivered(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, nil)
	e.createPool(t, "stuck", poolmgr.Config{Endpoints: []string{up.addr}, Limits: poolmgr.Limits{MaxConnections: 1}})
	ctx := ctxSDK(t)
	conn, err := e.c.Lease(ctx, "stuck")
	if err != nil {
		t.Fatal(err)
	}
	uc := testkit.Recv(t, up.conns)
	type result struct {
		n   int
		err error
	}
	wrote := make(chan result, 1)
	var accepted atomic.Int64
	go func() {
		// Write in 64 KiB pieces until Write fails: the count shows when
		// Write stops taking bytes, which is when the server's write to
		// the upstream is blocked and the stream's window is full.
		chunk := randomBytes(64 << 10)
		for {
			n, err := conn.Write(chunk)
			accepted.Add(int64(n))
			if err != nil {
				wrote <- result{int(accepted.Load()), err}
				return
			}
		}
	}()
	last, same := int64(-1), 0
	testkit.WaitFor(t, "Write to stop taking bytes", func() bool {
		a := accepted.Load()
		if a >= 1<<20 && a == last {
			same++
		} else {
			same = 0
		}
		last = a
		return same >= 100 // unchanged for 100 polls 2 ms apart
	})
	_ = conn.SetWriteDeadline(time.Now()) // the Write in progress returns
	w := testkit.Recv(t, wrote)
	start := time.Now()
	cerr := conn.Close()
	took := time.Since(start)
	t.Logf("Write took %d bytes (%v); Close took %s: %v", w.n, w.err, took, cerr)
	_ = uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if cerr == nil {
		// Delivered after all: every byte reaches the upstream.
		if _, err := io.CopyN(io.Discard, uc, int64(w.n)); err != nil {
			t.Fatalf("Close = nil, yet the upstream could not read the %d bytes: %v", w.n, err)
		}
		t.Skip("the server's write was not blocked when Close came: nothing to report undelivered")
	}
	if !errors.Is(cerr, client.ErrUndelivered) {
		t.Fatalf("Close = %v; want ErrUndelivered", cerr)
	}
	testkit.WaitFor(t, "the slot to be free", func() bool {
		st, err := e.c.PoolStats(ctx, "stuck")
		return err == nil && st.GetInUse() == 0 && st.GetTotal() == 0
	})
	// The upstream gets EOF: the connection was closed.
	k, err := io.Copy(io.Discard, uc)
	if err != nil {
		t.Fatalf("upstream read: %v", err)
	}
	if k >= int64(w.n) {
		t.Fatalf("upstream got %d of %d bytes, yet Close reported them undelivered", k, w.n)
	}
	// The next lease works on a fresh connection.
	c2, err := e.c.Lease(ctx, "stuck")
	if err != nil {
		t.Fatal(err)
	}
	if c2.Info().Reused {
		t.Fatal("the stuck connection was reused")
	}
	_ = c2.Discard()
}

// TestStalledUpstreamEnds: revoke, max_lease_duration and shutdown end a
// lease whose upstream stopped reading, with their own end reason, and free
// the slot at once, even while the receive loop is blocked writing.
func TestStalledUpstreamEnds(t *testing.T) {
	cases := []struct {
		name   string
		cfg    func(*poolmgr.Config)
		end    func(t *testing.T, e *sdkEnv, leaseID string)
		reason poolv1.EndReason
	}{
		{"revoke", nil, func(t *testing.T, e *sdkEnv, id string) {
			if err := e.mgr.RevokeLease(context.Background(), strings.TrimPrefix(id, "pools/stuck/leases/")); err != nil {
				t.Fatal(err)
			}
		}, poolv1.EndReason_END_REASON_REVOKED},
		{"max_lease_duration", func(c *poolmgr.Config) {
			c.Lifecycle.MaxLeaseDuration = time.Second
		}, func(*testing.T, *sdkEnv, string) {}, poolv1.EndReason_END_REASON_MAX_LEASE_DURATION},
		{"shutdown", nil, func(_ *testing.T, e *sdkEnv, _ string) {
			e.svcs.Lease.EndLeases(context.Background())
		}, poolv1.EndReason_END_REASON_SHUTDOWN},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := startSDKEnv(t)
			up := startSDKUpstream(t, nil)
			cfg := poolmgr.Config{Endpoints: []string{up.addr}, Limits: poolmgr.Limits{MaxConnections: 1}}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			e.createPool(t, "stuck", cfg)
			ctx := ctxSDK(t)
			conn, err := e.c.Lease(ctx, "stuck")
			if err != nil {
				t.Fatal(err)
			}
			uc := testkit.Recv(t, up.conns) // never read
			type result struct {
				n   int
				err error
			}
			werr := make(chan result, 1)
			go func() {
				// Far more than the socket buffers and windows hold.
				n, err := conn.Write(randomBytes(8 * bulkSize))
				werr <- result{n, err}
			}()
			// Wait until the server's write to the upstream blocks: the
			// upstream's receive queue fills (to its initial window, as
			// nothing reads it), then the server's send buffer.
			ended := false
			testkit.WaitFor(t, "the upstream's receive queue to fill", func() bool {
				select {
				case w := <-werr: // max_lease_duration came first, under load
					werr <- w
					ended = true
					return true
				default:
				}
				return inQueue(t, uc) > 64<<10
			})
			if !ended {
				tc.end(t, e, conn.Info().LeaseID)
			}
			w := testkit.Recv(t, werr)
			var ee *client.EndedError
			if !errors.As(w.err, &ee) || ee.Reason != tc.reason {
				t.Fatalf("Write ended with %v; want an EndedError with %v", w.err, tc.reason)
			}
			testkit.WaitFor(t, "the slot to be free", func() bool {
				st, err := e.c.PoolStats(ctx, "stuck")
				return err == nil && st.GetInUse() == 0 && st.GetTotal() == 0
			})
			// Close tells whether the n bytes Write accepted reached the
			// upstream, which the upstream, reading to the EOF of its closed
			// connection, confirms.
			cerr := conn.Close()
			_ = uc.SetReadDeadline(time.Now().Add(10 * time.Second))
			k, err := io.Copy(io.Discard, uc)
			if err != nil {
				t.Fatalf("upstream read: %v", err)
			}
			t.Logf("Write accepted %d bytes, the upstream got %d; Close: %v", w.n, k, cerr)
			switch {
			case cerr == nil && k != int64(w.n):
				t.Fatalf("Close = nil, yet the upstream got %d of %d bytes", k, w.n)
			case cerr != nil && !errors.Is(cerr, client.ErrUndelivered):
				t.Fatalf("Close = %v; want nil or ErrUndelivered", cerr)
			case cerr != nil && k >= int64(w.n):
				t.Fatalf("Close = %v, yet the upstream got all %d bytes", cerr, w.n)
			}
		})
	}
}

// TestUpstreamHalfClose: an upstream that sends its reply and FIN but keeps
// reading. The client reads the reply, then io.EOF; its later Writes still
// reach the upstream; Close reports them delivered.
func TestUpstreamHalfClose(t *testing.T) {
	e := startSDKEnv(t)
	got := make(chan []byte, 1)
	up := startSDKUpstream(t, func(c net.Conn) {
		_, _ = c.Write([]byte("reply"))
		_ = c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- b
		_ = c.Close()
	})
	e.createPool(t, "hc", poolmgr.Config{Endpoints: []string{up.addr}})
	conn, err := e.c.Lease(ctxSDK(t), "hc")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "reply" {
		t.Fatalf("ReadAll = %q, %v; want the reply, then io.EOF", b, err)
	}
	for _, s := range []string{"after ", "the ", "FIN"} {
		if n, err := conn.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write after the upstream's FIN = %d, %v", n, err)
		}
	}
	if err := conn.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if b := testkit.Recv(t, got); string(b) != "after the FIN" {
		t.Fatalf("upstream read %q after its FIN; want %q", b, "after the FIN")
	}
}

// TestEndReasonUpstreamEOFForOlderClients: a client that does not list the
// half-close feature (grpcurl, an older SDK) gets ended{UPSTREAM_EOF} at
// the upstream's FIN, with upstream_written, and the upstream error's
// reason when it resets.
func TestEndReasonUpstreamEOFForOlderClients(t *testing.T) {
	e := startSDKEnv(t)
	up := startSDKUpstream(t, func(c net.Conn) {
		buf := make([]byte, 3)
		_, _ = io.ReadFull(c, buf)
		_, _ = c.Write(buf)
		if string(buf) == "rst" {
			_ = c.(*net.TCPConn).SetLinger(0)
		}
		_ = c.Close()
	})
	e.createPool(t, "eof", poolmgr.Config{Endpoints: []string{up.addr}})
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	for _, tc := range []struct {
		send   string
		reason poolv1.EndReason
	}{
		{"eof", poolv1.EndReason_END_REASON_UPSTREAM_EOF},
		{"rst", poolv1.EndReason_END_REASON_UPSTREAM_ERROR},
	} {
		s, err := poolv1.NewLeaseServiceClient(cc).Lease(ctxSDK(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range []*poolv1.LeaseRequest{
			{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "eof"}}},
			{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: []byte(tc.send)}}},
		} {
			if err := s.Send(req); err != nil {
				t.Fatal(err)
			}
		}
		var ended *poolv1.LeaseResponse_Ended
		for ended == nil {
			m, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: recv: %v", tc.send, err)
			}
			if m.GetCloseWrite() != nil {
				t.Fatalf("%s: close_write sent to a client that did not ask for it", tc.send)
			}
			ended = m.GetEnded()
		}
		if ended.GetReason() != tc.reason || ended.GetUpstreamWritten() != 3 {
			t.Fatalf("%s: ended %v; want %v with upstream_written 3", tc.send, ended, tc.reason)
		}
		_ = s.CloseSend()
	}
}
