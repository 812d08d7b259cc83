package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// Export returns what the store holds, in the shape Import takes: an
// export imported into an empty store exports the same again.
func TestExport(t *testing.T) {
	ctx := context.Background()
	tick := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { tick = tick.Add(time.Second); return tick }
	s, _ := newStore(t, Options{HistoryLimit: 2, Now: now})
	for _, v := range []string{"a1", "a2", "a3"} {
		if _, err := s.Put(ctx, "pools/a", []byte(v), Any(), "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Txn(ctx, []Op{{Kind: OpPut, Key: "pools/b", Value: []byte("b1")}, {Kind: OpPut, Key: "pools/gone", Value: []byte("g1")}}, "apply"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "pools/gone", Any(), "carol"); err != nil {
		t.Fatal(err)
	}
	keys, rev, err := s.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rev != 5 || len(keys) != 3 || keys[0].Key != "pools/a" || keys[1].Key != "pools/b" || keys[2].Key != "pools/gone" {
		t.Fatalf("Export = %+v at %d", keys, rev)
	}
	for _, k := range keys {
		h, err := s.History(ctx, k.Key)
		if err != nil || !reflect.DeepEqual(k.History, h) {
			t.Errorf("%s: exported history %+v, History %+v, %v", k.Key, k.History, h, err)
		}
		cur, err := s.Get(ctx, k.Key)
		switch {
		case errors.Is(err, ErrNotFound):
			if k.Current != nil {
				t.Errorf("%s: exported current %+v of a deleted key", k.Key, k.Current)
			}
		case err != nil || k.Current == nil || !reflect.DeepEqual(*k.Current, cur):
			t.Errorf("%s: exported current %+v, Get %+v, %v", k.Key, k.Current, cur, err)
		}
	}
	if keys[0].Trimmed != 1 || keys[1].Trimmed != 0 {
		t.Errorf("trimmed = %d, %d; want 1, 0", keys[0].Trimmed, keys[1].Trimmed)
	}

	c, _ := newStore(t, Options{HistoryLimit: 2})
	if err := c.Import(ctx, rev, keys); err != nil {
		t.Fatal(err)
	}
	again, arev, err := c.Export(ctx)
	if err != nil || arev != rev || !reflect.DeepEqual(again, keys) {
		t.Errorf("export of the import = %+v at %d, %v; want %+v at %d", again, arev, err, keys, rev)
	}
}

// A store opened ReadOnly reads a file without writing it, refuses
// writes, and cannot open a file another Store holds read-write.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, Options{})
	if _, err := s.Put(ctx, "pools/a", []byte("a1"), Any(), "alice"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bak.db")
	writeBackup(t, s, path)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	// A second reader shares the file.
	r2, err := Open(path, Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("second read-only Open: %v", err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if kv, err := r.Get(ctx, "pools/a"); err != nil || string(kv.Value) != "a1" {
		t.Errorf("Get = %+v, %v", kv, err)
	}
	if keys, rev, err := r.Export(ctx); err != nil || rev != 1 || len(keys) != 1 {
		t.Errorf("Export = %+v at %d, %v", keys, rev, err)
	}
	if _, err := r.Put(ctx, "pools/b", []byte("b"), Any(), "x"); err == nil {
		t.Error("Put on a read-only store succeeded")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Error("a read-only open changed the file")
	}

	if _, err := Open(filepath.Join(t.TempDir(), "none.db"), Options{ReadOnly: true}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only Open of a missing file = %v, want ErrNotExist", err)
	}
	w, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if _, err := Open(path, Options{ReadOnly: true, Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-only Open of a file held read-write = %v, want ErrLocked", err)
	}
}
