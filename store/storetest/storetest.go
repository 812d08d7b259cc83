// Package storetest is the behavioural conformance suite of the store
// interface that poolmgr declares: every backend (the bbolt store in
// package store, the etcd store in package etcdstore) runs the same tests
// through [Run].
//
// The suite asserts revisions relative to the revision the store reports
// when it is opened, so a backend whose global revision does not start at
// 0 (etcd) passes as long as nothing else writes to it during a test. The
// tests do not run in parallel.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store"

	"github.com/poolplane/poolplane/internal/testkit"
)

// Store is the method set under test: poolmgr.Store plus Close.
type Store interface {
	Put(ctx context.Context, key string, value []byte, expect store.Expect, actor string) (int64, error)
	Get(ctx context.Context, key string) (store.KeyValue, error)
	List(ctx context.Context, prefix string, pageSize int, pageToken string) ([]store.KeyValue, string, error)
	Snapshot(ctx context.Context, prefix string) ([]store.KeyValue, int64, error)
	Delete(ctx context.Context, key string, expect store.Expect, actor string) (int64, error)
	Txn(ctx context.Context, ops []store.Op, actor string) (int64, error)
	Revision(ctx context.Context) (int64, error)
	History(ctx context.Context, key string) ([]store.HistoryEntry, error)
	HistoryAt(ctx context.Context, key string, rev int64) (store.HistoryEntry, error)
	Watch(ctx context.Context, fromRevision int64) (<-chan store.Event, error)
	Close() error
}

// Options are what a test asks of the store it opens. Zero fields mean the
// backend's defaults.
type Options struct {
	HistoryLimit int              // versions kept per key
	Now          func() time.Time // clock recorded in history and events
}

// OpenFunc opens an empty store for one test and closes it at the test's
// cleanup (a test may also Close it itself: Close must be idempotent).
type OpenFunc func(t *testing.T, opts Options) Store

// WaitLimit bounds how long a test waits for an event that must come. It
// is a failure deadline, not a way to wait for state.
const WaitLimit = testkit.DefaultWait

// Run runs the whole suite against the stores that open returns.
func Run(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, OpenFunc)
	}{
		{"CloseIdempotentAndErrClosed", testCloseIdempotentAndErrClosed},
		{"ContextDone", testContextDone},
		{"PutGetDeleteRevisions", testPutGetDeleteRevisions},
		{"Preconditions", testPreconditions},
		{"Validation", testValidation},
		{"CASContention", testCASContention},
		{"TxnAllOrNothing", testTxnAllOrNothing},
		{"List", testList},
		{"History", testHistory},
		{"WatchConcurrentWriters", testWatchConcurrentWriters},
		{"WatchHistoricalThenLive", testWatchHistoricalThenLive},
		{"WatchEndsWithCtx", testWatchEndsWithCtx},
		{"WatchEndsWithClose", testWatchEndsWithClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open) })
	}
}

// base returns the store's current revision: the suite's origin.
func base(t *testing.T, s Store) int64 {
	t.Helper()
	rev, err := s.Revision(t.Context())
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return rev
}

func mustPut(t *testing.T, s Store, key, value string, expect store.Expect) int64 {
	t.Helper()
	rev, err := s.Put(context.Background(), key, []byte(value), expect, "test")
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

// Recv returns the next event from ch, failing the test if none comes
// within WaitLimit or ch closes.
func Recv(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	return testkit.RecvOpen(t, ch)
}

// WaitClosed drains ch until it closes and returns what it drained.
func WaitClosed(t *testing.T, ch <-chan store.Event) []store.Event {
	t.Helper()
	return testkit.Drain(t, ch)
}

func kvEqual(a, b store.KeyValue) bool {
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version
}

func testCloseIdempotentAndErrClosed(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	mustPut(t, s, "k", "v", store.Any())
	for i := range 3 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i, err)
		}
	}
	ctx := t.Context()
	tests := []struct {
		name string
		call func() error
	}{
		{"Put", func() error { _, err := s.Put(ctx, "k", nil, store.Any(), "a"); return err }},
		{"Get", func() error { _, err := s.Get(ctx, "k"); return err }},
		{"List", func() error { _, _, err := s.List(ctx, "", 0, ""); return err }},
		{"Snapshot", func() error { _, _, err := s.Snapshot(ctx, ""); return err }},
		{"Delete", func() error { _, err := s.Delete(ctx, "k", store.Any(), "a"); return err }},
		{"Revision", func() error { _, err := s.Revision(ctx); return err }},
		{"Txn", func() error { _, err := s.Txn(ctx, []store.Op{{Kind: store.OpPut, Key: "k"}}, "a"); return err }},
		{"History", func() error { _, err := s.History(ctx, "k"); return err }},
		{"HistoryAt", func() error { _, err := s.HistoryAt(ctx, "k", 1); return err }},
		{"Watch", func() error { _, err := s.Watch(ctx, 0); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, store.ErrClosed) {
				t.Errorf("err = %v, want ErrClosed", err)
			}
		})
	}
}

