package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

func kvEqual(a, b KeyValue) bool {
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version
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
