package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewOptions(t *testing.T) {
	if _, err := New("127.0.0.1:1"); err == nil {
		t.Error("New without transport security: want an error")
	}
	if _, err := New("127.0.0.1:1", WithInsecure(), WithTLS(nil)); err == nil {
		t.Error("New with WithTLS and WithInsecure: want an error")
	}
	c, err := New("127.0.0.1:1", WithTLS(nil), WithToken("t"), WithIdleStreams(-1), WithClientName(strings.Repeat("n", 200)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.name) != maxClientName || c.maxIdle != 0 {
		t.Errorf("name %d bytes, maxIdle %d", len(c.name), c.maxIdle)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Lease(context.Background(), "api"); !errors.Is(err, ErrClientClosed) {
		t.Errorf("Lease after Close: got %v, want ErrClientClosed", err)
	}
}

func TestLeaseEcho(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	ctx := context.Background()
	conn, err := c.Lease(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l := testkit.Recv(t, f.leases)
	go func() {
		buf := make([]byte, 5)
		io.ReadFull(l.far, buf)
		l.far.Write(bytes.ToUpper(buf))
	}()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "HELLO" {
		t.Errorf("got %q", got)
	}
	want := LeaseInfo{LeaseID: "pools/api/leases/1", UpstreamAddr: "192.0.2.1:6379", IdleTime: time.Second, ConnAge: time.Minute, WaitTime: time.Millisecond, Generation: 3}
	if conn.Info() != want {
		t.Errorf("Info = %+v, want %+v", conn.Info(), want)
	}
	if la, ra := conn.LocalAddr(), conn.RemoteAddr(); la.Network() != "poolplane" || la.String() != "test/pools/api/leases/1" ||
		ra.Network() != "poolplane" || ra.String() != "192.0.2.1:6379" {
		t.Errorf("addrs %s:%s %s:%s", la.Network(), la, ra.Network(), ra)
	}
}

func TestNetTestConn(t *testing.T) {
	for _, kind := range []string{"pipe", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			f := newFake(t)
			if kind == "tcp" {
				f.newUpstream = tcpUpstream(t)
			}
			c := newTestClient(t, f)
			nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
				conn, err := c.Lease(context.Background(), "api")
				if err != nil {
					return nil, nil, nil, err
				}
				l := testkit.Recv(t, f.leases)
				return conn, l.far, func() { conn.Close(); l.far.Close() }, nil
			})
		})
	}
}

func TestStreamReuse(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	idle := idleSignal(c)
	ctx := context.Background()
	for i := range 20 {
		conn, err := c.Lease(ctx, "api")
		if err != nil {
			t.Fatal(err)
		}
		l := testkit.Recv(t, f.leases)
		go func() { l.far.Write([]byte("+OK\r\n")) }()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if !testkit.Recv(t, f.releases) {
			t.Errorf("lease %d: released not reusable", i)
		}
		testkit.Recv(t, idle)
	}
	if n := f.streams.Load(); n != 1 {
		t.Errorf("%d streams for 20 sequential leases, want 1", n)
	}
	if n := c.idleStreams("api"); n != 1 {
		t.Errorf("%d idle streams, want 1", n)
	}
}

func TestIdleStreamsCap(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f, WithIdleStreams(2))
	idle := idleSignal(c)
	var conns []*Conn
	for range 4 {
		conn := leaseAPI(t, c)
		conns = append(conns, conn)
	}
	for _, conn := range conns {
		conn.Close()
	}
	testkit.Recv(t, idle)
	testkit.Recv(t, idle)
	for range 2 {
		testkit.Recv(t, f.streamEnd) // the two beyond the cap are discarded
	}
	if n := c.idleStreams("api"); n != 2 {
		t.Errorf("%d idle streams, want 2", n)
	}
}