func testContextDone(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	r1 := mustPut(t, s, "k", "v", store.Any())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Put(ctx, "k", nil, store.Any(), "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("Put: %v", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get: %v", err)
	}
	if _, err := s.Watch(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch: %v", err)
	}
	if rev, _ := s.Revision(t.Context()); rev != r1 {
		t.Errorf("revision moved to %d, want %d", rev, r1)
	}
}

func testPutGetDeleteRevisions(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	ctx := t.Context()
	b := base(t, s)
	r1 := mustPut(t, s, "a", "1", store.Absent())
	r2 := mustPut(t, s, "b", "x", store.Any())
	r3 := mustPut(t, s, "a", "2", store.AtRevision(r1))
	if r1 != b+1 || r2 != b+2 || r3 != b+3 {
		t.Fatalf("revisions %d %d %d, want %d %d %d", r1, r2, r3, b+1, b+2, b+3)
	}
	kv, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	want := store.KeyValue{Key: "a", Value: []byte("2"), CreateRevision: r1, ModRevision: r3, Version: 2}
	if !kvEqual(kv, want) {
		t.Errorf("Get = %+v, want %+v", kv, want)
	}
	r4, err := s.Delete(ctx, "a", store.AtRevision(r3), "test")
	if err != nil || r4 != b+4 {
		t.Fatalf("Delete = %d, %v", r4, err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after delete: %v", err)
	}
	if _, err := s.Delete(ctx, "a", store.Any(), "test"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete absent: %v", err)
	}
	r5 := mustPut(t, s, "a", "3", store.Absent())
	kv, _ = s.Get(ctx, "a")
	want = store.KeyValue{Key: "a", Value: []byte("3"), CreateRevision: r5, ModRevision: r5, Version: 1}
	if !kvEqual(kv, want) {
		t.Errorf("re-created = %+v, want %+v", kv, want)
	}
	// Values are copied in: changing the caller's slice changes nothing.
	buf := []byte("orig")
	if _, err := s.Put(ctx, "c", buf, store.Any(), "t"); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXX")
	if kv, _ := s.Get(ctx, "c"); string(kv.Value) != "orig" {
		t.Errorf("value aliased caller slice: %q", kv.Value)
	}
	// An empty value reads back as empty and non-nil.
	mustPut(t, s, "empty", "", store.Any())
	if kv, err := s.Get(ctx, "empty"); err != nil || kv.Value == nil || len(kv.Value) != 0 {
		t.Errorf("empty value = %#v, %v", kv.Value, err)
	}
}

func testPreconditions(t *testing.T, open OpenFunc) {
	// Each case starts with key "k" at ModRevision b+2 (created at b+1);
	// the revisions in the table are relative to b.
	tests := []struct {
		name     string
		del      bool
		key      string
		rel      int64 // AtRevision(b+rel) when kind is "rev"
		kind     string
		wantErr  error
		mismatch *store.RevisionMismatchError // Expected and Current relative to b
	}{
		{name: "put any", key: "k", kind: "any"},
		{name: "put absent exists", key: "k", kind: "absent", wantErr: store.ErrExists},
		{name: "put absent new", key: "new", kind: "absent"},
		{name: "put at rev", key: "k", kind: "rev", rel: 2},
		{name: "put stale rev", key: "k", kind: "rev", rel: 1, wantErr: store.ErrRevisionMismatch,
			mismatch: &store.RevisionMismatchError{Key: "k", Expected: 1, Current: 2}},
		{name: "put rev on absent", key: "new", kind: "rev", rel: 2, wantErr: store.ErrRevisionMismatch,
			mismatch: &store.RevisionMismatchError{Key: "new", Expected: 2, Current: 0}},
		{name: "put rev zero", key: "k", kind: "zero", wantErr: store.ErrInvalidArgument},
		{name: "delete any", del: true, key: "k", kind: "any"},
		{name: "delete at rev", del: true, key: "k", kind: "rev", rel: 2},
		{name: "delete stale", del: true, key: "k", kind: "rev", rel: 1, wantErr: store.ErrRevisionMismatch},
		{name: "delete absent key", del: true, key: "new", kind: "any", wantErr: store.ErrNotFound},
		{name: "delete absent expect", del: true, key: "k", kind: "absent", wantErr: store.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, Options{})
			b := base(t, s)
			mustPut(t, s, "k", "v1", store.Any())
			mustPut(t, s, "k", "v2", store.Any())
			var expect store.Expect
			switch tt.kind {
			case "any":
				expect = store.Any()
			case "absent":
				expect = store.Absent()
			case "rev":
				expect = store.AtRevision(b + tt.rel)
			case "zero":
				expect = store.AtRevision(0)
			}
			var err error
			if tt.del {
				_, err = s.Delete(t.Context(), tt.key, expect, "t")
			} else {
				_, err = s.Put(t.Context(), tt.key, []byte("x"), expect, "t")
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if rev, _ := s.Revision(t.Context()); rev != b+2 {
				t.Errorf("failed write moved revision to %d, want %d", rev, b+2)
			}
			if tt.mismatch != nil {
				want := *tt.mismatch
				want.Expected += b
				if want.Current != 0 {
					want.Current += b
				}
				var me *store.RevisionMismatchError
				if !errors.As(err, &me) || *me != want {
					t.Errorf("err = %#v, want %#v", err, want)
				}
			}
		})
	}
}

