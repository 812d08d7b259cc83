package etcdstore

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestFenceDeadline(t *testing.T) {
	sent := time.Unix(1000, 0)
	tests := []struct {
		ttl, margin time.Duration
		want        time.Duration // after sent
	}{
		{5 * time.Second, time.Second, 4 * time.Second},
		{2 * time.Second, 400 * time.Millisecond, 1600 * time.Millisecond},
		{2 * time.Second, 0, 2 * time.Second},
	}
	for _, tt := range tests {
		if got := fenceDeadline(sent, tt.ttl, tt.margin); got.Sub(sent) != tt.want {
			t.Errorf("fenceDeadline(sent, %v, %v) = sent+%v, want sent+%v", tt.ttl, tt.margin, got.Sub(sent), tt.want)
		}
	}
	if got := retryInterval(5 * time.Second); got != 500*time.Millisecond {
		t.Errorf("retryInterval(5s) = %v", got)
	}
	if got := retryInterval(200 * time.Millisecond); got != 50*time.Millisecond {
		t.Errorf("retryInterval(200ms) = %v", got)
	}
}

// The fence is decided on the injected local clock alone: a clock that
// jumps past the fence deadline fences the replica even though etcd
// answers, and the next renewal (sent on the new clock) un-fences it.
func TestFenceFollowsLocalClock(t *testing.T) {
	srv := etcdtest.Start(t)
	s, err := New(Config{Endpoints: []string{srv.Endpoint()}, Prefix: "clock"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var offset atomic.Int64
	var logs testkit.SyncBuffer
	ms, err := s.JoinWith(MemberConfig{
		ID:     "a",
		TTL:    2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Now:    func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	if err := ms.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(time.Minute))
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		l := logs.String()
		f := strings.Index(l, "replica fenced")
		u := strings.Index(l, "replica unfenced")
		if f >= 0 && u > f && !ms.Fenced() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fence then unfence after the clock jumped; fenced=%v, logs:\n%s", ms.Fenced(), l)
		}
		<-tick.C
	}
}