func TestReleaseReusable(t *testing.T) {
	tests := []struct {
		name string
		do   func(t *testing.T, conn *Conn, l *fakeLease)
		want bool
	}{
		{"clean", func(t *testing.T, conn *Conn, l *fakeLease) { t.Helper(); conn.Close() }, true},
		{"discard", func(t *testing.T, conn *Conn, l *fakeLease) { t.Helper(); conn.Discard(); conn.Close() }, false},
		{"unread", func(t *testing.T, conn *Conn, l *fakeLease) {
			t.Helper()
			go l.far.Write([]byte("12345"))
			if _, err := conn.Read(make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			conn.Close()
		}, false},
		{"read timeout", func(t *testing.T, conn *Conn, l *fakeLease) {
			t.Helper()
			conn.SetReadDeadline(time.Now().Add(-time.Second))
			if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read: %v", err)
			}
			conn.Close()
		}, false},
		{"close write", func(t *testing.T, conn *Conn, l *fakeLease) {
			t.Helper()
			if err := conn.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
			conn.Close()
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			c := newTestClient(t, f)
			conn := leaseAPI(t, c)
			tt.do(t, conn, testkit.Recv(t, f.leases))
			if got := testkit.Recv(t, f.releases); got != tt.want {
				t.Errorf("reusable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCloseWriteHalfClose(t *testing.T) {
	f := newFake(t)
	f.newUpstream = tcpUpstream(t)
	c := newTestClient(t, f)
	idle := idleSignal(c)
	conn := leaseAPI(t, c)
	l := testkit.Recv(t, f.leases)
	go func() {
		b, _ := io.ReadAll(l.far) // until the FIN
		l.far.Write(append([]byte("got "), b...))
		l.far.Close()
	}()
	conn.Write([]byte("request"))
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	testkit.Recv(t, f.cws)
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "got request" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
	conn.Close()
	testkit.Recv(t, idle) // ended came first, the release completes the lease
	if testkit.Recv(t, f.releases) {
		t.Error("released reusable after CloseWrite")
	}
}

func TestUpstreamEOF(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	idle := idleSignal(c)
	conn := leaseAPI(t, c)
	l := testkit.Recv(t, f.leases)
	go func() {
		l.far.Write([]byte("bye"))
		l.far.Close()
	}()
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "bye" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("Read after EOF: %v", err)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, ErrLeaseEnded) {
		t.Errorf("Write after EOF: %v, want ErrLeaseEnded", err)
	}
	conn.Close()
	if testkit.Recv(t, f.releases) {
		t.Error("released reusable after EOF")
	}
	testkit.Recv(t, idle)
	// The stream carries the next lease.
	conn = leaseAPI(t, c)
	conn.Close()
	if n := f.streams.Load(); n != 1 {
		t.Errorf("%d streams, want 1", n)
	}
}

func TestRevoked(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	conn := leaseAPI(t, c)
	defer conn.Close()
	testkit.Recv(t, f.leases).revoke()
	_, err := conn.Read(make([]byte, 1))
	var ee *EndedError
	if !errors.Is(err, ErrLeaseEnded) || !errors.As(err, &ee) || ee.Reason != poolv1.EndReason_END_REASON_REVOKED {
		t.Errorf("Read: %v, want an EndedError REVOKED", err)
	}
}

func TestErrorMapping(t *testing.T) {
	retry := &errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)}
	tests := []struct {
		err   error
		want  []error // every sentinel the error matches
		code  codes.Code
		retry time.Duration
	}{
		{fakeStatus(codes.ResourceExhausted, "BACKLOG_FULL", "full", map[string]string{"waiters": "9"}, retry), []error{ErrBacklogFull}, codes.ResourceExhausted, 250 * time.Millisecond},
		{fakeStatus(codes.DeadlineExceeded, "ACQUIRE_TIMEOUT", "timeout", nil), []error{ErrAcquireTimeout}, codes.DeadlineExceeded, 0},
		{fakeStatus(codes.Unavailable, "UPSTREAM_UNAVAILABLE", "down", nil, retry), []error{ErrUpstreamUnavailable}, codes.Unavailable, 250 * time.Millisecond},
		{fakeStatus(codes.NotFound, "POOL_NOT_FOUND", "none", nil), []error{ErrPoolNotFound}, codes.NotFound, 0},
		{fakeStatus(codes.FailedPrecondition, "POOL_DRAINING", "draining", nil), []error{ErrDraining}, codes.FailedPrecondition, 0},
		{fakeStatus(codes.PermissionDenied, "PERMISSION_DENIED", "no", nil), []error{ErrPermissionDenied}, codes.PermissionDenied, 0},
		{fakeStatus(codes.PermissionDenied, "UPSTREAM_NOT_ALLOWED", "no", nil), []error{ErrPermissionDenied, ErrUpstreamNotAllowed}, codes.PermissionDenied, 0},
		{fakeStatus(codes.ResourceExhausted, "QUOTA_EXCEEDED", "max_leases", map[string]string{"quota": "max_leases"}), []error{ErrQuotaExceeded}, codes.ResourceExhausted, 0},
		{status.Error(codes.Unauthenticated, "who"), []error{ErrUnauthenticated}, codes.Unauthenticated, 0},
		{fakeStatus(codes.InvalidArgument, "PROTOCOL_VIOLATION", "bad", nil), []error{ErrProtocol}, codes.InvalidArgument, 0},
		{fakeStatus(codes.Unavailable, "POOL_CLOSED", "shutting down", nil), []error{ErrUnavailable}, codes.Unavailable, 0},
		{fakeStatus(codes.Unavailable, "REPLICA_FENCED", "fenced", nil, retry), []error{ErrReplicaFenced}, codes.Unavailable, 250 * time.Millisecond},
		{status.Error(codes.Unavailable, "connection refused"), []error{ErrUnavailable}, codes.Unavailable, 0},
	}
	sentinels := []error{ErrBacklogFull, ErrAcquireTimeout, ErrUpstreamUnavailable, ErrPoolNotFound, ErrDraining, ErrPermissionDenied,
		ErrUpstreamNotAllowed, ErrQuotaExceeded, ErrReplicaFenced, ErrUnauthenticated, ErrUnavailable, ErrProtocol}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			f := newFake(t)
			f.onOpen = func(context.Context, *poolv1.LeaseRequest_Open) error { return tt.err }
			c := newTestClient(t, f)
			_, err := c.Lease(context.Background(), "api")
			for _, s := range sentinels {
				if got, want := errors.Is(err, s), slices.Contains(tt.want, s); got != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, want)
				}
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not an *Error", err)
			}
			if e.Code != tt.code || e.RetryAfter != tt.retry {
				t.Errorf("Code %v RetryAfter %v", e.Code, e.RetryAfter)
			}
			if st, ok := status.FromError(err); !ok || st.Code() != tt.code {
				t.Errorf("status.FromError: %v %v", st, ok)
			}
			if slices.Contains(tt.want, ErrBacklogFull) && e.Metadata["waiters"] != "9" {
				t.Errorf("Metadata = %v", e.Metadata)
			}
			if slices.Contains(tt.want, ErrAcquireTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				t.Error("ACQUIRE_TIMEOUT does not match context.DeadlineExceeded")
			}
		})
	}
}

