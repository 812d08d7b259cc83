package etcdstore_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
	"github.com/poolplane/poolplane/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreGoroutines()...)
}

// TestConformance runs the backend-independent suite against one embedded
// etcd member, each test in a fresh prefix.
func TestConformance(t *testing.T) {
	srv := etcdtest.Start(t)
	runConformance(t, etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "test"})
}

// runConformance runs the storetest suite against stores made from base,
// each test in a fresh prefix: base.Prefix and a number.
func runConformance(t *testing.T, base etcdstore.Config) {
	t.Helper()
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, opts storetest.Options) storetest.Store {
		t.Helper()
		cfg := base
		cfg.Prefix = fmt.Sprintf("%s%d", base.Prefix, n.Add(1))
		cfg.HistoryLimit, cfg.Now = opts.HistoryLimit, opts.Now
		s, err := etcdstore.New(cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		in     string
		eps    string
		prefix string
		ok     bool
	}{
		{"etcd://127.0.0.1:2379/poolplane", "[127.0.0.1:2379]", "poolplane", true},
		{"etcd://a:1,b:2/x/y", "[a:1 b:2]", "x/y", true},
		{"etcd://a:1", "", "", false},
		{"etcd://a:1/", "", "", false},
		{"http://a:1/p", "", "", false},
		{"etcd://a:1,,b:2/p", "", "", false},
		{"etcds://a:1,b:2/p", "[https://a:1 https://b:2]", "p", true},
		{"etcd://user:pw@a:1/p", "", "", false},
		{"etcds://a:1", "", "", false},
	}
	for _, tt := range tests {
		eps, prefix, err := etcdstore.ParseURL(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (fmt.Sprint(eps) != tt.eps || prefix != tt.prefix)) {
			t.Errorf("ParseURL(%q) = %v, %q, %v", tt.in, eps, prefix, err)
		}
	}
}

// A watch from a revision etcd compacted fails with store.ErrCompacted;
// from the compaction revision on it works.
func TestWatchCompacted(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	s, err := etcdstore.New(etcdstore.Config{Client: cli, Prefix: "c"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var rev int64
	for i := range 5 {
		if rev, err = s.Put(t.Context(), "k", fmt.Append(nil, i), store.Any(), "t"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Compact(t.Context(), rev-1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(t.Context(), rev-3); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("Watch(compacted) = %v, want ErrCompacted", err)
	}
	w, err := s.Watch(t.Context(), rev-1)
	if err != nil {
		t.Fatal(err)
	}
	if ev := storetest.Recv(t, w); ev.Revision != rev || ev.Actor != "t" {
		t.Errorf("event = %+v", ev)
	}
}

// Replicas that join see each other, ranked by id; one that leaves is gone
// from the others' member set at once (its lease is revoked).
func TestMembership(t *testing.T) {
	srv := etcdtest.Start(t)
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "m"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, err := s.Join("a/b", 0); err == nil {
		t.Error("Join accepted an id with a slash")
	}
	a, err := s.Join("a", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := s.Join("b", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, ms := range []*etcdstore.Membership{a, b} {
		if err := ms.WaitReady(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ra, na := a.Members()
		rb, nb := b.Members()
		if ra == 0 && rb == 1 && na == 2 && nb == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members: a %d/%d, b %d/%d", ra, na, rb, nb)
		}
		select {
		case <-a.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
	changed := a.Changed()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no change after b left")
	}
	if r, n := a.Members(); r != 0 || n != 1 {
		t.Errorf("after b left: a %d/%d", r, n)
	}
}
