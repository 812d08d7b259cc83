package poolmgr

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/poolplane/poolplane/store"
)

// memStore is an in-memory Store for unit tests with the revision semantics
// of *store.Store: one global revision bumped by every write, per-key
// CreateRevision/ModRevision/Version, Absent/AtRevision preconditions,
// all-or-nothing Txn, history that outlives deletes, and Watch replaying
// changes above a revision. It keeps everything (no limits, no compaction).
type memStore struct {
	stopc chan struct{}  // closed by Close: ends watchers
	wg    sync.WaitGroup // watchers

	mu      sync.Mutex // protects following fields
	rev     int64
	kvs     map[string]store.KeyValue
	hist    map[string][]store.HistoryEntry
	log     []store.Event // every change, in revision order
	notifyc chan struct{} // closed and replaced after every commit
	closed  bool
}

var _ Store = (*memStore)(nil)

func newMemStore() *memStore {
	return &memStore{
		stopc:   make(chan struct{}),
		kvs:     make(map[string]store.KeyValue),
		hist:    make(map[string][]store.HistoryEntry),
		notifyc: make(chan struct{}),
	}
}

// Close ends every watcher and fails later calls with store.ErrClosed.
func (s *memStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stopc)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *memStore) checkLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed {
		return store.ErrClosed
	}
	return nil
}

// expectOf reads a store.Expect, whose fields are unexported, by comparison
// and reflection (test-only).
func expectOf(e store.Expect) (absent bool, rev int64, any bool) {
	switch e {
	case store.Any():
		return false, 0, true
	case store.Absent():
		return true, 0, false
	}
	return false, reflect.ValueOf(e).FieldByName("rev").Int(), false
}

func checkExpect(key string, e store.Expect, cur store.KeyValue, ok bool) error {
	absent, rev, any := expectOf(e)
	switch {
	case any:
	case absent:
		if ok {
			return fmt.Errorf("key %q: %w", key, store.ErrExists)
		}
	default:
		if rev <= 0 {
			return fmt.Errorf("expected revision %d: %w", rev, store.ErrInvalidArgument)
		}
		if !ok || cur.ModRevision != rev {
			return &store.RevisionMismatchError{Key: key, Expected: rev, Current: cur.ModRevision}
		}
	}
	return nil
}

func (s *memStore) Put(ctx context.Context, key string, value []byte, expect store.Expect, actor string) (int64, error) {
	return s.Txn(ctx, []store.Op{{Kind: store.OpPut, Key: key, Value: value, Expect: expect}}, actor)
}

func (s *memStore) Delete(ctx context.Context, key string, expect store.Expect, actor string) (int64, error) {
	return s.Txn(ctx, []store.Op{{Kind: store.OpDelete, Key: key, Expect: expect}}, actor)
}

