package etcdstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
)

// openEtcd returns a Store of srv under prefix, closed at cleanup.
func openEtcd(t *testing.T, srv *etcdtest.Server, prefix string, limit int, now func() time.Time) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.New(etcdstore.Config{Endpoints: []string{srv.Endpoint()}, Prefix: prefix, HistoryLimit: limit, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// clock returns a Now that moves one second per call.
func clock() func() time.Time {
	tick := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	return func() time.Time { tick = tick.Add(time.Second); return tick }
}

// backupFile writes a backup of s to a file and returns its path.
func backupFile(t *testing.T, s *etcdstore.Store) string {
	t.Helper()
	return writeBackup(t, func(w io.Writer) (int64, error) { return s.BackupContext(t.Context(), w) })
}

// boltBackupFile writes a backup of the bbolt store b into a new file and
// returns its path.
func boltBackupFile(t *testing.T, b *store.Store) string {
	t.Helper()
	return writeBackup(t, b.Backup)
}

// writeBackup writes a backup with backup into a new file and returns its
// path.
func writeBackup(t *testing.T, backup func(io.Writer) (int64, error)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// watchFromNow watches dst from its current revision until the test ends.
func watchFromNow(ctx context.Context, t *testing.T, dst *etcdstore.Store) <-chan store.Event {
	t.Helper()
	from, err := dst.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	events, err := dst.Watch(wctx, from)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

// exportFile reads a backup file as Restore reads it.
func exportFile(t *testing.T, path string) ([]store.ImportKey, int64) {
	t.Helper()
	b, err := store.Open(path, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	keys, rev, err := b.Export(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return keys, rev
}

// checkRestored checks that dst holds src (an export) as a restore
// writes it, with dst's history limit: the same keys and values; the same
// history entries (time, action, value, actor), the newest limit of them;
// a key's value at the revision of its last entry; entries in the order
// of their original revisions, within a key and across keys; HistoryAt
// at every entry's revision, and ErrCompacted before the oldest where the
// history was trimmed, ErrNotFound where not. A key restored into an
// empty prefix is created at its last entry (Version 1); one that
// replaced a key keeps that key's CreateRevision and Version count.
func checkRestored(t *testing.T, dst *etcdstore.Store, src []store.ImportKey, limit int, replaced bool) {
	t.Helper()
	ctx := t.Context()
	got, _ := exportFile(t, backupFile(t, dst))
	if len(got) != len(src) {
		t.Fatalf("restored %d keys, want %d", len(got), len(src))
	}
	type pair struct{ orig, now int64 }
	var order []pair
	for i, w := range src {
		g := got[i]
		if g.Key != w.Key {
			t.Fatalf("key %d is %q, want %q", i, g.Key, w.Key)
		}
		wantHist, trimmed := w.History, w.Trimmed > 0
		if n := len(wantHist) - limit; n > 0 {
			wantHist, trimmed = wantHist[n:], true
		}
		if len(g.History) != len(wantHist) {
			t.Errorf("%s: %d history entries, want %d", w.Key, len(g.History), len(wantHist))
			continue
		}
		for j, we := range wantHist {
			ge := g.History[j]
			if !ge.Time.Equal(we.Time) || ge.Action != we.Action || !bytes.Equal(ge.Value, we.Value) || ge.Actor != we.Actor {
				t.Errorf("%s: entry %d = %+v, want %+v", w.Key, j, ge, we)
			}
			if j > 0 && ge.Revision <= g.History[j-1].Revision {
				t.Errorf("%s: entry %d at revision %d after %d", w.Key, j, ge.Revision, g.History[j-1].Revision)
			}
			order = append(order, pair{we.Revision, ge.Revision})
			if e, err := dst.HistoryAt(ctx, w.Key, ge.Revision); err != nil || e.Revision != ge.Revision || e.Actor != we.Actor {
				t.Errorf("%s: HistoryAt(%d) = %+v, %v", w.Key, ge.Revision, e, err)
			}
		}
		if (w.Current == nil) != (g.Current == nil) {
			t.Errorf("%s: value %+v, want %+v", w.Key, g.Current, w.Current)
		} else if g.Current != nil {
			last := g.History[len(g.History)-1].Revision
			if !bytes.Equal(g.Current.Value, w.Current.Value) || g.Current.ModRevision != last ||
				(!replaced && (g.Current.CreateRevision != last || g.Current.Version != 1)) {
				t.Errorf("%s: value %+v, want %q at revision %d (its last entry's), version 1", w.Key, g.Current, w.Current.Value, last)
			}
		}
		if len(g.History) == 0 {
			continue
		}
		if (g.Trimmed > 0) != trimmed || g.Trimmed >= g.History[0].Revision {
			t.Errorf("%s: trimmed at %d (oldest entry %d), want trimmed %v", w.Key, g.Trimmed, g.History[0].Revision, trimmed)
		}
		_, err := dst.HistoryAt(ctx, w.Key, g.History[0].Revision-1)
		if want := map[bool]error{true: store.ErrCompacted, false: store.ErrNotFound}[trimmed]; !errors.Is(err, want) {
			t.Errorf("%s: HistoryAt before the oldest entry = %v, want %v", w.Key, err, want)
		}
	}
	slices.SortStableFunc(order, func(a, b pair) int { return int(a.orig - b.orig) })
	for i := 1; i < len(order); i++ {
		if order[i].now < order[i-1].now {
			t.Errorf("revision %d restored at %d, before revision %d restored at %d", order[i].orig, order[i].now, order[i-1].orig, order[i-1].now)
		}
	}
}

// etcd -> backup file -> a new prefix: the same values and history, in
// the same order, at new revisions; a replica watching the prefix sees
// the restored values appear, with the actor of their last change; the
// restored store carries on.
func TestRestoreRoundTrip(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := t.Context()
	src := openEtcd(t, srv, "src", 3, clock())
	for _, v := range []string{"a1", "a2", "a3", "a4", "a5"} {
		if _, err := src.Put(ctx, "pools/a", []byte(v), store.Any(), "actor"+v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Txn(ctx, []store.Op{
		{Kind: store.OpPut, Key: "pools/b", Value: []byte("b1")},
		{Kind: store.OpPut, Key: "pools/c", Value: []byte("c1")},
	}, "apply"); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Delete(ctx, "pools/c", store.Any(), "deleter"); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Put(ctx, "pools/b", []byte{}, store.Any(), "empty"); err != nil {
		t.Fatal(err)
	}
	path := backupFile(t, src)
	want, wantRev := exportFile(t, path)

	dst := openEtcd(t, srv, "dst", 3, nil)
	events := watchFromNow(ctx, t, dst)
	res, err := dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Txns: the marker, then a3 | a4 | a5 with b1 and c1 | c's delete
	// with b's last put.
	if res.BackupRevision != wantRev || !slices.Equal(res.Keys, []string{"pools/a", "pools/b"}) || res.Deleted != 1 ||
		res.HistoryEntries != 7 || res.Dropped != 0 || res.Removed != 0 || res.Txns != 5 {
		t.Errorf("RestoreResult = %+v", res)
	}
	if rev, err := dst.Revision(ctx); err != nil || rev != res.Revision {
		t.Errorf("Revision = %d, %v; RestoreResult.Revision %d", rev, err, res.Revision)
	}
	checkRestored(t, dst, want, 3, false)
	if err := dst.CheckRestore(ctx); err != nil {
		t.Errorf("CheckRestore after a restore = %v", err)
	}

	// The watcher sees the two values appear, then a later write.
	if _, err := dst.Put(ctx, "pools/z", []byte("z"), store.Absent(), "after"); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for ev := range events {
		seen = append(seen, fmt.Sprintf("%s %s %q by %s", ev.Action, ev.KV.Key, ev.KV.Value, ev.Actor))
		if ev.KV.Key == "pools/z" {
			break
		}
	}
	if w := []string{`put pools/a "a5" by actora5`, `put pools/b "" by empty`, `put pools/z "z" by after`}; !slices.Equal(seen, w) {
		t.Errorf("watched %q, want %q", seen, w)
	}

	// Compare-and-set against the restored revisions; history goes on.
	kv, err := dst.Get(ctx, "pools/a")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := dst.Put(ctx, "pools/a", []byte("a6"), store.AtRevision(kv.ModRevision), "later")
	if err != nil {
		t.Fatal(err)
	}
	h, err := dst.History(ctx, "pools/a")
	if err != nil || len(h) != 3 || string(h[1].Value) != "a5" || h[2].Revision != rev {
		t.Errorf("History after a write = %+v, %v", h, err)
	}
}

// A backup of a bbolt store restores into etcd; history beyond the etcd
// store's limit is dropped, and a key deleted and created again keeps its
// whole history.
func TestRestoreBoltBackup(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := t.Context()
	b, err := store.Open(filepath.Join(t.TempDir(), "poolplane.db"), store.Options{HistoryLimit: 5, NoSync: true, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	for i := range 7 {
		if _, err := b.Put(ctx, "pools/a", fmt.Appendf(nil, "a%d", i), store.Any(), "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Txn(ctx, []store.Op{
		{Kind: store.OpPut, Key: "pools/b", Value: []byte("b1")},
		{Kind: store.OpPut, Key: "pools/c", Value: []byte("c1")},
	}, "apply"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Delete(ctx, "pools/c", store.Any(), "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "pools/c", []byte("c2"), store.Absent(), "dave"); err != nil {
		t.Fatal(err)
	}
	path := boltBackupFile(t, b)
	want, _ := exportFile(t, path)

	dst := openEtcd(t, srv, "frombolt", 4, nil)
	res, err := dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Keys, []string{"pools/a", "pools/b", "pools/c"}) || res.Deleted != 0 || res.HistoryEntries != 4+1+3 || res.Dropped != 1 {
		t.Errorf("RestoreResult = %+v", res)
	}
	checkRestored(t, dst, want, 4, false)
}

// A prefix that holds keys or history is refused, and left as it was;
// the replica set does not count. Replace restores over it: keys the
// backup lacks are deleted, the others overwritten, the old history
// replaced by the backup's.
func TestRestoreRefusesNonEmpty(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := t.Context()
	src := openEtcd(t, srv, "src", 0, clock())
	for _, k := range []string{"pools/a", "pools/b"} {
		if _, err := src.Put(ctx, k, []byte(k+"-backup"), store.Any(), "src"); err != nil {
			t.Fatal(err)
		}
	}
	path := backupFile(t, src)
	want, _ := exportFile(t, path)

	dst := openEtcd(t, srv, "dst", 0, nil)
	ms, err := dst.Join("r1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	for _, k := range []string{"pools/a", "pools/old"} {
		for range 2 {
			if _, err := dst.Put(ctx, k, []byte(k+"-live"), store.Any(), "live"); err != nil {
				t.Fatal(err)
			}
		}
	}
	before, _, err := dst.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{})
	if !errors.Is(err, etcdstore.ErrNotEmpty) || !strings.Contains(err.Error(), `prefix "dst" holds 2 keys`) {
		t.Fatalf("restore into a prefix in use = %v, want ErrNotEmpty", err)
	}
	after, _, err := dst.Snapshot(ctx, "")
	if err != nil || !slices.EqualFunc(after, before, func(a, b store.KeyValue) bool { return a.ModRevision == b.ModRevision }) {
		t.Errorf("a refused restore changed the prefix: %+v, %v", after, err)
	}
	if err := dst.CheckRestore(ctx); err != nil {
		t.Errorf("CheckRestore after a refused restore = %v", err)
	}

	// Only the replica set: a restore proceeds.
	fresh := openEtcd(t, srv, "fresh", 0, nil)
	fms, err := fresh.Join("r1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fms.Close() })
	if _, err := fresh.RestoreFile(ctx, path, etcdstore.RestoreOptions{}); err != nil {
		t.Errorf("restore into a prefix holding replicas only = %v", err)
	}

	events := watchFromNow(ctx, t, dst)
	res, err := dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 || !slices.Equal(res.Keys, []string{"pools/a", "pools/b"}) {
		t.Errorf("RestoreResult = %+v", res)
	}
	checkRestored(t, dst, want, etcdstore.DefaultHistoryLimit, true)
	if _, err := dst.History(ctx, "pools/old"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("History of a replaced key = %v, want ErrNotFound", err)
	}
	var seen []string
	for ev := range events {
		seen = append(seen, ev.Action.String()+" "+ev.KV.Key)
		if len(seen) == 3 {
			break
		}
	}
	if w := []string{"delete pools/old", "put pools/a", "put pools/b"}; !slices.Equal(seen, w) {
		t.Errorf("watched %q, want %q", seen, w)
	}
	if ms.Fenced() || len(ms.List()) != 1 {
		t.Errorf("the replica set after a replace: %v, fenced %v", ms.List(), ms.Fenced())
	}
}

// Against etcd's default --max-txn-ops (128): a restore of more pools and
// history than a Txn holds is split; one asked for larger Txns than the
// cluster takes fails after its first Txn and leaves the prefix marked
// unfinished, which only a Replace clears.
func TestRestoreBatches(t *testing.T) {
	srv := etcdtest.StartWith(t, etcdtest.Config{MaxTxnOps: 128})
	ctx := t.Context()
	b, err := store.Open(filepath.Join(t.TempDir(), "poolplane.db"), store.Options{HistoryLimit: 200, NoSync: true, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var ops []store.Op
	for i := range 200 {
		ops = append(ops, store.Op{Kind: store.OpPut, Key: fmt.Sprintf("pools/p%03d", i), Value: bytes.Repeat([]byte{'v'}, 1000)})
	}
	if _, err := b.Txn(ctx, ops, "apply"); err != nil {
		t.Fatal(err)
	}
	for i := range 150 {
		if _, err := b.Put(ctx, "pools/hot", fmt.Appendf(nil, "hot%d", i), store.Any(), "loop"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range ops[:40] {
		ops[i].Value = []byte("updated")
	}
	if _, err := b.Txn(ctx, ops[:40], "apply2"); err != nil {
		t.Fatal(err)
	}
	path := boltBackupFile(t, b)
	want, _ := exportFile(t, path)

	dst := openEtcd(t, srv, "big", 0, nil)
	_, err = dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{MaxTxnOps: 1024})
	if !errors.Is(err, etcdstore.ErrRestoreUnfinished) || !strings.Contains(err.Error(), "too many operations") {
		t.Fatalf("restore in Txns larger than etcd takes = %v, want ErrRestoreUnfinished", err)
	}
	if err := dst.CheckRestore(ctx); !errors.Is(err, etcdstore.ErrRestoreUnfinished) {
		t.Errorf("CheckRestore after a failed restore = %v", err)
	}
	if _, err := dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{}); !errors.Is(err, etcdstore.ErrRestoreUnfinished) {
		t.Errorf("restore over an unfinished one = %v, want ErrRestoreUnfinished", err)
	}
	res, err := dst.RestoreFile(ctx, path, etcdstore.RestoreOptions{Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	// The marker; 200 pools at one revision, 3 ops each: 5 Txns of at
	// most 127 ops; the hot key's 100 retained entries, one Txn each (the
	// oldest shares the last of the 5, the newest the 40 updates).
	if len(res.Keys) != 201 || res.HistoryEntries != 200+100+40 || res.Dropped != 50 || res.Txns != 1+5+99 {
		t.Errorf("RestoreResult: %d keys, %d entries, %d dropped, %d Txns", len(res.Keys), res.HistoryEntries, res.Dropped, res.Txns)
	}
	checkRestored(t, dst, want, etcdstore.DefaultHistoryLimit, false)
	if err := dst.CheckRestore(ctx); err != nil {
		t.Errorf("CheckRestore after the replace = %v", err)
	}
}

// Restore refuses keys that do not describe a store, before writing.
func TestRestoreValidation(t *testing.T) {
	srv := etcdtest.Start(t)
	dst := openEtcd(t, srv, "v", 0, nil)
	put := func(rev int64, v string) store.HistoryEntry {
		return store.HistoryEntry{Revision: rev, Action: store.ActionPut, Value: []byte(v)}
	}
	cur := func(rev int64, v string) *store.KeyValue {
		return &store.KeyValue{Key: "k", Value: []byte(v), CreateRevision: rev, ModRevision: rev, Version: 1}
	}
	tests := []struct {
		name string
		rev  int64
		keys []store.ImportKey
	}{
		{"keys at revision 0", 0, []store.ImportKey{{Key: "k"}}},
		{"empty key", 5, []store.ImportKey{{Key: ""}}},
		{"repeated key", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{put(1, "v")}, Current: cur(1, "v")}, {Key: "k"}}},
		{"history out of order", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{put(3, "v"), put(2, "v")}}}},
		{"history beyond the revision", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{put(6, "v")}, Current: cur(6, "v")}}},
		{"value without history", 5, []store.ImportKey{{Key: "k", Current: cur(3, "v")}}},
		{"value not the last entry's", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{put(3, "v")}, Current: cur(3, "w")}}},
		{"no value after a put", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{put(3, "v")}}}},
		{"unknown action", 5, []store.ImportKey{{Key: "k", History: []store.HistoryEntry{{Revision: 3}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := dst.Restore(t.Context(), tt.rev, tt.keys, etcdstore.RestoreOptions{}); !errors.Is(err, store.ErrInvalidArgument) {
				t.Errorf("Restore = %v, want ErrInvalidArgument", err)
			}
		})
	}
	if err := dst.CheckRestore(t.Context()); err != nil {
		t.Errorf("CheckRestore after refused restores = %v", err)
	}
	// An empty backup restores to nothing.
	if res, err := dst.Restore(t.Context(), 0, nil, etcdstore.RestoreOptions{}); err != nil || res.Txns != 2 || len(res.Keys) != 0 {
		t.Errorf("empty Restore = %+v, %v", res, err)
	}
}