func testValidation(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	long := strings.Repeat("k", store.MaxKeySize)
	tests := []struct {
		name  string
		ops   []store.Op
		actor string
		ok    bool
	}{
		{"max key", []store.Op{{Kind: store.OpPut, Key: long}}, "", true},
		{"binary key", []store.Op{{Kind: store.OpPut, Key: "\x00\xff/"}}, "", true},
		{"empty key", []store.Op{{Kind: store.OpPut, Key: ""}}, "", false},
		{"long key", []store.Op{{Kind: store.OpPut, Key: long + "k"}}, "", false},
		{"long value", []store.Op{{Kind: store.OpPut, Key: "v", Value: make([]byte, store.MaxValueSize+1)}}, "", false},
		{"long actor", []store.Op{{Kind: store.OpPut, Key: "a"}}, strings.Repeat("a", store.MaxActorSize+1), false},
		{"no ops", nil, "", false},
		{"zero kind", []store.Op{{Key: "a"}}, "", false},
		{"dup key", []store.Op{{Kind: store.OpPut, Key: "a"}, {Kind: store.OpDelete, Key: "a"}}, "", false},
		{"bad expect", []store.Op{{Kind: store.OpPut, Key: "a", Expect: store.AtRevision(-1)}}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Txn(t.Context(), tt.ops, tt.actor)
			if tt.ok && err != nil {
				t.Errorf("err = %v", err)
			}
			if !tt.ok && !errors.Is(err, store.ErrInvalidArgument) {
				t.Errorf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
	for _, key := range []string{"", long + "k"} {
		if _, err := s.Get(t.Context(), key); !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("Get(len %d): %v", len(key), err)
		}
	}
	if _, err := s.Watch(t.Context(), -1); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("Watch(-1): %v", err)
	}
	if _, _, err := s.List(t.Context(), "", 1, "garbage!"); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("List bad token: %v", err)
	}
}

