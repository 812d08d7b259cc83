package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newStore opens a store in a fresh temp dir with NoSync (tests only) and
// closes it at cleanup. It also checks the test left no goroutine behind.
func newStore(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	opts.NoSync = true
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if tt, ok := t.(*testing.T); ok {
		ignore := goleak.IgnoreCurrent()
		tt.Cleanup(func() { goleak.VerifyNone(tt, ignore) })
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func mustPut(t testing.TB, s *Store, key, value string, expect Expect) int64 {
	t.Helper()
	rev, err := s.Put(context.Background(), key, []byte(value), expect, "test")
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

func TestOpenCreatesFile(t *testing.T) {
	s, path := newStore(t, Options{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("mode = %v, want 0600", mode)
	}
	if rev, err := s.Revision(t.Context()); err != nil || rev != 0 {
		t.Errorf("Revision = %d, %v; want 0, nil", rev, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("bucket %s missing", b)
			}
		}
		if v := tx.Bucket(bucketMeta).Get(metaSchema); len(v) != 8 || btoi(v) != schemaVersion {
			return fmt.Errorf("schema = %x, want %d", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestSchemaRefusal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "k", "v", Any())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchema, itob(schemaVersion+1))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{NoSync: true})
	if !errors.Is(err, ErrSchema) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open newer schema: err = %v, want ErrSchema", err)
	}
	// The refused file must be unchanged and unlocked.
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if got := btoi(tx.Bucket(bucketMeta).Get(metaSchema)); got != schemaVersion+1 {
			t.Errorf("schema rewritten to %d", got)
		}
		return nil
	})
}

func TestOpenLocked(t *testing.T) {
	_, path := newStore(t, Options{})
	const timeout = 100 * time.Millisecond
	start := time.Now()
	s2, err := Open(path, Options{Timeout: timeout, NoSync: true})
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if elapsed > timeout+2*time.Second {
		t.Errorf("second Open took %v with timeout %v", elapsed, timeout)
	}
}

func TestCloseIdempotentAndErrClosed(t *testing.T) {
	s, _ := newStore(t, Options{})
	mustPut(t, s, "k", "v", Any())
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
		{"Put", func() error { _, err := s.Put(ctx, "k", nil, Any(), "a"); return err }},
		{"Get", func() error { _, err := s.Get(ctx, "k"); return err }},
		{"List", func() error { _, _, err := s.List(ctx, "", 0, ""); return err }},
		{"Snapshot", func() error { _, _, err := s.Snapshot(ctx, ""); return err }},
		{"Delete", func() error { _, err := s.Delete(ctx, "k", Any(), "a"); return err }},
		{"Revision", func() error { _, err := s.Revision(ctx); return err }},
		{"Txn", func() error { _, err := s.Txn(ctx, []Op{{Kind: OpPut, Key: "k"}}, "a"); return err }},
		{"History", func() error { _, err := s.History(ctx, "k"); return err }},
		{"HistoryAt", func() error { _, err := s.HistoryAt(ctx, "k", 1); return err }},
		{"Watch", func() error { _, err := s.Watch(ctx, 0); return err }},
		{"Backup", func() error { _, err := s.Backup(&bytes.Buffer{}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, ErrClosed) {
				t.Errorf("err = %v, want ErrClosed", err)
			}
		})
	}
}

func TestContextDone(t *testing.T) {
	s, _ := newStore(t, Options{})
	mustPut(t, s, "k", "v", Any())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Put(ctx, "k", nil, Any(), "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("Put: %v", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get: %v", err)
	}
	if _, err := s.Watch(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch: %v", err)
	}
	if rev, _ := s.Revision(t.Context()); rev != 1 {
		t.Errorf("revision moved to %d", rev)
	}
}

