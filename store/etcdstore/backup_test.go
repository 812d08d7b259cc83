package etcdstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
)

// A backup is a bbolt store file with the same keys, revisions, versions,
// history (trimmed part included) and global revision as the etcd store
// at the time of the backup; the restored store carries on from there.
func TestBackupContext(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := t.Context()
	tick := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { tick = tick.Add(time.Second); return tick }
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "bk", HistoryLimit: 3, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Another prefix and the replica set are not part of the backup.
	other, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "bkother"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	if _, err := other.Put(ctx, "pools/x", []byte("x"), store.Any(), "t"); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Join("r1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	for i, v := range []string{"a1", "a2", "a3", "a4", "a5"} {
		if _, err := s.Put(ctx, "pools/a", []byte(v), store.Any(), "actor"+v); err != nil {
			t.Fatal(i, err)
		}
	}
	if _, err := s.Txn(ctx, []store.Op{
		{Kind: store.OpPut, Key: "pools/b", Value: []byte("b1")},
		{Kind: store.OpPut, Key: "pools/c", Value: []byte("c1")},
	}, "apply"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "pools/c", store.Any(), "deleter"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "pools/b", []byte{}, store.Any(), "empty"); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "poolplane.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.BackupContext(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() != n {
		t.Errorf("BackupContext wrote %d bytes, the file has %d", n, fi.Size())
	}
	wantKVs, wantRev, err := s.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}

	b, err := store.Open(path, store.Options{HistoryLimit: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	gotKVs, gotRev, err := b.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if gotRev != wantRev || !reflect.DeepEqual(gotKVs, wantKVs) {
		t.Errorf("restored snapshot at %d:\n%+v\nwant at %d:\n%+v", gotRev, gotKVs, wantRev, wantKVs)
	}
	for _, key := range []string{"pools/a", "pools/b", "pools/c"} {
		want, err := s.History(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.History(ctx, key)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("History(%s) =\n%+v, %v\nwant\n%+v", key, got, err, want)
		}
		for rev := int64(1); rev <= wantRev; rev++ {
			we, werr := s.HistoryAt(ctx, key, rev)
			ge, gerr := b.HistoryAt(ctx, key, rev)
			if !reflect.DeepEqual(ge, we) || errors.Is(gerr, store.ErrCompacted) != errors.Is(werr, store.ErrCompacted) ||
				errors.Is(gerr, store.ErrNotFound) != errors.Is(werr, store.ErrNotFound) {
				t.Errorf("HistoryAt(%s, %d) = %+v, %v; etcd %+v, %v", key, rev, ge, gerr, we, werr)
			}
		}
	}
	if _, err := b.Get(ctx, "pools/x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another prefix's key in the backup: %v", err)
	}
	if rev, err := b.Put(ctx, "pools/a", []byte("a6"), store.AtRevision(wantKVs[0].ModRevision), "t"); err != nil || rev != wantRev+1 {
		t.Errorf("Put on the restored store = %d, %v; want %d", rev, err, wantRev+1)
	}
}

// A backup of a prefix never written is an empty store file.
func TestBackupContextEmpty(t *testing.T) {
	srv := etcdtest.Start(t)
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: "empty"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	path := filepath.Join(t.TempDir(), "poolplane.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.BackupContext(t.Context(), f); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	b, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if kvs, _, err := b.Snapshot(t.Context(), ""); err != nil || len(kvs) != 0 {
		t.Errorf("Snapshot = %v, %v", kvs, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.BackupContext(ctx, f); !errors.Is(err, context.Canceled) {
		t.Errorf("BackupContext(canceled) = %v", err)
	}
	_ = s.Close()
	if _, err := s.BackupContext(t.Context(), f); !errors.Is(err, store.ErrClosed) {
		t.Errorf("BackupContext after Close = %v", err)
	}
}
