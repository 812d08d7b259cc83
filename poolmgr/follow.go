package poolmgr

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/poolplane/poolplane/store"
)

// Backoff of the follow loop while the store cannot be watched or read
// (etcd unreachable, no leader): the live pools keep serving meanwhile.
const (
	followBackoffMin = 100 * time.Millisecond
	followBackoffMax = 5 * time.Second
)

// markApplied records that the live state of pool id reflects the store at
// rev, so the follow loop skips that change and any older one.
func (m *Manager) markApplied(id string, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev > m.applied[id] {
		m.applied[id] = rev
	}
}

// appliedRev returns the revision recorded by markApplied, 0 if none.
func (m *Manager) appliedRev(id string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied[id]
}

// startFollow starts the follow loop from the revision Load read. Its
// owner is the Manager: Close cancels stopCtx (the loop's stopc) and waits
// for donec.
func (m *Manager) startFollow(from int64) {
	donec := make(chan struct{})
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.donec = donec
	m.mu.Unlock()
	go m.runFollow(from, donec)
}

// runFollow watches the store from rev and applies every pool change to
// the live pools. When the watch breaks (the store is unreachable, etcd
// lost its leader, or the needed revisions were compacted) it reconciles:
// it re-reads every pool (Snapshot) and brings the live pools to it, then
// watches again from there. Until then the live pools keep serving as
// they are.
func (m *Manager) runFollow(rev int64, donec chan struct{}) {
	defer close(donec)
	ctx := m.stopCtx
	backoff := followBackoffMin
	resync := false
	for ctx.Err() == nil {
		if resync {
			r, err := m.reconcile(ctx)
			if err != nil {
				if ctx.Err() == nil {
					m.logger.LogAttrs(ctx, slog.LevelWarn, "follow: reconcile with the store failed; pools keep their current config",
						slog.Any("error", err), slog.Duration("retry_in", backoff))
				}
				if !sleepCtx(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, followBackoffMax)
				continue
			}
			rev = r
		}
		ch, err := m.store.Watch(ctx, rev)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.logger.LogAttrs(ctx, slog.LevelWarn, "follow: watch failed", slog.Int64("from_revision", rev),
				slog.Any("error", err), slog.Duration("retry_in", backoff))
			resync = true
			if !errors.Is(err, store.ErrCompacted) && !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, followBackoffMax)
			continue
		}
		backoff = followBackoffMin
		for ev := range ch {
			if err := m.applyRemote(ctx, ev); err != nil {
				// Only Close stops an apply; drain so the store's watcher ends.
				for range ch {
				}
				return
			}
			rev = ev.Revision
		}
		if ctx.Err() != nil {
			return
		}
		m.logger.LogAttrs(ctx, slog.LevelWarn, "follow: watch ended; reconciling", slog.Int64("revision", rev))
		resync = true
	}
}

// sleepCtx waits d, and reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// applyRemote applies one store event to the live pools unless this
// Manager already reflects it. It returns an error only when the Manager
// closes.
func (m *Manager) applyRemote(ctx context.Context, ev store.Event) error {
	id, ok := strings.CutPrefix(ev.KV.Key, keyPrefix)
	if !ok {
		return nil
	}
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if ev.Revision <= m.appliedRev(id) {
		return nil // this Manager made the change, or a later one
	}
	m.markApplied(id, ev.Revision)
	if ev.Action == store.ActionDelete {
		m.stopPool(id)
		m.logger.LogAttrs(ctx, slog.LevelInfo, "follow: pool deleted", slog.String("pool", id),
			slog.Int64("revision", ev.Revision), slog.String("actor", ev.Actor))
		return nil
	}
	m.applyRecord(ctx, id, ev.KV.Value, ev.Revision, ev.Actor)
	return nil
}

// applyRecord brings the live pool id to an encoded record committed at
// rev by another Manager. Errors are logged: the pool stays as it was, as
// at Load. The caller holds wsem.
func (m *Manager) applyRecord(ctx context.Context, id string, val []byte, rev int64, actor string) {
	rec, err := decodeRecord(val, m.sealer)
	if err == nil {
		err = rec.Config.WithDefaults().Validate()
	}
	if err == nil {
		if p := m.lookup(id); p != nil && rec.Op == ActionReconnect {
			p.Reconnect()
		} else {
			err = m.applyLive(id, rec, true, true)
		}
	}
	if err != nil {
		m.logger.LogAttrs(ctx, slog.LevelError, "follow: pool change not applied", slog.String("pool", id),
			slog.Int64("revision", rev), slog.Any("error", err))
		return
	}
	m.logger.LogAttrs(ctx, slog.LevelInfo, "follow: pool changed", slog.String("pool", id),
		slog.Int64("revision", rev), slog.String("op", string(rec.Op)), slog.String("actor", actor))
}

// reconcile reads every pool and brings the live pools to it: pools
// changed or created since this Manager last applied them are applied,
// live pools no longer stored are retired. It returns the revision read.
func (m *Manager) reconcile(ctx context.Context) (int64, error) {
	kvs, rev, err := m.store.Snapshot(ctx, keyPrefix)
	if err != nil {
		return 0, err
	}
	unlock, err := m.lockWrites(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	stored := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		id := strings.TrimPrefix(kv.Key, keyPrefix)
		stored[id] = true
		if kv.ModRevision <= m.appliedRev(id) {
			continue
		}
		m.markApplied(id, kv.ModRevision)
		m.applyRecord(ctx, id, kv.Value, kv.ModRevision, "")
	}
	for _, id := range m.Pools() {
		// A pool this Manager created after the snapshot is not in it.
		if stored[id] || m.appliedRev(id) > rev {
			continue
		}
		m.markApplied(id, rev)
		m.stopPool(id)
		m.logger.LogAttrs(ctx, slog.LevelInfo, "follow: pool deleted while the store was unreachable",
			slog.String("pool", id), slog.Int64("revision", rev))
	}
	return rev, nil
}