func testCASContention(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	ctx := t.Context()
	const (
		workers = 16
		rounds  = 6
	)
	rev := mustPut(t, s, "cas", "init", store.Absent())
	for round := range rounds {
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			mu      sync.Mutex
			winners []int64
			others  []error
		)
		for w := range workers {
			wg.Go(func() {
				<-start
				r, err := s.Put(ctx, "cas", fmt.Appendf(nil, "r%d-w%d", round, w), store.AtRevision(rev), fmt.Sprint("w", w))
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					winners = append(winners, r)
				} else {
					others = append(others, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, len(winners))
		}
		for _, err := range others {
			var me *store.RevisionMismatchError
			if !errors.As(err, &me) || me.Expected != rev || me.Current != winners[0] {
				t.Fatalf("round %d: loser err = %v", round, err)
			}
		}
		rev = winners[0]
	}
	kv, err := s.Get(ctx, "cas")
	if err != nil || kv.Version != rounds+1 || kv.ModRevision != rev {
		t.Errorf("final = %+v, %v", kv, err)
	}
}

func testTxnAllOrNothing(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	ctx := t.Context()
	rA := mustPut(t, s, "a", "a1", store.Any())
	rB := mustPut(t, s, "b", "b1", store.Any())

	failing := [][]store.Op{
		{{Kind: store.OpPut, Key: "c", Value: []byte("c1"), Expect: store.Absent()}, {Kind: store.OpPut, Key: "a", Value: []byte("a2"), Expect: store.AtRevision(rA + 100)}},
		{{Kind: store.OpPut, Key: "c", Value: []byte("c1")}, {Kind: store.OpDelete, Key: "zzz"}},
		{{Kind: store.OpDelete, Key: "a"}, {Kind: store.OpPut, Key: "b", Value: []byte("b1"), Expect: store.Absent()}},
	}
	for i, ops := range failing {
		if _, err := s.Txn(ctx, ops, "t"); err == nil {
			t.Fatalf("txn %d succeeded", i)
		}
	}
	kvs, rev, err := s.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if rev != rB || len(kvs) != 2 || string(kvs[0].Value) != "a1" || string(kvs[1].Value) != "b1" {
		t.Fatalf("after failed txns: rev %d (want %d), kvs %+v", rev, rB, kvs)
	}

	w, err := s.Watch(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	ops := []store.Op{
		{Kind: store.OpPut, Key: "c", Value: []byte("c1"), Expect: store.Absent()},
		{Kind: store.OpPut, Key: "a", Value: []byte("a2"), Expect: store.AtRevision(rA)},
		{Kind: store.OpDelete, Key: "b"},
	}
	trev, err := s.Txn(ctx, ops, "txn-actor")
	if err != nil || trev != rB+1 {
		t.Fatalf("Txn = %d, %v", trev, err)
	}
	for i, op := range ops {
		ev := Recv(t, w)
		if ev.Revision != trev || ev.KV.Key != op.Key || ev.Actor != "txn-actor" {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
	for _, key := range []string{"a", "c"} {
		kv, err := s.Get(ctx, key)
		if err != nil || kv.ModRevision != trev {
			t.Errorf("Get(%s) = %+v, %v", key, kv, err)
		}
	}
	if _, err := s.Get(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("b not deleted: %v", err)
	}
	h, err := s.History(ctx, "b")
	if err != nil || len(h) != 2 || h[1].Action != store.ActionDelete || h[1].Revision != trev {
		t.Errorf("History(b) = %+v, %v", h, err)
	}
}

func testList(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	keys := []string{"a", "pool/1", "pool/2", "pool/3", "pool/4", "pool/5", "poolx", "z"}
	for _, k := range keys {
		mustPut(t, s, k, "v-"+k, store.Any())
	}
	tests := []struct {
		prefix   string
		pageSize int
		want     []string
	}{
		{"", 0, keys},
		{"", 3, keys},
		{"pool/", 0, keys[1:6]},
		{"pool/", 2, keys[1:6]},
		{"pool/", 5, keys[1:6]},
		{"pool/", 6, keys[1:6]},
		{"pool", 1, keys[1:7]},
		{"nope", 2, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q/%d", tt.prefix, tt.pageSize), func(t *testing.T) {
			var got []string
			token, pages := "", 0
			for {
				kvs, next, err := s.List(t.Context(), tt.prefix, tt.pageSize, token)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if tt.pageSize > 0 && len(kvs) > tt.pageSize {
					t.Fatalf("page of %d > %d", len(kvs), tt.pageSize)
				}
				for _, kv := range kvs {
					if string(kv.Value) != "v-"+kv.Key {
						t.Errorf("value of %s = %q", kv.Key, kv.Value)
					}
					got = append(got, kv.Key)
				}
				if next == "" {
					break
				}
				if pages > len(keys)+1 {
					t.Fatal("paging does not end")
				}
				token = next
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("keys = %v, want %v", got, tt.want)
			}
		})
	}
	// A token from one prefix is refused for another.
	_, next, err := s.List(t.Context(), "pool/", 2, "")
	if err != nil || next == "" {
		t.Fatalf("List = %q, %v", next, err)
	}
	if _, _, err := s.List(t.Context(), "a/", 2, next); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("List with another prefix's token: %v", err)
	}
	kvs, rev, err := s.Snapshot(t.Context(), "pool/")
	if err != nil || len(kvs) != 5 || rev != base(t, s) {
		t.Errorf("Snapshot = %d keys at %d, %v", len(kvs), rev, err)
	}
}

func testHistory(t *testing.T, open OpenFunc) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := open(t, Options{HistoryLimit: 3, Now: func() time.Time { return now }})
	ctx := t.Context()
	b := base(t, s)
	mustPut(t, s, "other", "o", store.Any()) // b+1
	for i := 1; i <= 4; i++ {                // b+2..b+5
		mustPut(t, s, "k", fmt.Sprint("v", i), store.Any())
	}
	if _, err := s.Delete(ctx, "k", store.Any(), "deleter"); err != nil { // b+6
		t.Fatal(err)
	}
	mustPut(t, s, "k", "v5", store.Absent()) // b+7

	h, err := s.History(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range h {
		got = append(got, fmt.Sprintf("%d:%s:%s", e.Revision-b, e.Action, e.Value))
		if !e.Time.Equal(now) {
			t.Errorf("time = %v", e.Time)
		}
	}
	if want := "[5:put:v4 6:delete: 7:put:v5]"; fmt.Sprint(got) != want {
		t.Errorf("History (relative) = %v, want %s", got, want)
	}
	if h[1].Actor != "deleter" || h[0].Actor != "test" {
		t.Errorf("actors = %q %q", h[0].Actor, h[1].Actor)
	}
	if _, err := s.History(ctx, "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("History(never): %v", err)
	}

	tests := []struct {
		key     string
		rel     int64
		want    string // "relrev:action:value"
		wantErr error
	}{
		{"k", 7, "7:put:v5", nil},
		{"k", 6, "6:delete:", nil},
		{"k", 5, "5:put:v4", nil},
		{"k", 4, "", store.ErrCompacted},
		{"k", 2, "", store.ErrCompacted},
		{"other", 7, "1:put:o", nil},
		{"other", 1, "1:put:o", nil},
		{"never", 3, "", store.ErrNotFound},
		{"k", 8, "", store.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s@+%d", tt.key, tt.rel), func(t *testing.T) {
			e, err := s.HistoryAt(ctx, tt.key, b+tt.rel)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				var ce *store.CompactedError
				if errors.As(err, &ce) && (ce.Requested != b+tt.rel || ce.Oldest != b+5) {
					t.Errorf("CompactedError = %+v, want Oldest %d", ce, b+5)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%d:%s:%s", e.Revision-b, e.Action, e.Value); got != tt.want {
				t.Errorf("HistoryAt = %s, want %s", got, tt.want)
			}
		})
	}
	if _, err := s.HistoryAt(ctx, "k", 0); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("HistoryAt(0): %v", err)
	}
}