func TestAcquireTimeoutFromDeadline(t *testing.T) {
	f := newFake(t)
	sent := make(chan time.Duration, 1)
	f.onOpen = func(ctx context.Context, o *poolv1.LeaseRequest_Open) error {
		sent <- o.GetAcquireTimeout().AsDuration()
		<-ctx.Done() // never grants; the client gives up at its deadline
		return ctx.Err()
	}
	c := newTestClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Lease(ctx, "api")
	if !errors.Is(err, ErrAcquireTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lease: %v, want ErrAcquireTimeout and context.DeadlineExceeded", err)
	}
	if d := testkit.Recv(t, sent); d <= 0 || d > 200*time.Millisecond {
		t.Errorf("acquire_timeout %v", d)
	}
	testkit.Recv(t, f.streamEnd) // the abandoned stream was cancelled
	// A past deadline fails before anything is sent.
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := c.Lease(ctx, "api"); !errors.Is(err, ErrAcquireTimeout) {
		t.Errorf("Lease with a past deadline: %v", err)
	}
}

func TestLeaseCancel(t *testing.T) {
	f := newFake(t)
	opened := make(chan struct{})
	f.onOpen = func(ctx context.Context, o *poolv1.LeaseRequest_Open) error {
		close(opened)
		<-ctx.Done()
		return ctx.Err()
	}
	c := newTestClient(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-opened
		cancel()
	}()
	if _, err := c.Lease(ctx, "api"); !errors.Is(err, context.Canceled) {
		t.Errorf("Lease: %v, want context.Canceled", err)
	}
	testkit.Recv(t, f.streamEnd)
}

