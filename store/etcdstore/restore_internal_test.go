package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
)

func TestPackUnits(t *testing.T) {
	u := func(orig int64, key string, ops, n int) restoreUnit {
		return restoreUnit{orig: orig, key: key, ops: ops, len: n}
	}
	tests := []struct {
		name  string
		units []restoreUnit
		ops   int
		bytes int
		want  string
	}{
		{"one key: one Txn per entry", []restoreUnit{u(1, "a", 1, 1), u(2, "a", 1, 1), u(3, "a", 3, 1)}, 10, 100, "[1a] [2a] [3a]"},
		{"revisions share a Txn", []restoreUnit{u(1, "a", 1, 1), u(2, "b", 1, 1), u(3, "c", 1, 1)}, 10, 100, "[1a 2b 3c]"},
		{"a revision is not split when it fits a Txn", []restoreUnit{u(1, "a", 3, 1), u(2, "b", 3, 1), u(2, "c", 3, 1)}, 6, 100, "[1a] [2b 2c]"},
		{"a revision larger than a Txn is split", []restoreUnit{u(1, "a", 3, 1), u(1, "b", 3, 1), u(1, "c", 3, 1)}, 6, 100, "[1a 1b] [1c]"},
		{"bytes", []restoreUnit{u(1, "a", 1, 60), u(2, "b", 1, 60), u(3, "c", 1, 30)}, 10, 100, "[1a] [2b 3c]"},
		{"an entry larger than a Txn goes alone", []restoreUnit{u(1, "a", 1, 10), u(2, "b", 1, 500), u(3, "c", 1, 10)}, 10, 100, "[1a] [2b] [3c]"},
		{"markers alone are not a revision", []restoreUnit{u(0, "a", 1, 1), u(0, "b", 1, 1), u(1, "a", 1, 1)}, 10, 100, "[0a 0b] [1a]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, b := range packUnits(tt.units, tt.ops, tt.bytes) {
				var s []string
				for _, u := range b {
					s = append(s, fmt.Sprint(u.orig, u.key))
				}
				got = append(got, "["+strings.Join(s, " ")+"]")
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("packUnits = %s, want %s", g, tt.want)
			}
		})
	}
}

// restoreFixture is a backup of three keys over four revisions: with 8
// ops per Txn, the restore takes the marker's Txn and four more (a1;
// a2 and c1; a3; b1 and c2).
func restoreFixture() (int64, []store.ImportKey) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	put := func(rev int64, v string) store.HistoryEntry {
		return store.HistoryEntry{Revision: rev, Time: t0.Add(time.Duration(rev) * time.Second), Action: store.ActionPut, Value: []byte(v), Actor: "t"}
	}
	cur := func(key string, rev int64, v string) *store.KeyValue {
		return &store.KeyValue{Key: key, Value: []byte(v), CreateRevision: 1, ModRevision: rev, Version: 3}
	}
	return 4, []store.ImportKey{
		{Key: "pools/a", History: []store.HistoryEntry{put(1, "a1"), put(2, "a2"), put(3, "a3")}, Current: cur("pools/a", 3, "a3")},
		{Key: "pools/b", History: []store.HistoryEntry{put(4, "b1")}, Current: cur("pools/b", 4, "b1")},
		{Key: "pools/c", History: []store.HistoryEntry{put(2, "c1"), put(4, "c2")}, Current: cur("pools/c", 4, "c2")},
	}
}

// A restore stopped midway (its context canceled, a key it restores
// written by another writer, another restore replacing it) says so and
// leaves the prefix marked unfinished; a Replace then restores it whole.
func TestRestoreInterrupted(t *testing.T) {
	srv := etcdtest.Start(t)
	rev, keys := restoreFixture()
	tests := []struct {
		name string
		// during runs after the restore's first Txn, with the Store and
		// the cancel of the restore's context.
		during func(t *testing.T, s *Store, cancel context.CancelFunc)
		want   string
		open   bool // the prefix is left marked unfinished
	}{
		{"canceled", func(_ *testing.T, _ *Store, cancel context.CancelFunc) { cancel() }, "context canceled", true},
		{"a key written", func(t *testing.T, s *Store, _ context.CancelFunc) {
			if _, err := s.Put(t.Context(), "pools/b", []byte("other"), store.Any(), "other"); err != nil {
				t.Error(err)
			}
		}, "a key it restores was written meanwhile", true},
		{"replaced by another restore", func(t *testing.T, s *Store, _ context.CancelFunc) {
			other, err := New(Config{Endpoints: []string{srv.Endpoint()}, Prefix: strings.TrimSuffix(s.watchPrefix, "/")})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = other.Close() }()
			if _, err := other.Restore(t.Context(), rev, keys, RestoreOptions{Replace: true}); err != nil {
				t.Error(err)
			}
		}, "another restore replaced it", false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{Endpoints: []string{srv.Endpoint()}, Prefix: fmt.Sprintf("int%d", i)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s.restoreHook = func(txns int) {
				if txns == 2 {
					tt.during(t, s, cancel)
				}
			}
			_, err = s.Restore(ctx, rev, keys, RestoreOptions{MaxTxnOps: 8})
			if !errors.Is(err, ErrRestoreUnfinished) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Restore = %v, want ErrRestoreUnfinished: %s", err, tt.want)
			}
			s.restoreHook = nil
			if err := s.CheckRestore(t.Context()); errors.Is(err, ErrRestoreUnfinished) != tt.open {
				t.Errorf("CheckRestore = %v, want unfinished %v", err, tt.open)
			}
			if !tt.open {
				return
			}
			if _, err := s.Restore(t.Context(), rev, keys, RestoreOptions{}); !errors.Is(err, ErrRestoreUnfinished) {
				t.Errorf("Restore without Replace = %v, want ErrRestoreUnfinished", err)
			}
			res, err := s.Restore(t.Context(), rev, keys, RestoreOptions{Replace: true, MaxTxnOps: 8})
			if err != nil || res.Txns != 5 {
				t.Fatalf("Restore with Replace = %+v, %v", res, err)
			}
			for _, k := range keys {
				h, err := s.History(t.Context(), k.Key)
				if err != nil || len(h) != len(k.History) || string(h[len(h)-1].Value) != string(k.Current.Value) {
					t.Errorf("History(%s) after the replace = %+v, %v", k.Key, h, err)
				}
			}
			if err := s.CheckRestore(t.Context()); err != nil {
				t.Errorf("CheckRestore after the replace = %v", err)
			}
		})
	}
}
