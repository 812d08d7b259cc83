package store

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestWatchCompacted(t *testing.T) {
	s, _ := newStore(t, Options{LogLimit: 5})
	ctx := t.Context()
	for i := range 20 {
		mustPut(t, s, "k", fmt.Sprint(i), Any())
	}
	for _, from := range []int64{0, 1, 14} {
		_, err := s.Watch(ctx, from)
		var ce *CompactedError
		if !errors.Is(err, ErrCompacted) || !errors.As(err, &ce) || ce.Requested != from || ce.Oldest != 16 {
			t.Errorf("Watch(%d) = %v, want CompactedError{%d, 16}", from, err, from)
		}
	}
	w, err := s.Watch(ctx, 15)
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(16); want <= 20; want++ {
		if ev := testkit.RecvOpen(t, w); ev.Revision != want {
			t.Fatalf("revision %d, want %d", ev.Revision, want)
		}
	}
	if _, err := s.Watch(ctx, -1); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Watch(-1): %v", err)
	}
}

// A consumer that stops reading blocks no writer; once it falls behind the
// log, its channel closes and re-watching reports ErrCompacted.
func TestWatchSlowConsumer(t *testing.T) {
	s, _ := newStore(t, Options{LogLimit: 10})
	ctx := t.Context()
	w, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		mustPut(t, s, "k", fmt.Sprint(i), Any())
	}
	evs := testkit.Drain(t, w)
	if ctx.Err() != nil {
		t.Fatal("ctx ended")
	}
	last := int64(0)
	for _, ev := range evs {
		if ev.Revision != last+1 {
			t.Fatalf("revision %d after %d", ev.Revision, last)
		}
		last = ev.Revision
	}
	if last >= 100 {
		t.Fatalf("slow consumer received everything (%d)", last)
	}
	if _, err := s.Watch(ctx, last); !errors.Is(err, ErrCompacted) {
		t.Errorf("re-watch from %d: %v", last, err)
	}
}

func TestWatchEnds(t *testing.T) {
	t.Run("ctx", func(t *testing.T) {
		s, _ := newStore(t, Options{})
		ctx, cancel := context.WithCancel(t.Context())
		w, err := s.Watch(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		mustPut(t, s, "k", "v", Any())
		cancel()
		// At most the one pending event, then closed.
		if evs := testkit.Drain(t, w); len(evs) > 1 {
			t.Errorf("got %d events after cancel", len(evs))
		}
	})
	t.Run("close", func(t *testing.T) {
		path := t.TempDir() + "/s.db"
		s, err := Open(path, Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		ws := make([]<-chan Event, 4)
		for i := range ws {
			if ws[i], err = s.Watch(t.Context(), 0); err != nil {
				t.Fatal(err)
			}
		}
		mustPut(t, s, "k", "v", Any())
		if err := s.Close(); err != nil { // must not wait for readers
			t.Fatal(err)
		}
		for _, w := range ws {
			testkit.Drain(t, w)
		}
	})
}