func TestZeroRTT(t *testing.T) {
	f := newFake(t)
	f.zeroRTT = true
	c := newTestClient(t, f)
	conn, err := c.LeaseWith(context.Background(), "api", []byte("PING\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := testkit.Recv(t, f.zeroData); string(got) != "PING\r\n" {
		t.Errorf("0-RTT data %q", got)
	}
	l := testkit.Recv(t, f.leases)
	buf := make([]byte, 6)
	if _, err := io.ReadFull(l.far, buf); err != nil || string(buf) != "PING\r\n" {
		t.Errorf("upstream read %q, %v", buf, err)
	}
}

func TestEndedTimeout(t *testing.T) {
	f := newFake(t)
	f.noEnded = true
	c := newTestClient(t, f)
	c.endedTimeout = 20 * time.Millisecond
	conn := leaseAPI(t, c)
	conn.Close()
	testkit.Recv(t, f.releases)
	testkit.Recv(t, f.streamEnd) // discarded: its context was cancelled
	if n := c.idleStreams("api"); n != 0 {
		t.Errorf("%d idle streams", n)
	}
	f.noEnded = false
	conn = leaseAPI(t, c)
	conn.Close()
	if n := f.streams.Load(); n != 2 {
		t.Errorf("%d streams, want 2", n)
	}
}

func TestWarmStreamDied(t *testing.T) {
	f := newFake(t)
	f.endAfterRelease = true // every stream ends right after its first lease
	c := newTestClient(t, f)
	for i := range 10 {
		conn, err := c.Lease(context.Background(), "api")
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		conn.Close()
		testkit.Recv(t, f.releases)
	}
	if n := f.streams.Load(); n != 10 {
		t.Errorf("%d streams, want 10", n)
	}
}

func TestProtocolError(t *testing.T) {
	f := newFake(t)
	f.dataBeforeGranted = true
	c := newTestClient(t, f)
	if _, err := c.Lease(context.Background(), "api"); !errors.Is(err, ErrProtocol) {
		t.Errorf("Lease: %v, want ErrProtocol", err)
	}
}

func TestToken(t *testing.T) {
	f := newFake(t)
	f.token = "s3cret"
	c := newTestClient(t, f, WithToken("s3cret"))
	conn := leaseAPI(t, c)
	conn.Close()
	bad := newTestClient(t, f, WithToken("wrong"))
	if _, err := bad.Lease(context.Background(), "api"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Lease with a bad token: %v", err)
	}
	if _, err := bad.PoolStats(context.Background(), "api"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("PoolStats with a bad token: %v", err)
	}
}

func TestDeadlines(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	conn := leaseAPI(t, c)
	defer conn.Close()
	l := testkit.Recv(t, f.leases)

	// A pending Read and a pending Write (the pipe upstream does not read)
	// wake when the deadline moves to the past.
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := conn.Read(make([]byte, 10))
		errc <- err
	}()
	go func() {
		defer wg.Done()
		var err error
		for err == nil {
			_, err = conn.Write(make([]byte, 64<<10))
		}
		errc <- err
	}()
	conn.SetDeadline(time.Now().Add(50 * time.Millisecond))
	wg.Wait()
	for range 2 {
		err := <-errc
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("got %v, want a timeout", err)
		}
	}
	// Past deadlines fail at once; clearing them makes the conn usable.
	conn.SetDeadline(time.Unix(1, 0))
	if n, err := conn.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write: %d, %v", n, err)
	}
	conn.SetDeadline(time.Time{})
	go io.Copy(io.Discard, l.far)
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Errorf("Write after clearing the deadline: %v", err)
	}
}

