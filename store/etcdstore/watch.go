package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poolplane/poolplane/store"
)

// Watch returns a channel that delivers every change with Revision >
// fromRevision exactly once, in revision order (a Txn's changes in op
// order), then live changes, with the semantics of store.Store.Watch: it
// rides an etcd watch from fromRevision+1 and takes each event's time and
// actor from the history entry written in the same Txn.
//
// The etcd client resumes a watch across member failures and reconnects
// on its own; the channel is closed when ctx ends, when the Store closes,
// or when etcd compacted revisions the watcher still needed (Watch again:
// it then fails with store.ErrCompacted, and the caller must Snapshot).
//
// Watch returns a *store.CompactedError (store.ErrCompacted) if
// fromRevision is older than etcd's compaction (Oldest is not known and
// is 0), store.ErrInvalidArgument for a negative fromRevision, ctx's error
// if ctx is done, and store.ErrClosed after Close.
func (s *Store) Watch(ctx context.Context, fromRevision int64) (<-chan store.Event, error) {
	if fromRevision < 0 {
		return nil, fmt.Errorf("watch from revision %d: %w", fromRevision, store.ErrInvalidArgument)
	}
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	wctx, cancel := s.opCtx(ctx)
	if fromRevision > 0 {
		// Reading at fromRevision fails exactly when watching from
		// fromRevision+1 would: the revision was compacted.
		_, err := s.cli.Get(wctx, s.kvPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(fromRevision))
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			cancel()
			return nil, fmt.Errorf("watch: %w", &store.CompactedError{Requested: fromRevision})
		case errors.Is(err, rpctypes.ErrFutureRev):
		case err != nil:
			cancel()
			return nil, s.mapErr(ctx, err)
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil, store.ErrClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), s.watchPrefix, clientv3.WithPrefix(),
		clientv3.WithRev(fromRevision+1), clientv3.WithPrevKV())
	ch := make(chan store.Event) // unbuffered: etcd's watch stream is the buffer
	go s.runWatcher(wctx, cancel, fromRevision, wch, ch)
	return ch, nil
}

// runWatcher turns etcd watch responses into store events until ctx ends,
// the etcd watch fails, or the Store closes.
func (s *Store) runWatcher(ctx context.Context, cancel context.CancelFunc, last int64, wch clientv3.WatchChan, ch chan<- store.Event) {
	defer s.wg.Done()
	defer close(ch)
	defer func() {
		cancel()
		for range wch { // let the etcd client release the watcher
		}
	}()
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-wch:
		case <-ctx.Done():
			return
		}
		if !ok || resp.Canceled || resp.CompactRevision != 0 || resp.Err() != nil {
			// With WithRequireLeader a member that lost its leader cancels
			// the watch: the caller re-watches from its last revision.
			return
		}
		for _, ev := range s.toEvents(resp.Events) {
			if ev.Revision <= last {
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
		if n := len(resp.Events); n > 0 {
			last = max(last, resp.Events[n-1].Kv.ModRevision)
		}
	}
}

// toEvents converts the events of whole revisions: kv changes become store
// events, in order, with the time and actor of the history entry written
// for the same key in the same revision.
func (s *Store) toEvents(evs []*clientv3.Event) []store.Event {
	type hk struct {
		key string
		rev int64
	}
	entries := make(map[hk]histEntry)
	for _, ev := range evs {
		if ev.Type != mvccpb.PUT {
			continue
		}
		if key, ok := s.keyOfHist(string(ev.Kv.Key)); ok {
			if e, err := decodeHistEntry(ev.Kv.Value); err == nil {
				entries[hk{key, ev.Kv.ModRevision}] = e
			}
		}
	}
	var out []store.Event
	for _, ev := range evs {
		k, ok := strings.CutPrefix(string(ev.Kv.Key), s.kvPrefix)
		if !ok {
			continue
		}
		rev := ev.Kv.ModRevision
		e := entries[hk{k, rev}]
		se := store.Event{Revision: rev, Time: e.time, Actor: e.actor}
		switch ev.Type {
		case mvccpb.PUT:
			se.Action, se.KV = store.ActionPut, s.toKV(ev.Kv)
		case mvccpb.DELETE:
			se.Action = store.ActionDelete
			if ev.PrevKv != nil {
				se.KV = s.toKV(ev.PrevKv)
			} else {
				se.KV = store.KeyValue{Key: k}
			}
		}
		out = append(out, se)
	}
	return out
}
