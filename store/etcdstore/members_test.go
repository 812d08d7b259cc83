package etcdstore_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// logBuffer collects log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var memberPrefixes atomic.Int64

// joinVia joins as id through endpoint, with a short TTL, and waits until
// registered.
func joinVia(t *testing.T, endpoint, prefix string, cfg etcdstore.MemberConfig) *etcdstore.Membership {
	t.Helper()
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{endpoint}, Prefix: prefix, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ms, err := s.JoinWith(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	if err := ms.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ms.Fenced() {
		t.Fatal("fenced after WaitReady")
	}
	return ms
}

// A replica partitioned from etcd (through a proxy it alone uses) fences
// itself before the others see its registration expire, re-registers
// under the same id when etcd is back, and un-fences; the others then
// count it again.
func TestMembershipFencesBeforeExpiry(t *testing.T) {
	srv := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, srv.Endpoint())
	prefix := fmt.Sprintf("fence%d", memberPrefixes.Add(1))
	var logs logBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	a := joinVia(t, proxy.Addr(), prefix, etcdstore.MemberConfig{ID: "a", TTL: 2 * time.Second, Logger: logger})
	b := joinVia(t, srv.Endpoint(), prefix, etcdstore.MemberConfig{ID: "b", TTL: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	testkit.WaitWithin(t, 5*time.Second, "both see two replicas", func() bool {
		_, na := a.Members()
		_, nb := b.Members()
		return na == 2 && nb == 2
	})

	proxy.Cut()
	cut := time.Now()
	// Read a first, then b: a round that finds a fenced and b still
	// counting it proves the order.
	var fencedAt, provenAt, leftAt time.Time
	testkit.WaitWithin(t, 10*time.Second, "b sees a leave", func() bool {
		fenced := a.Fenced()
		_, nb := b.Members()
		now := time.Now()
		if fenced && fencedAt.IsZero() {
			fencedAt = now
		}
		if nb == 1 {
			leftAt = now
			return true
		}
		if fenced && provenAt.IsZero() {
			provenAt = now // a fenced while b still counts it
		}
		return false
	})
	if provenAt.IsZero() {
		t.Fatalf("b saw a leave (%v after the cut) before a was seen fenced", leftAt.Sub(cut))
	}
	t.Logf("after the cut: a fenced by %v, b saw a leave at %v: margin at least %v",
		fencedAt.Sub(cut), leftAt.Sub(cut), leftAt.Sub(provenAt))
	if !strings.Contains(logs.String(), "replica fenced") {
		t.Errorf("no fence log line: %s", logs.String())
	}

	proxy.Restore()
	restored := time.Now()
	testkit.WaitWithin(t, 10*time.Second, "a re-registers and un-fences", func() bool {
		_, na := a.Members()
		_, nb := b.Members()
		return !a.Fenced() && na == 2 && nb == 2
	})
	t.Logf("un-fenced and counted again %v after the restore", time.Since(restored))
	if !strings.Contains(logs.String(), "replica unfenced") {
		t.Errorf("no unfence log line: %s", logs.String())
	}
}

// A partition shorter than the TTL but longer than the fence deadline
// fences the replica without losing its registration: the others never
// see it leave, and it un-fences once a renewal gets through.
func TestMembershipShortPartition(t *testing.T) {
	srv := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, srv.Endpoint())
	prefix := fmt.Sprintf("fence%d", memberPrefixes.Add(1))
	quiet := slog.New(slog.DiscardHandler)
	// TTL 4s, margin 1.5s: fenced at most 2.5s after the last renewal,
	// with 1.5s for the renewal after the restore before etcd could
	// expire the lease.
	a := joinVia(t, proxy.Addr(), prefix, etcdstore.MemberConfig{ID: "a", TTL: 4 * time.Second, FenceMargin: 1500 * time.Millisecond, Logger: quiet})
	b := joinVia(t, srv.Endpoint(), prefix, etcdstore.MemberConfig{ID: "b", TTL: 4 * time.Second, Logger: quiet})
	testkit.WaitWithin(t, 5*time.Second, "both see two replicas", func() bool {
		_, nb := b.Members()
		return nb == 2
	})
	proxy.Cut()
	stillCounted := func() {
		t.Helper()
		if _, nb := b.Members(); nb != 2 {
			t.Fatal("b saw a leave: its lease expired")
		}
	}
	testkit.WaitWithin(t, 5*time.Second, "a fenced", func() bool { stillCounted(); return a.Fenced() })
	proxy.Restore()
	testkit.WaitWithin(t, 5*time.Second, "a un-fenced", func() bool { stillCounted(); return !a.Fenced() })
}

// Close fences the replica and leaves the set at once.
func TestMembershipCloseFences(t *testing.T) {
	srv := etcdtest.Start(t)
	prefix := fmt.Sprintf("fence%d", memberPrefixes.Add(1))
	quiet := slog.New(slog.DiscardHandler)
	a := joinVia(t, srv.Endpoint(), prefix, etcdstore.MemberConfig{ID: "a", TTL: 2 * time.Second, Logger: quiet})
	b := joinVia(t, srv.Endpoint(), prefix, etcdstore.MemberConfig{ID: "b", TTL: 2 * time.Second, Logger: quiet})
	testkit.WaitWithin(t, 5*time.Second, "b sees a", func() bool { _, n := b.Members(); return n == 2 })
	changed := a.Changed()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Error("Close did not signal Changed")
	}
	if !a.Fenced() {
		t.Error("not fenced after Close")
	}
	// Well within the TTL: the lease was revoked.
	testkit.WaitWithin(t, time.Second, "b sees a leave", func() bool { _, n := b.Members(); return n == 1 })
}

// A margin of half the TTL or more is refused: the replica would fence
// between renewals.
func TestJoinWithMargin(t *testing.T) {
	srv := etcdtest.Start(t)
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "margin"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, err := s.JoinWith(etcdstore.MemberConfig{ID: "a", TTL: 2 * time.Second, FenceMargin: time.Second}); err == nil {
		t.Error("JoinWith accepted a margin of half the TTL")
	}
}
