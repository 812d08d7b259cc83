package etcdstore_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

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
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, opts storetest.Options) storetest.Store {
		t.Helper()
		s, err := etcdstore.New(etcdstore.Config{
			Endpoints:    []string{srv.Endpoint()},
			Prefix:       fmt.Sprintf("test%d", n.Add(1)),
			HistoryLimit: opts.HistoryLimit,
			Now:          opts.Now,
		})
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
