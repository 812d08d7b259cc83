package store

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Event is one change delivered by [Store.Watch].
type Event struct {
	Action Action
	// KV is the key's state after a put. For a delete it is the state just
	// before the delete: KV.Value is the last value and KV.ModRevision the
	// revision of the last put.
	KV       KeyValue
	Revision int64     // the revision of the change; a Txn's events share one
	Time     time.Time // when it was committed (Options.Now), UTC
	Actor    string
}

// Watch batches: a watcher reads at most this many revisions, or about
// this many value bytes, per read transaction, which bounds the memory a
// slow consumer can pin.
const (
	watchBatchRevisions = 128
	watchBatchBytes     = 4 << 20
)

// Watch returns a channel that delivers every change with Revision >
// fromRevision exactly once, in revision order (a Txn's changes in op
// order), and then live changes as they commit. Use the revision from
// Snapshot or Revision to watch from "now".
//
// Watchers read forward from the durable change log, so a slow consumer
// never blocks writers nor buffers changes in memory. The channel is
// closed when ctx ends, when the store closes, or when the consumer falls
// so far behind that the changes it still needs were compacted out of the
// log (Options.LogLimit). In the last case, Watch again from the last
// revision received: it fails with ErrCompacted, and the caller must
// re-read its state (Snapshot) and watch from there.
//
// Watch returns a *CompactedError (ErrCompacted) if fromRevision is older
// than the retained log: the smallest accepted fromRevision is Oldest-1.
// It returns ErrInvalidArgument for a negative fromRevision, ctx's error if
// ctx is done, and ErrClosed after Close.
func (s *Store) Watch(ctx context.Context, fromRevision int64) (<-chan Event, error) {
	if fromRevision < 0 {
		return nil, fmt.Errorf("watch from revision %d: %w", fromRevision, ErrInvalidArgument)
	}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if c := compactedRevision(tx); fromRevision < c {
			return fmt.Errorf("watch: %w", &CompactedError{Requested: fromRevision, Oldest: c + 1})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	ch := make(chan Event) // unbuffered: the log is the buffer
	go s.runWatcher(ctx, fromRevision+1, ch)
	return ch, nil
}

// runWatcher feeds ch from the change log starting at revision next until
// ctx ends, the store closes, or next is compacted away.
func (s *Store) runWatcher(ctx context.Context, next int64, ch chan<- Event) {
	defer s.wg.Done()
	defer close(ch)
	for {
		// Take the signal before reading so a commit between the read and
		// the wait still wakes us.
		wake := s.commitSignal()
		evs, ok := s.readLog(next)
		if !ok {
			return
		}
		if len(evs) == 0 {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return
			case <-s.stopc:
				return
			}
		}
		for _, ev := range evs {
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			case <-s.stopc:
				return
			}
		}
		next = evs[len(evs)-1].Revision + 1
	}
}

// readLog returns the events of whole revisions from next on, at most one
// batch. ok is false if next was compacted or the log cannot be read (the
// store closed, or a corrupt entry): the watcher must stop.
func (s *Store) readLog(next int64) (evs []Event, ok bool) {
	err := s.db.View(func(tx *bolt.Tx) error {
		if next-1 < compactedRevision(tx) {
			return ErrCompacted
		}
		c := tx.Bucket(bucketLog).Cursor()
		size, revs := 0, 0
		for k, v := c.Seek(itob(next)); k != nil && revs < watchBatchRevisions && size < watchBatchBytes; k, v = c.Next() {
			var err error
			if evs, err = decodeLog(evs, btoi(k), v); err != nil {
				return err
			}
			size += len(v)
			revs++
		}
		return nil
	})
	return evs, err == nil
}