func testWatchConcurrentWriters(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	ctx := t.Context()
	b := base(t, s)
	w, err := s.Watch(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	const (
		writers = 4
		each    = 25
		total   = writers * each
	)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for j := range each {
				key := fmt.Sprintf("w%d/%d", i, j%5)
				if _, err := s.Put(ctx, key, fmt.Appendf(nil, "%d", j), store.Any(), fmt.Sprint("w", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	seen := make(map[string]int) // "w<i>" -> next j expected
	for n := range total {
		ev := Recv(t, w)
		if ev.Revision != b+int64(n+1) {
			t.Fatalf("event %d has revision %d, want %d", n, ev.Revision, b+int64(n+1))
		}
		var i, k, j int
		if _, err := fmt.Sscanf(ev.KV.Key, "w%d/%d", &i, &k); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscanf(string(ev.KV.Value), "%d", &j); err != nil {
			t.Fatal(err)
		}
		if want := seen[ev.Actor]; j != want || j%5 != k {
			t.Fatalf("writer %s: got put %d to %s, want %d", ev.Actor, j, ev.KV.Key, want)
		}
		seen[ev.Actor]++
	}
	wg.Wait()
	// Nothing more: a further write is the very next event.
	rev := mustPut(t, s, "last", "x", store.Any())
	if ev := Recv(t, w); ev.Revision != rev || ev.KV.Key != "last" {
		t.Errorf("after writers: %+v", ev)
	}
}

func testWatchHistoricalThenLive(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		rel  int64
	}{
		{"from start", 0},
		{"from middle", 4},
		{"from now", 10},
		{"from future", 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, Options{})
			ctx := t.Context()
			b := base(t, s)
			for i := 1; i <= 10; i++ {
				mustPut(t, s, fmt.Sprint("k", i%3), fmt.Sprint(i), store.Any())
			}
			w, err := s.Watch(ctx, b+tt.rel)
			if err != nil {
				t.Fatal(err)
			}
			for i := 11; i <= 15; i++ {
				if i%2 == 0 {
					_, err = s.Delete(ctx, fmt.Sprint("k", i%3), store.Any(), "d")
				} else {
					_, err = s.Put(ctx, fmt.Sprint("k", i%3), []byte(fmt.Sprint(i)), store.Any(), "p")
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for want := tt.rel + 1; want <= 15; want++ {
				ev := Recv(t, w)
				if ev.Revision != b+want {
					t.Fatalf("revision %d, want %d", ev.Revision, b+want)
				}
				wantAction := store.ActionPut
				if want > 10 && want%2 == 0 {
					wantAction = store.ActionDelete
				}
				if ev.Action != wantAction {
					t.Errorf("rev +%d action %v", want, ev.Action)
				}
				if wantAction == store.ActionDelete {
					// KV is the last state before the delete.
					if ev.KV.ModRevision >= ev.Revision || len(ev.KV.Value) == 0 {
						t.Errorf("delete event KV = %+v", ev.KV)
					}
					if ev.Actor != "d" {
						t.Errorf("delete actor = %q", ev.Actor)
					}
				} else if string(ev.KV.Value) != fmt.Sprint(want) || ev.KV.ModRevision != b+want {
					t.Errorf("put event = %+v", ev)
				}
			}
		})
	}
}

func testWatchEndsWithCtx(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	w, err := s.Watch(ctx, base(t, s))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "k", "v", store.Any())
	cancel()
	// At most the one pending event, then closed.
	if evs := WaitClosed(t, w); len(evs) > 1 {
		t.Errorf("got %d events after cancel", len(evs))
	}
}

func testWatchEndsWithClose(t *testing.T, open OpenFunc) {
	s := open(t, Options{})
	b := base(t, s)
	ws := make([]<-chan store.Event, 4)
	for i := range ws {
		var err error
		if ws[i], err = s.Watch(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, "k", "v", store.Any())
	if err := s.Close(); err != nil { // must not wait for readers
		t.Fatal(err)
	}
	for _, w := range ws {
		WaitClosed(t, w)
	}
}