func TestPutGetDeleteRevisions(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := t.Context()
	r1 := mustPut(t, s, "a", "1", Absent())
	r2 := mustPut(t, s, "b", "x", Any())
	r3 := mustPut(t, s, "a", "2", AtRevision(r1))
	if r1 != 1 || r2 != 2 || r3 != 3 {
		t.Fatalf("revisions %d %d %d, want 1 2 3", r1, r2, r3)
	}
	kv, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	want := KeyValue{Key: "a", Value: []byte("2"), CreateRevision: 1, ModRevision: 3, Version: 2}
	if !kvEqual(kv, want) {
		t.Errorf("Get = %+v, want %+v", kv, want)
	}
	r4, err := s.Delete(ctx, "a", AtRevision(3), "test")
	if err != nil || r4 != 4 {
		t.Fatalf("Delete = %d, %v", r4, err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: %v", err)
	}
	if _, err := s.Delete(ctx, "a", Any(), "test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete absent: %v", err)
	}
	r5 := mustPut(t, s, "a", "3", Absent())
	kv, _ = s.Get(ctx, "a")
	want = KeyValue{Key: "a", Value: []byte("3"), CreateRevision: r5, ModRevision: r5, Version: 1}
	if !kvEqual(kv, want) {
		t.Errorf("re-created = %+v, want %+v", kv, want)
	}
	// Values are copied in: changing the caller's slice changes nothing.
	buf := []byte("orig")
	if _, err := s.Put(ctx, "c", buf, Any(), "t"); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXX")
	if kv, _ := s.Get(ctx, "c"); string(kv.Value) != "orig" {
		t.Errorf("value aliased caller slice: %q", kv.Value)
	}
}

func kvEqual(a, b KeyValue) bool {
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version
}

func TestPreconditions(t *testing.T) {
	// Each case starts with key "k" at ModRevision 2 (created at 1).
	tests := []struct {
		name     string
		del      bool
		key      string
		expect   Expect
		wantErr  error
		mismatch *RevisionMismatchError
	}{
		{name: "put any", key: "k", expect: Any()},
		{name: "put absent exists", key: "k", expect: Absent(), wantErr: ErrExists},
		{name: "put absent new", key: "new", expect: Absent()},
		{name: "put at rev", key: "k", expect: AtRevision(2)},
		{name: "put stale rev", key: "k", expect: AtRevision(1), wantErr: ErrRevisionMismatch,
			mismatch: &RevisionMismatchError{Key: "k", Expected: 1, Current: 2}},
		{name: "put rev on absent", key: "new", expect: AtRevision(2), wantErr: ErrRevisionMismatch,
			mismatch: &RevisionMismatchError{Key: "new", Expected: 2, Current: 0}},
		{name: "put rev zero", key: "k", expect: AtRevision(0), wantErr: ErrInvalidArgument},
		{name: "delete any", del: true, key: "k", expect: Any()},
		{name: "delete at rev", del: true, key: "k", expect: AtRevision(2)},
		{name: "delete stale", del: true, key: "k", expect: AtRevision(1), wantErr: ErrRevisionMismatch},
		{name: "delete absent key", del: true, key: "new", expect: Any(), wantErr: ErrNotFound},
		{name: "delete absent expect", del: true, key: "k", expect: Absent(), wantErr: ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t, Options{})
			mustPut(t, s, "k", "v1", Any())
			mustPut(t, s, "k", "v2", Any())
			var err error
			if tt.del {
				_, err = s.Delete(t.Context(), tt.key, tt.expect, "t")
			} else {
				_, err = s.Put(t.Context(), tt.key, []byte("x"), tt.expect, "t")
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
			if rev, _ := s.Revision(t.Context()); rev != 2 {
				t.Errorf("failed write moved revision to %d", rev)
			}
			if tt.mismatch != nil {
				var me *RevisionMismatchError
				if !errors.As(err, &me) || *me != *tt.mismatch {
					t.Errorf("err = %#v, want %#v", err, tt.mismatch)
				}
			}
		})
	}
}

