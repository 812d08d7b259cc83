package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// waitLimit bounds how long a test waits for an event that must come. It
// is a failure deadline, not a way to wait for state.
const waitLimit = 10 * time.Second

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-timer.C:
		t.Fatal("no event")
	}
	panic("unreachable")
}

// waitClosed drains ch until it closes and returns what it drained.
func waitClosed(t *testing.T, ch <-chan Event) []Event {
	t.Helper()
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	var evs []Event
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-timer.C:
			t.Fatal("watch channel not closed")
		}
	}
}

func TestWatchConcurrentWriters(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := t.Context()
	w, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	const (
		writers = 8
		each    = 50
		total   = writers * each
	)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for j := range each {
				key := fmt.Sprintf("w%d/%d", i, j%5)
				if _, err := s.Put(ctx, key, fmt.Appendf(nil, "%d", j), Any(), fmt.Sprint("w", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	seen := make(map[string]int) // "w<i>" -> next j expected
	for n := range total {
		ev := recv(t, w)
		if ev.Revision != int64(n+1) {
			t.Fatalf("event %d has revision %d", n, ev.Revision)
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
	rev := mustPut(t, s, "last", "x", Any())
	if ev := recv(t, w); ev.Revision != rev || ev.KV.Key != "last" {
		t.Errorf("after writers: %+v", ev)
	}
}

func TestWatchHistoricalThenLive(t *testing.T) {
	tests := []struct {
		name string
		from int64
	}{
		{"from start", 0},
		{"from middle", 4},
		{"from now", 10},
		{"from future", 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStore(t, Options{})
			ctx := t.Context()
			for i := 1; i <= 10; i++ {
				mustPut(t, s, fmt.Sprint("k", i%3), fmt.Sprint(i), Any())
			}
			w, err := s.Watch(ctx, tt.from)
			if err != nil {
				t.Fatal(err)
			}
			for i := 11; i <= 15; i++ {
				if i%2 == 0 {
					_, err = s.Delete(ctx, fmt.Sprint("k", i%3), Any(), "d")
				} else {
					_, err = s.Put(ctx, fmt.Sprint("k", i%3), []byte(fmt.Sprint(i)), Any(), "p")
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for want := tt.from + 1; want <= 15; want++ {
				ev := recv(t, w)
				if ev.Revision != want {
					t.Fatalf("revision %d, want %d", ev.Revision, want)
				}
				wantAction := ActionPut
				if want > 10 && want%2 == 0 {
					wantAction = ActionDelete
				}
				if ev.Action != wantAction {
					t.Errorf("rev %d action %v", want, ev.Action)
				}
				if wantAction == ActionDelete {
					// KV is the last state before the delete.
					if ev.KV.ModRevision >= ev.Revision || len(ev.KV.Value) == 0 {
						t.Errorf("delete event KV = %+v", ev.KV)
					}
				} else if string(ev.KV.Value) != fmt.Sprint(want) || ev.KV.ModRevision != want {
					t.Errorf("put event = %+v", ev)
				}
			}
		})
	}
}

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
		if ev := recv(t, w); ev.Revision != want {
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
	evs := waitClosed(t, w)
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
		if evs := waitClosed(t, w); len(evs) > 1 {
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
			waitClosed(t, w)
		}
	})
}
