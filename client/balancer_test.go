package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/testkit"
)

// newReplicasClient returns a Client over every fake, closed at cleanup,
// once its balancer sees want of them ready.
func newReplicasClient(t *testing.T, want int, fs []*fakeServer, opts ...Option) *Client {
	t.Helper()
	addrs := make([]string, len(fs))
	for i, f := range fs {
		addrs[i] = f.addr
	}
	c, err := New(strings.Join(addrs, ","), append([]Option{WithInsecure(), WithClientName("test")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.cc.Connect()
	waitReady(t, c, want)
	return c
}

// waitReady waits until c's balancer sees n replicas ready.
func waitReady(t *testing.T, c *Client, n int) {
	t.Helper()
	ready := func() int {
		if p := c.replicas.ready.Load(); p != nil {
			return len(*p)
		}
		return 0
	}
	if !testkit.Poll(t, testkit.DefaultWait, func() bool { return ready() == n }) {
		t.Fatalf("%d replicas ready, want %d", ready(), n)
	}
}

// echoLease leases from c, checks one exchange through the fake that
// granted it, and releases, waiting until the stream is warm again.
func echoLease(t *testing.T, c *Client, fs []*fakeServer, idle <-chan string) {
	t.Helper()
	conn := leaseAPI(t, c)
	var l *fakeLease
	select {
	case l = <-fs[0].leases:
	case l = <-fs[1].leases:
	case l = <-fs[2].leases:
	case <-time.After(10 * time.Second):
		t.Fatal("no fake granted the lease")
	}
	go func() { l.far.Write([]byte("+OK\r\n")) }()
	if _, err := io.ReadFull(conn, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	testkit.Recv(t, idle)
}

// Warm streams stay on their replica, yet successive leases take turns
// over the replicas: each gets a third of them, on one warm stream.
func TestLeasesTakeTurnsOverReplicas(t *testing.T) {
	fs := []*fakeServer{newFake(t), newFake(t), newFake(t)}
	c := newReplicasClient(t, 3, fs)
	idle := idleSignal(c)
	const leases = 30
	for range leases {
		echoLease(t, c, fs, idle)
	}
	for i, f := range fs {
		if n := f.leaseN.Load(); n != leases/3 {
			t.Errorf("replica %d granted %d of %d leases, want %d", i, n, leases, leases/3)
		}
		if n := f.streams.Load(); n != 1 {
			t.Errorf("replica %d: %d streams, want 1 (warm reuse)", i, n)
		}
	}
	if n := c.idleStreams("api"); n != 3 {
		t.Errorf("%d warm streams, want 3 (one per replica)", n)
	}
}

// A replica whose health service reports NOT_SERVING gets no leases; it
// gets them again once it serves.
func TestLeasesSkipNotServingReplica(t *testing.T) {
	fs := []*fakeServer{newFake(t), newFake(t), newFake(t)}
	c := newReplicasClient(t, 3, fs)
	idle := idleSignal(c)
	fs[1].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	waitReady(t, c, 2)
	for range 10 {
		echoLease(t, c, fs, idle)
	}
	if n := fs[1].leaseN.Load(); n != 0 {
		t.Errorf("the NOT_SERVING replica granted %d leases, want 0", n)
	}
	if n := fs[0].leaseN.Load() + fs[2].leaseN.Load(); n != 10 {
		t.Errorf("the serving replicas granted %d leases, want 10", n)
	}
	fs[1].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	waitReady(t, c, 3)
	// None serving: none is ready, and a lease fails rather than waits.
	for _, f := range fs {
		f.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	waitReady(t, c, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Lease(ctx, "api"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("lease with no replica serving: %v, want ErrUnavailable", err)
	}
	for _, f := range fs {
		f.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	}
	waitReady(t, c, 3)
	for range 3 {
		echoLease(t, c, fs, idle)
	}
	if n := fs[1].leaseN.Load(); n != 1 {
		t.Errorf("the replica serving again granted %d of 3 leases, want 1", n)
	}
}

// A lease refused before anything reached the upstream (the pool drains
// or closes there, or the replica is fenced off etcd) is retried on another
// replica, never on the one that refused it, 0-RTT data included: with one
// replica of two refusing, every lease succeeds.
func TestLeaseRetryAvoidsRefusingReplica(t *testing.T) {
	for _, refusal := range []error{
		fakeStatus(codes.FailedPrecondition, "POOL_DRAINING", "pool api is draining", nil),
		fakeStatus(codes.Unavailable, "POOL_CLOSED", "shutting down", nil),
		fakeStatus(codes.Unavailable, "REPLICA_FENCED", "no share of the fleet limit", nil),
	} {
		for _, data := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/data=%v", refusal, data), func(t *testing.T) {
				fs := []*fakeServer{newFake(t), newFake(t)}
				fs[0].onOpen = func(context.Context, *poolv1.LeaseRequest_Open) error { return refusal }
				fs[1].zeroRTT = data
				c := newReplicasClient(t, 2, fs, WithIdleStreams(0))
				const leases = 20
				for i := range leases {
					var first []byte
					if data {
						first = []byte("GET\r\n")
					}
					conn, err := c.LeaseWith(context.Background(), "api", first)
					if err != nil {
						t.Fatalf("lease %d: %v", i, err)
					}
					l := testkit.Recv(t, fs[1].leases)
					if data {
						got := make([]byte, len(first))
						if _, err := io.ReadFull(l.far, got); err != nil || string(got) != string(first) {
							t.Fatalf("upstream read 0-RTT data %q, %v; want %q", got, err, first)
						}
						testkit.Recv(t, fs[1].zeroData)
					}
					conn.Close()
					testkit.Recv(t, fs[1].releases)
				}
				refused := 0
				for range len(fs[0].streamEnd) {
					if err := <-fs[0].streamEnd; err != nil {
						refused++
					}
				}
				if refused != leases/2 {
					t.Errorf("the refusing replica refused %d of %d leases, want %d (its turns)", refused, leases, leases/2)
				}
				if n := fs[1].leaseN.Load(); n != leases {
					t.Errorf("the serving replica granted %d leases, want %d", n, leases)
				}
			})
		}
	}
}

func TestPickFrom(t *testing.T) {
	abc := []string{"a", "b", "c"}
	tests := []struct {
		name  string
		addrs []string
		turn  uint32 // the counter before the pick
		avoid string
		want  string
		next  uint32 // the counter after it
	}{
		{"none", nil, 0, "", "", 0},
		{"one", []string{"a"}, 5, "", "a", 5},
		{"one avoided is still picked", []string{"a"}, 5, "a", "a", 5},
		{"takes a turn", abc, 0, "", "b", 1},
		{"wraps", abc, 2, "", "a", 3},
		{"avoid skips without a turn", abc, 1, "b", "c", 1},
		{"avoid elsewhere keeps the turn", abc, 1, "a", "b", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var next atomic.Uint32
			next.Store(tt.turn)
			if got := pickFrom(tt.addrs, &next, tt.avoid); got != tt.want {
				t.Errorf("pickFrom = %q, want %q", got, tt.want)
			}
			if got := next.Load(); got != tt.next {
				t.Errorf("turn counter %d, want %d", got, tt.next)
			}
		})
	}
}

// recordingCC is a balancer.ClientConn that records, at each UpdateState,
// the replicas the Client knew ready as the picker was installed.
type recordingCC struct {
	balancer.ClientConn
	set  *replicaSet
	seen []string
}

func (cc *recordingCC) UpdateState(balancer.State) {
	var ready []string
	if p := cc.set.ready.Load(); p != nil {
		ready = *p
	}
	cc.seen = append(cc.seen, strings.Join(ready, ","))
}

// The ready replicas reach the Client before the picker that leads out of
// a state with none ready (its streams could carry a lease to its end
// before the Client knew a replica, and the next lease would miss the
// warm stream), and after any later picker (a lease must not name a
// replica the installed picker does not know).
func TestReadyPublishedAroundPicker(t *testing.T) {
	set := &replicaSet{}
	rec := &recordingCC{set: set}
	cc := lbClientConn{ClientConn: rec, pb: &pickerBuilder{set: set}}
	ready := func(addrs ...string) balancer.State {
		return balancer.State{ConnectivityState: connectivity.Ready, Picker: &picker{addrs: addrs}}
	}
	cc.UpdateState(balancer.State{ConnectivityState: connectivity.Connecting, Picker: base.NewErrPicker(balancer.ErrNoSubConnAvailable)})
	cc.UpdateState(ready("a:1"))        // the first picker: published before
	cc.UpdateState(ready("a:1", "b:2")) // a replica more: published after
	cc.UpdateState(ready("b:2"))        // one fewer: after
	cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: base.NewErrPicker(errors.New("down"))})
	cc.UpdateState(ready("b:2")) // ready again: before
	want := []string{"", "a:1", "a:1", "a:1,b:2", "", "b:2"}
	if !slices.Equal(rec.seen, want) {
		t.Errorf("ready replicas as each picker was installed: %q, want %q", rec.seen, want)
	}
	if got := set.pick(""); got != "b:2" {
		t.Errorf("pick after the last picker = %q, want b:2", got)
	}
}
