package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func importFixture() []ImportKey {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	return []ImportKey{
		{
			Key:     "pools/a",
			Current: &KeyValue{Key: "pools/a", Value: []byte("a3"), CreateRevision: 10, ModRevision: 30, Version: 3},
			History: []HistoryEntry{
				{Revision: 20, Time: t0, Action: ActionPut, Value: []byte("a2"), Actor: "alice"},
				{Revision: 30, Time: t0.Add(time.Second), Action: ActionPut, Value: []byte("a3"), Actor: "bob"},
			},
			Trimmed: 10,
		},
		{
			Key: "pools/gone",
			History: []HistoryEntry{
				{Revision: 12, Time: t0, Action: ActionPut, Value: []byte("g1"), Actor: "alice"},
				{Revision: 25, Time: t0, Action: ActionDelete, Actor: "carol"},
			},
		},
	}
}

// Import keeps revisions, versions and history, sets the global revision,
// starts the change log at it, and the store carries on from there.
func TestImport(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, Options{})
	if err := s.Import(ctx, 40, importFixture()); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		if rev, err := s.Revision(ctx); err != nil || rev != 40 {
			t.Errorf("Revision = %d, %v; want 40", rev, err)
		}
		kv, err := s.Get(ctx, "pools/a")
		if want := (KeyValue{Key: "pools/a", Value: []byte("a3"), CreateRevision: 10, ModRevision: 30, Version: 3}); err != nil || !reflect.DeepEqual(kv, want) {
			t.Errorf("Get = %+v, %v; want %+v", kv, err, want)
		}
		if _, err := s.Get(ctx, "pools/gone"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(deleted) = %v, want ErrNotFound", err)
		}
		h, err := s.History(ctx, "pools/a")
		if err != nil || !reflect.DeepEqual(h, importFixture()[0].History) {
			t.Errorf("History = %+v, %v", h, err)
		}
		if e, err := s.HistoryAt(ctx, "pools/a", 25); err != nil || e.Revision != 20 || e.Actor != "alice" {
			t.Errorf("HistoryAt(25) = %+v, %v", e, err)
		}
		if _, err := s.HistoryAt(ctx, "pools/a", 15); !errors.Is(err, ErrCompacted) {
			t.Errorf("HistoryAt(before the trimmed part) = %v, want ErrCompacted", err)
		}
		if e, err := s.HistoryAt(ctx, "pools/gone", 26); err != nil || e.Action != ActionDelete || e.Actor != "carol" {
			t.Errorf("HistoryAt(deleted) = %+v, %v", e, err)
		}
		if _, err := s.HistoryAt(ctx, "pools/gone", 11); !errors.Is(err, ErrNotFound) {
			t.Errorf("HistoryAt(before creation) = %v, want ErrNotFound", err)
		}
		if _, err := s.Watch(ctx, 39); !errors.Is(err, ErrCompacted) {
			t.Errorf("Watch(39) = %v, want ErrCompacted", err)
		}
	}
	check(s)

	// A backup of the imported store opens with the same contents.
	bak := filepath.Join(t.TempDir(), "bak.db")
	writeBackup(t, s, bak)
	b, err := Open(bak, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	check(b)
	_ = b.Close()

	// Writes carry on at rev+1, compare-and-set against imported revisions.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.Watch(wctx, 40)
	if err != nil {
		t.Fatal(err)
	}
	if rev, err := s.Put(ctx, "pools/a", []byte("a4"), AtRevision(30), "dave"); err != nil || rev != 41 {
		t.Fatalf("Put = %d, %v; want 41", rev, err)
	}
	select {
	case ev := <-w:
		if ev.Revision != 41 || ev.KV.Version != 4 || ev.KV.CreateRevision != 10 {
			t.Errorf("event = %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	if rev, err := s.Put(ctx, "pools/gone", []byte("g2"), Absent(), "dave"); err != nil || rev != 42 {
		t.Fatalf("re-create = %d, %v", rev, err)
	}
	if h, err := s.History(ctx, "pools/gone"); err != nil || len(h) != 3 || h[2].Revision != 42 {
		t.Errorf("History after re-create = %+v, %v", h, err)
	}

	// A store that is not empty refuses an import.
	if err := s.Import(ctx, 50, importFixture()); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Import into a used store = %v, want ErrInvalidArgument", err)
	}
}

func writeBackup(t *testing.T, s *Store, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// History beyond the limit is trimmed as a write would trim it.
func TestImportTrimsHistory(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, Options{HistoryLimit: 1})
	if err := s.Import(ctx, 40, importFixture()); err != nil {
		t.Fatal(err)
	}
	if h, err := s.History(ctx, "pools/a"); err != nil || len(h) != 1 || h[0].Revision != 30 {
		t.Errorf("History = %+v, %v", h, err)
	}
	if _, err := s.HistoryAt(ctx, "pools/a", 25); !errors.Is(err, ErrCompacted) {
		t.Errorf("HistoryAt(trimmed) = %v, want ErrCompacted", err)
	}
}

func TestImportValidation(t *testing.T) {
	kv := func(c, m, v int64) *KeyValue {
		return &KeyValue{Key: "k", Value: []byte("v"), CreateRevision: c, ModRevision: m, Version: v}
	}
	put := func(rev int64) HistoryEntry {
		return HistoryEntry{Revision: rev, Action: ActionPut, Value: []byte("v")}
	}
	tests := []struct {
		name string
		rev  int64
		keys []ImportKey
	}{
		{"zero revision", 0, nil},
		{"empty key", 10, []ImportKey{{Key: ""}}},
		{"repeated key", 10, []ImportKey{{Key: "k"}, {Key: "k"}}},
		{"current of another key", 10, []ImportKey{{Key: "j", Current: kv(1, 1, 1)}}},
		{"mod before create", 10, []ImportKey{{Key: "k", Current: kv(5, 4, 1)}}},
		{"mod beyond revision", 10, []ImportKey{{Key: "k", Current: kv(5, 11, 1)}}},
		{"zero version", 10, []ImportKey{{Key: "k", Current: kv(5, 5, 0)}}},
		{"history out of order", 10, []ImportKey{{Key: "k", History: []HistoryEntry{put(5), put(5)}}}},
		{"history beyond revision", 10, []ImportKey{{Key: "k", History: []HistoryEntry{put(11)}}}},
		{"history before trimmed", 10, []ImportKey{{Key: "k", History: []HistoryEntry{put(3)}, Trimmed: 3}}},
		{"unknown action", 10, []ImportKey{{Key: "k", History: []HistoryEntry{{Revision: 3}}}}},
		{"long actor", 10, []ImportKey{{Key: "k", History: []HistoryEntry{{Revision: 3, Action: ActionPut, Actor: string(make([]byte, MaxActorSize+1))}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t, Options{})
			if err := s.Import(context.Background(), tt.rev, tt.keys); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Import = %v, want ErrInvalidArgument", err)
			}
			if rev, _ := s.Revision(context.Background()); rev != 0 {
				t.Errorf("revision %d after a refused import", rev)
			}
		})
	}
}