func TestCloseUnblocks(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	conn := leaseAPI(t, c)
	l := testkit.Recv(t, f.leases)
	errc := make(chan error, 2)
	started := make(chan struct{}, 2)
	go func() {
		started <- struct{}{}
		_, err := conn.Read(make([]byte, 10))
		errc <- err
	}()
	go func() {
		started <- struct{}{}
		// One Write far larger than flow control lets through while
		// nobody reads the upstream: it is in progress until Close.
		_, err := conn.Write(make([]byte, 64<<20))
		errc <- err
	}()
	<-started
	<-started
	// A byte at the upstream proves the Write has begun (and, with 64 MiB
	// to go, not ended) before Close cuts it short.
	if _, err := io.ReadFull(l.far, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// The upstream reads from now on, so the bytes the Write queued reach
	// it and Close, which waits for them, returns.
	go io.Copy(io.Discard, l.far)
	if err := conn.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for range 2 {
		if err := testkit.Recv(t, errc); !errors.Is(err, net.ErrClosed) {
			t.Errorf("got %v, want net.ErrClosed", err)
		}
	}
	if err := conn.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetDeadline after Close: %v", err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if testkit.Recv(t, f.releases) {
		t.Error("released reusable with a Write cut short")
	}
}

func TestClientCloseEndsConns(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	warm := leaseAPI(t, c)
	conn := leaseAPI(t, c)
	idle := idleSignal(c)
	warm.Close()
	testkit.Recv(t, idle)
	readErr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		readErr <- err
	}()
	c.Close() // waits for every stream goroutine
	if err := testkit.Recv(t, readErr); !errors.Is(err, ErrClientClosed) {
		t.Errorf("Read: %v, want ErrClientClosed", err)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, ErrClientClosed) {
		t.Errorf("Write: %v, want ErrClientClosed", err)
	}
	conn.Close()
}

func TestStats(t *testing.T) {
	f := newFake(t)
	c := newTestClient(t, f)
	ctx := context.Background()
	st, err := c.PoolStats(ctx, "api")
	if err != nil || st.GetName() != "pools/api" || st.GetMaxConnections() != 4 {
		t.Fatalf("PoolStats = %v, %v", st, err)
	}
	if _, err := c.PoolStats(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
		t.Errorf("PoolStats(nope): %v", err)
	}
	var n int
	for resp, err := range c.WatchStats(ctx, 100*time.Millisecond, "api", "pools/db") {
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetStats()) != 2 || resp.GetStats()[1].GetName() != "pools/db" || resp.GetStats()[0].GetAcquires() != uint64(n) {
			t.Errorf("snapshot %d: %v", n, resp)
		}
		if n++; n == 2 {
			break // cancels the stream
		}
	}
	// A stream the server ends is a finished sequence.
	n = 0
	for _, err := range c.WatchStats(ctx, 100*time.Millisecond) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d snapshots, want 3", n)
	}
	for _, err := range c.WatchStats(ctx, time.Second, "api") {
		if err == nil || status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad interval: %v", err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	for _, err := range c.WatchStats(cctx, 100*time.Millisecond, "api") {
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("after cancel: %v", err)
			}
			break
		}
		cancel()
	}
	cancel()
}

func TestDialerHTTP(t *testing.T) {
	var handshakes sync.Map
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "path="+r.URL.Path)
	}))
	up.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			handshakes.Store(c, true)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	f := newFake(t)
	f.newUpstream = func() (net.Conn, net.Conn, error) {
		near, err := net.Dial("tcp", up.Listener.Addr().String())
		return near, nil, err
	}
	c := newTestClient(t, f)
	tr := &http.Transport{DialContext: c.Dialer("api"), MaxConnsPerHost: 4, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				path := "/" + strings.Repeat("x", g+i)
				resp, err := hc.Get("http://api" + path)
				if err != nil {
					t.Error(err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != "path="+path {
					t.Errorf("got %q, %v", b, err)
				}
			}
		})
	}
	wg.Wait()
	var n int
	handshakes.Range(func(any, any) bool { n++; return true })
	if n > 4 {
		t.Errorf("%d upstream connections, want at most 4", n)
	}
}