func (s *memStore) Txn(ctx context.Context, ops []store.Op, actor string) (int64, error) {
	if len(ops) == 0 {
		return 0, fmt.Errorf("empty txn: %w", store.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for i, op := range ops {
		if op.Key == "" || seen[op.Key] || (op.Kind != store.OpPut && op.Kind != store.OpDelete) {
			return 0, fmt.Errorf("op %d: %w", i, store.ErrInvalidArgument)
		}
		seen[op.Key] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return 0, err
	}
	for _, op := range ops {
		cur, ok := s.kvs[op.Key]
		if err := checkExpect(op.Key, op.Expect, cur, ok); err != nil {
			return 0, err
		}
		if op.Kind == store.OpDelete && !ok {
			return 0, fmt.Errorf("delete %q: %w", op.Key, store.ErrNotFound)
		}
	}
	s.rev++
	now := time.Now().UTC()
	for _, op := range ops {
		cur, ok := s.kvs[op.Key]
		e := store.HistoryEntry{Revision: s.rev, Time: now, Actor: actor}
		ev := store.Event{Revision: s.rev, Time: now, Actor: actor}
		switch op.Kind {
		case store.OpPut:
			next := store.KeyValue{Key: op.Key, Value: slices.Clone(op.Value), CreateRevision: cur.CreateRevision, ModRevision: s.rev, Version: cur.Version + 1}
			if !ok {
				next.CreateRevision, next.Version = s.rev, 1
			}
			s.kvs[op.Key] = next
			e.Action, e.Value = store.ActionPut, slices.Clone(op.Value)
			ev.Action, ev.KV = store.ActionPut, next
		case store.OpDelete:
			delete(s.kvs, op.Key)
			e.Action = store.ActionDelete
			ev.Action, ev.KV = store.ActionDelete, cur
		}
		s.hist[op.Key] = append(s.hist[op.Key], e)
		s.log = append(s.log, ev)
	}
	close(s.notifyc)
	s.notifyc = make(chan struct{})
	return s.rev, nil
}

func (s *memStore) Get(ctx context.Context, key string) (store.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return store.KeyValue{}, err
	}
	kv, ok := s.kvs[key]
	if !ok {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	kv.Value = slices.Clone(kv.Value)
	return kv, nil
}

func (s *memStore) sortedLocked(prefix string) []store.KeyValue {
	var out []store.KeyValue
	for k, kv := range s.kvs {
		if strings.HasPrefix(k, prefix) {
			kv.Value = slices.Clone(kv.Value)
			out = append(out, kv)
		}
	}
	slices.SortFunc(out, func(a, b store.KeyValue) int { return strings.Compare(a.Key, b.Key) })
	return out
}

func (s *memStore) List(ctx context.Context, prefix string, pageSize int, pageToken string) ([]store.KeyValue, string, error) {
	after, hasAfter := strings.CutPrefix(pageToken, "mem:")
	if pageToken != "" && (!hasAfter || !strings.HasPrefix(after, prefix)) {
		return nil, "", fmt.Errorf("page token %q: %w", pageToken, store.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return nil, "", err
	}
	all := s.sortedLocked(prefix)
	var page []store.KeyValue
	for _, kv := range all {
		if hasAfter && kv.Key <= after {
			continue
		}
		if pageSize > 0 && len(page) == pageSize {
			return page, "mem:" + page[len(page)-1].Key, nil
		}
		page = append(page, kv)
	}
	return page, "", nil
}

func (s *memStore) Snapshot(ctx context.Context, prefix string) ([]store.KeyValue, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return nil, 0, err
	}
	return s.sortedLocked(prefix), s.rev, nil
}

func (s *memStore) Revision(ctx context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return 0, err
	}
	return s.rev, nil
}

func (s *memStore) History(ctx context.Context, key string) ([]store.HistoryEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return nil, err
	}
	h := s.hist[key]
	if len(h) == 0 {
		return nil, fmt.Errorf("history of %q: %w", key, store.ErrNotFound)
	}
	return slices.Clone(h), nil
}

func (s *memStore) HistoryAt(ctx context.Context, key string, rev int64) (store.HistoryEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(ctx); err != nil {
		return store.HistoryEntry{}, err
	}
	if rev <= 0 || rev > s.rev {
		return store.HistoryEntry{}, fmt.Errorf("revision %d: %w", rev, store.ErrInvalidArgument)
	}
	h := s.hist[key]
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].Revision <= rev {
			return h[i], nil
		}
	}
	return store.HistoryEntry{}, fmt.Errorf("history of %q at revision %d: %w", key, rev, store.ErrNotFound)
}

func (s *memStore) Watch(ctx context.Context, fromRevision int64) (<-chan store.Event, error) {
	if fromRevision < 0 {
		return nil, fmt.Errorf("watch from %d: %w", fromRevision, store.ErrInvalidArgument)
	}
	s.mu.Lock()
	if err := s.checkLocked(ctx); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.wg.Add(1)
	s.mu.Unlock()
	ch := make(chan store.Event)
	go func() {
		defer s.wg.Done()
		defer close(ch)
		next := 0 // index into log
		for {
			s.mu.Lock()
			wake := s.notifyc
			evs := slices.Clone(s.log[next:])
			next = len(s.log)
			s.mu.Unlock()
			for _, ev := range evs {
				if ev.Revision <= fromRevision {
					continue
				}
				select {
				case ch <- ev:
				case <-ctx.Done():
					return
				case <-s.stopc:
					return
				}
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			case <-s.stopc:
				return
			}
		}
	}()
	return ch, nil
}