func TestValidation(t *testing.T) {
	s, _ := newStore(t, Options{})
	long := strings.Repeat("k", MaxKeySize)
	tests := []struct {
		name  string
		ops   []Op
		actor string
		ok    bool
	}{
		{"max key", []Op{{Kind: OpPut, Key: long}}, "", true},
		{"max value", []Op{{Kind: OpPut, Key: "v", Value: make([]byte, MaxValueSize)}}, "", true},
		{"binary key", []Op{{Kind: OpPut, Key: "\x00\xff/"}}, "", true},
		{"empty key", []Op{{Kind: OpPut, Key: ""}}, "", false},
		{"long key", []Op{{Kind: OpPut, Key: long + "k"}}, "", false},
		{"long value", []Op{{Kind: OpPut, Key: "v", Value: make([]byte, MaxValueSize+1)}}, "", false},
		{"long actor", []Op{{Kind: OpPut, Key: "a"}}, strings.Repeat("a", MaxActorSize+1), false},
		{"no ops", nil, "", false},
		{"zero kind", []Op{{Key: "a"}}, "", false},
		{"dup key", []Op{{Kind: OpPut, Key: "a"}, {Kind: OpDelete, Key: "a"}}, "", false},
		{"bad expect", []Op{{Kind: OpPut, Key: "a", Expect: AtRevision(-1)}}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Txn(t.Context(), tt.ops, tt.actor)
			if tt.ok && err != nil {
				t.Errorf("err = %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
	for _, key := range []string{"", long + "k"} {
		if _, err := s.Get(t.Context(), key); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Get(len %d): %v", len(key), err)
		}
	}
}

func TestCASContention(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := t.Context()
	const (
		workers = 32
		rounds  = 8
	)
	rev := mustPut(t, s, "cas", "init", Absent())
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
				r, err := s.Put(ctx, "cas", fmt.Appendf(nil, "r%d-w%d", round, w), AtRevision(rev), fmt.Sprint("w", w))
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
			var me *RevisionMismatchError
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

func TestTxnAllOrNothing(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := t.Context()
	rA := mustPut(t, s, "a", "a1", Any())
	mustPut(t, s, "b", "b1", Any())

	failing := [][]Op{
		{{Kind: OpPut, Key: "c", Value: []byte("c1"), Expect: Absent()}, {Kind: OpPut, Key: "a", Value: []byte("a2"), Expect: AtRevision(rA + 100)}},
		{{Kind: OpPut, Key: "c", Value: []byte("c1")}, {Kind: OpDelete, Key: "zzz"}},
		{{Kind: OpDelete, Key: "a"}, {Kind: OpPut, Key: "b", Value: []byte("b2"), Expect: Absent()}},
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
	if rev != 2 || len(kvs) != 2 || string(kvs[0].Value) != "a1" || string(kvs[1].Value) != "b1" {
		t.Fatalf("after failed txns: rev %d, kvs %+v", rev, kvs)
	}

	w, err := s.Watch(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	ops := []Op{
		{Kind: OpPut, Key: "c", Value: []byte("c1"), Expect: Absent()},
		{Kind: OpPut, Key: "a", Value: []byte("a2"), Expect: AtRevision(rA)},
		{Kind: OpDelete, Key: "b"},
	}
	trev, err := s.Txn(ctx, ops, "txn-actor")
	if err != nil || trev != 3 {
		t.Fatalf("Txn = %d, %v", trev, err)
	}
	for i, op := range ops {
		ev := recv(t, w)
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
	if _, err := s.Get(ctx, "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("b not deleted: %v", err)
	}
}

func TestList(t *testing.T) {
	s, _ := newStore(t, Options{})
	keys := []string{"a", "pool/1", "pool/2", "pool/3", "pool/4", "pool/5", "poolx", "z"}
	for _, k := range keys {
		mustPut(t, s, k, "v-"+k, Any())
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
}

func TestPageToken(t *testing.T) {
	good := encodePageToken("pool/2")
	tests := []struct {
		name, token, prefix string
		want                string
		ok                  bool
	}{
		{"round trip", good, "pool/", "pool/2", true},
		{"empty prefix", good, "", "pool/2", true},
		{"other prefix", good, "a/", "", false},
		{"not base64", "!!!", "", "", false},
		{"wrong version", "AmFi", "", "", false},
		{"too short", "AQ", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodePageToken(tt.token, tt.prefix)
			if tt.ok != (err == nil) || got != tt.want {
				t.Errorf("decode = %q, %v", got, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
	s, _ := newStore(t, Options{})
	if _, _, err := s.List(t.Context(), "", 1, "garbage!"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("List bad token: %v", err)
	}
}

func TestHistory(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s, _ := newStore(t, Options{HistoryLimit: 3, Now: func() time.Time { return now }})
	ctx := t.Context()
	mustPut(t, s, "other", "o", Any()) // 1
	for i := 1; i <= 4; i++ {          // 2..5
		mustPut(t, s, "k", fmt.Sprint("v", i), Any())
	}
	if _, err := s.Delete(ctx, "k", Any(), "deleter"); err != nil { // 6
		t.Fatal(err)
	}
	mustPut(t, s, "k", "v5", Absent()) // 7

	h, err := s.History(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range h {
		got = append(got, fmt.Sprintf("%d:%s:%s", e.Revision, e.Action, e.Value))
		if !e.Time.Equal(now) {
			t.Errorf("time = %v", e.Time)
		}
	}
	if want := "[5:put:v4 6:delete: 7:put:v5]"; fmt.Sprint(got) != want {
		t.Errorf("History = %v, want %s", got, want)
	}
	if h[1].Actor != "deleter" || h[0].Actor != "test" {
		t.Errorf("actors = %q %q", h[0].Actor, h[1].Actor)
	}
	if _, err := s.History(ctx, "never"); !errors.Is(err, ErrNotFound) {
		t.Errorf("History(never): %v", err)
	}

	tests := []struct {
		key     string
		rev     int64
		want    string // "rev:action:value"
		wantErr error
	}{
		{"k", 7, "7:put:v5", nil},
		{"k", 6, "6:delete:", nil},
		{"k", 5, "5:put:v4", nil},
		{"k", 4, "", ErrCompacted},
		{"k", 1, "", ErrCompacted},
		{"other", 7, "1:put:o", nil},
		{"other", 1, "1:put:o", nil},
		{"never", 3, "", ErrNotFound},
		{"k", 8, "", ErrInvalidArgument},
		{"k", 0, "", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s@%d", tt.key, tt.rev), func(t *testing.T) {
			e, err := s.HistoryAt(ctx, tt.key, tt.rev)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				var ce *CompactedError
				if errors.As(err, &ce) && (ce.Requested != tt.rev || ce.Oldest != 5) {
					t.Errorf("CompactedError = %+v, want Oldest 5", ce)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%d:%s:%s", e.Revision, e.Action, e.Value); got != tt.want {
				t.Errorf("HistoryAt = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestHistoryLimitShrinksOnReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{NoSync: true, HistoryLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		mustPut(t, s, "k", fmt.Sprint(i), Any())
	}
	s.Close()
	s, err = Open(path, Options{NoSync: true, HistoryLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustPut(t, s, "k", "last", Any())
	h, err := s.History(t.Context(), "k")
	if err != nil || len(h) != 2 || string(h[1].Value) != "last" || h[0].Revision != 10 {
		t.Errorf("History = %+v, %v", h, err)
	}
}

func TestBackupRoundTrip(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := t.Context()
	for i := range 50 {
		mustPut(t, s, fmt.Sprintf("key/%03d", i), fmt.Sprint("value", i), Any())
	}
	if _, err := s.Delete(ctx, "key/007", Any(), "t"); err != nil {
		t.Fatal(err)
	}
	want, wantRev, err := s.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.OpenFile(backup, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Backup(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || n == 0 {
		t.Fatalf("Backup = %d, %v", n, err)
	}
	// The original keeps working after the backup.
	mustPut(t, s, "after", "x", Any())

	c, err := Open(backup, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, gotRev, err := c.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if gotRev != wantRev || len(got) != len(want) {
		t.Fatalf("copy: rev %d, %d keys; want %d, %d", gotRev, len(got), wantRev, len(want))
	}
	for i := range got {
		if !kvEqual(got[i], want[i]) {
			t.Errorf("copy key %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if h, err := c.History(ctx, "key/007"); err != nil || len(h) != 2 {
		t.Errorf("copy history = %+v, %v", h, err)
	}
	// The copy accepts writes and continues the revision.
	if rev := mustPut(t, c, "new", "y", Absent()); rev != wantRev+1 {
		t.Errorf("copy rev = %d, want %d", rev, wantRev+1)
	}
}
