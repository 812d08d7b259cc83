package etcdstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poolplane/poolplane/store"
)

// Defaults for zero [RestoreOptions] fields: etcd's own defaults, so a
// restore fits a cluster started without --max-txn-ops and
// --max-request-bytes.
const (
	DefaultMaxTxnOps   = 128     // etcd's --max-txn-ops
	DefaultMaxTxnBytes = 1 << 20 // below etcd's --max-request-bytes, 1.5 MiB
)

// Errors of [Store.Restore] and [Store.CheckRestore]. Match them with
// errors.Is.
var (
	// ErrNotEmpty: the prefix already holds keys or history, and the
	// restore was not asked to replace them.
	ErrNotEmpty = errors.New("etcdstore: prefix is not empty")
	// ErrRestoreUnfinished: a restore into the prefix started and has not
	// finished: it is running, failed, or was interrupted, and the prefix
	// holds part of a backup. Run the restore again with Replace.
	ErrRestoreUnfinished = errors.New("etcdstore: unfinished restore")
)

// RestoreOptions configures [Store.Restore].
type RestoreOptions struct {
	// Replace restores into a prefix that holds data, or an unfinished
	// restore: the restore first deletes every history entry and the
	// keys the backup does not hold, then writes the backup's, which
	// overwrite the others. Replicas following the prefix see the deleted
	// keys deleted and the others updated. Without Replace, Restore
	// refuses a prefix that holds any key or history.
	Replace bool
	// MaxTxnOps bounds the operations (and the comparisons) of one etcd
	// Txn: the cluster's --max-txn-ops. Default DefaultMaxTxnOps.
	MaxTxnOps int
	// MaxTxnBytes bounds the keys and values written by one Txn, which
	// must fit the cluster's --max-request-bytes; a single entry larger
	// than this goes alone. Default DefaultMaxTxnBytes.
	MaxTxnBytes int
}

// RestoreResult says what [Store.Restore] wrote.
type RestoreResult struct {
	// BackupRevision is the store revision of the backup.
	BackupRevision int64
	// Keys are the keys restored with a value, sorted.
	Keys []string
	// Deleted is the number of keys restored with their history only:
	// deleted before the backup.
	Deleted int
	// HistoryEntries is the number of history entries written.
	HistoryEntries int
	// Dropped is the number of the backup's history entries beyond this
	// store's HistoryLimit, oldest first, that were not written.
	Dropped int
	// Removed is the number of keys Replace deleted: present under the
	// prefix, absent from the backup's values.
	Removed int
	// Txns is the number of etcd transactions written.
	Txns int
	// Revision is etcd's revision after the restore.
	Revision int64
}

// restoreKey marks a restore in progress: P/restore.
func (s *Store) restoreKey() string { return s.watchPrefix + "restore" }

// restoreMark is the value of the restore key: version byte 1, the
// backup's revision and the start time (unix nanos), 8 bytes each.
type restoreMark struct {
	backupRev int64
	started   time.Time
}

func (m restoreMark) encode() string {
	b := append(make([]byte, 0, 17), 1)
	b = binary.BigEndian.AppendUint64(b, uint64(m.backupRev))
	return string(binary.BigEndian.AppendUint64(b, uint64(m.started.UnixNano())))
}

func decodeRestoreMark(b []byte) restoreMark {
	if len(b) != 17 || b[0] != 1 {
		return restoreMark{}
	}
	return restoreMark{
		backupRev: int64(binary.BigEndian.Uint64(b[1:])),
		started:   time.Unix(0, int64(binary.BigEndian.Uint64(b[9:]))).UTC(),
	}
}

func (m restoreMark) String() string {
	return fmt.Sprintf("of a backup at revision %d, started %s", m.backupRev, m.started.Format(time.RFC3339))
}

// CheckRestore returns an error wrapping ErrRestoreUnfinished if a
// restore into the prefix started and has not finished (it is running,
// failed or was interrupted), saying when it started; nil otherwise. It
// returns ctx's error if ctx is done, store.ErrClosed after Close, and
// the etcd client's errors.
func (s *Store) CheckRestore(ctx context.Context) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, s.restoreKey())
	if err != nil {
		return s.mapErr(ctx, err)
	}
	if len(resp.Kvs) > 0 {
		return fmt.Errorf("prefix %q holds a restore %s that did not finish: %w", strings.TrimSuffix(s.watchPrefix, "/"),
			decodeRestoreMark(resp.Kvs[0].Value), ErrRestoreUnfinished)
	}
	return nil
}

// RestoreFile restores the backup file at path (a store file, as
// BackupContext or a bbolt poold's backup writes it), opened read-only,
// into the prefix: see Restore. It returns an error wrapping
// store.ErrLocked if a process holds the file read-write (a poold
// serving it), and Restore's errors.
func (s *Store) RestoreFile(ctx context.Context, path string, opts RestoreOptions) (RestoreResult, error) {
	b, err := store.Open(path, store.Options{ReadOnly: true})
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: read backup: %w", err)
	}
	keys, rev, err := b.Export(ctx)
	if cerr := b.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore: read backup %s: %w", path, err)
	}
	return s.Restore(ctx, rev, keys, opts)
}

// Restore writes keys, as a store held them at revision rev (what
// store.Store.Export returns), into the prefix: every key's value, its
// history entries (time, action, actor and value) in order, and where
// its older history was trimmed, in the layout this package writes.
//
// etcd assigns its own revisions, so the restored keys and history
// entries get new ones: ModRevision (a pool's etag), CreateRevision and
// the revision of every history entry change. The order is kept: entries
// are written in the order of their original revisions, several
// revisions to one Txn where no key repeats, so changes made together
// share a revision where the limits allow, a later change never gets an
// earlier revision, and a key's entries get strictly increasing ones. A
// key's value is written in the Txn of its last history entry, so its
// ModRevision is that entry's revision, and so is its CreateRevision (the
// key is created once): Version restarts at 1. (A key that Replace
// overwrites keeps its CreateRevision and Version count.) History beyond
// HistoryLimit is dropped,
// oldest first; HistoryAt before a key's oldest retained entry fails
// with store.ErrCompacted if the backup (or the restore) trimmed it,
// store.ErrNotFound if not. The backup's change log is not restored: a
// Watch from before the restore sees the restored keys as new puts.
//
// The restore takes as many Txns as the longest history plus what the
// limits of opts require. Its first Txn writes the marker P/restore
// (refusing, without opts.Replace, a prefix that holds keys, history or
// a marker), every later one checks that the marker and the keys it
// writes were not changed meanwhile, and the last deletes the marker: a
// restore that fails midway leaves it, CheckRestore reports it, and
// only a restore with Replace proceeds. Replicas that follow the prefix
// see the restored keys appear as they are written.
//
// It returns an error wrapping store.ErrInvalidArgument for keys that do
// not describe a store (bad or repeated keys, revisions out of order or
// beyond rev, a value without its history entry, an unknown action),
// ErrNotEmpty or ErrRestoreUnfinished for a prefix in use (without
// Replace), ErrRestoreUnfinished when the restore stops midway (another
// writer changed the prefix, an etcd error: both wrapped), ctx's error
// if ctx ends, and store.ErrClosed after Close.
func (s *Store) Restore(ctx context.Context, rev int64, keys []store.ImportKey, opts RestoreOptions) (RestoreResult, error) {
	if opts.MaxTxnOps <= 0 {
		opts.MaxTxnOps = DefaultMaxTxnOps
	}
	if opts.MaxTxnBytes <= 0 {
		opts.MaxTxnBytes = DefaultMaxTxnBytes
	}
	if opts.MaxTxnOps < 8 {
		return RestoreResult{}, fmt.Errorf("restore: at most %d operations per Txn, need 8: %w", opts.MaxTxnOps, store.ErrInvalidArgument)
	}
	if err := validateRestore(rev, keys); err != nil {
		return RestoreResult{}, fmt.Errorf("restore: %w", err)
	}
	if err := s.check(ctx); err != nil {
		return RestoreResult{}, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	res := RestoreResult{BackupRevision: rev}
	units := s.restoreUnits(keys, &res)
	batches := packUnits(units, opts.MaxTxnOps-1, opts.MaxTxnBytes) // one op left for the marker's delete

	start, removed, err := s.beginRestore(c, rev, keys, opts)
	if err != nil {
		return RestoreResult{}, s.restoreErr(ctx, err, false)
	}
	res.Txns, res.Removed, res.Revision = 1, len(removed[0]), start
	s.afterRestoreTxn(res.Txns)
	// More removals than the first Txn holds: one more Txn per batch.
	for _, del := range removed[1:] {
		ops := make([]clientv3.Op, 0, len(del))
		for _, k := range del {
			ops = append(ops, clientv3.OpDelete(k))
		}
		if res.Revision, err = s.restoreTxn(c, start, nil, ops); err != nil {
			return RestoreResult{}, s.restoreErr(ctx, fmt.Errorf("remove keys: %w", err), true)
		}
		res.Txns++
		res.Removed += len(del)
		s.afterRestoreTxn(res.Txns)
	}
	if len(batches) == 0 {
		batches = [][]restoreUnit{nil} // the marker's delete alone
	}
	for i, b := range batches {
		cmps := make([]clientv3.Cmp, 0, len(b))
		ops := make([]clientv3.Op, 0, opts.MaxTxnOps)
		for _, u := range b {
			// Every write of the key writes its history marker: if the
			// marker exists, someone wrote the key during the restore.
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.markKey(u.key)), "=", 0))
			ops = append(ops, s.unitOps(u, start)...)
		}
		if i == len(batches)-1 {
			ops = append(ops, clientv3.OpDelete(s.restoreKey()))
		}
		if res.Revision, err = s.restoreTxn(c, start, cmps, ops); err != nil {
			return RestoreResult{}, s.restoreErr(ctx, fmt.Errorf("transaction %d of %d: %w", res.Txns+1, res.Txns+len(batches)-i, err), true)
		}
		res.Txns++
		s.afterRestoreTxn(res.Txns)
	}
	return res, nil
}

// afterRestoreTxn calls the test hook, if any, with the number of Txns
// the restore committed.
func (s *Store) afterRestoreTxn(txns int) {
	if s.restoreHook != nil {
		s.restoreHook(txns)
	}
}

// restoreErr maps an error of a restore; begun says the restore marker
// was written, so the prefix now holds part of the backup.
func (s *Store) restoreErr(ctx context.Context, err error, begun bool) error {
	if errors.Is(err, ErrRestoreUnfinished) || errors.Is(err, ErrNotEmpty) {
		return fmt.Errorf("restore: %w", err) // a refusal, not an etcd error
	}
	err = s.mapErr(ctx, err)
	if begun {
		return fmt.Errorf("restore: %w (%w: the prefix holds part of the backup; restore again with Replace)", err, ErrRestoreUnfinished)
	}
	return fmt.Errorf("restore: %w", err)
}

// validateRestore checks keys as Restore documents.
func validateRestore(rev int64, keys []store.ImportKey) error {
	if rev < 0 || (rev == 0 && len(keys) > 0) {
		return fmt.Errorf("backup revision %d: %w", rev, store.ErrInvalidArgument)
	}
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if err := validateKey(k.Key); err != nil {
			return err
		}
		if _, dup := seen[k.Key]; dup {
			return fmt.Errorf("key %q repeated: %w", k.Key, store.ErrInvalidArgument)
		}
		seen[k.Key] = struct{}{}
		last := k.Trimmed
		if last < 0 || last > rev {
			return fmt.Errorf("key %q: trimmed revision %d: %w", k.Key, last, store.ErrInvalidArgument)
		}
		for _, e := range k.History {
			if e.Revision <= last || e.Revision > rev {
				return fmt.Errorf("key %q: history entry at revision %d after %d (backup at %d): %w", k.Key, e.Revision, last, rev, store.ErrInvalidArgument)
			}
			last = e.Revision
			if e.Action != store.ActionPut && e.Action != store.ActionDelete {
				return fmt.Errorf("key %q: history entry at revision %d: unknown action %d: %w", k.Key, e.Revision, e.Action, store.ErrInvalidArgument)
			}
			if len(e.Value) > store.MaxValueSize || len(e.Actor) > store.MaxActorSize {
				return fmt.Errorf("key %q: history entry at revision %d: value or actor too large: %w", k.Key, e.Revision, store.ErrInvalidArgument)
			}
		}
		var lastEntry *store.HistoryEntry
		if n := len(k.History); n > 0 {
			lastEntry = &k.History[n-1]
		}
		if cur := k.Current; cur != nil {
			if cur.Key != k.Key {
				return fmt.Errorf("key %q: current state of %q: %w", k.Key, cur.Key, store.ErrInvalidArgument)
			}
			if lastEntry == nil || lastEntry.Action != store.ActionPut || lastEntry.Revision != cur.ModRevision || !bytes.Equal(lastEntry.Value, cur.Value) {
				return fmt.Errorf("key %q: its value (revision %d) is not its last history entry: %w", k.Key, cur.ModRevision, store.ErrInvalidArgument)
			}
		} else if lastEntry != nil && lastEntry.Action != store.ActionDelete {
			return fmt.Errorf("key %q: no value, but its last history entry (revision %d) is a put: %w", k.Key, lastEntry.Revision, store.ErrInvalidArgument)
		}
	}
	return nil
}

// restoreUnit is what one Txn writes for one key: a history entry, and
// with the key's last one its value and history marker.
type restoreUnit struct {
	key      string
	orig     int64 // the entry's revision in the backup; 0 for a marker alone
	seq      int64 // the entry's sequence number
	entry    *store.HistoryEntry
	last     bool            // also writes the marker, and the value if any
	cur      *store.KeyValue // the value, with last
	nextSeq  int64           // the marker's, with last
	trimmed  bool            // the key's older history was trimmed, with last
	ops, len int             // etcd operations and bytes written
}

// restoreUnits turns keys into units sorted by original revision, then
// key, and counts them into res.
func (s *Store) restoreUnits(keys []store.ImportKey, res *RestoreResult) []restoreUnit {
	var units []restoreUnit
	for _, k := range keys {
		hist, trimmed := k.History, k.Trimmed > 0
		if n := len(hist) - s.historyLimit; n > 0 {
			res.Dropped += n
			hist, trimmed = hist[n:], true
		}
		if k.Current != nil {
			res.Keys = append(res.Keys, k.Key)
		} else if len(hist) > 0 {
			res.Deleted++
		}
		res.HistoryEntries += len(hist)
		if len(hist) == 0 {
			if trimmed { // the marker alone: HistoryAt reports the key trimmed
				units = append(units, s.sized(restoreUnit{key: k.Key, last: true, nextSeq: 1, trimmed: true}))
			}
			continue
		}
		for i := range hist {
			u := restoreUnit{key: k.Key, orig: hist[i].Revision, seq: int64(i + 1), entry: &hist[i]}
			if i == len(hist)-1 {
				u.last, u.cur, u.nextSeq, u.trimmed = true, k.Current, int64(len(hist)+1), trimmed
			}
			units = append(units, s.sized(u))
		}
	}
	slices.SortFunc(units, func(a, b restoreUnit) int {
		if a.orig != b.orig {
			return cmp.Compare(a.orig, b.orig)
		}
		return strings.Compare(a.key, b.key)
	})
	slices.Sort(res.Keys)
	return units
}

// sized sets u's operation and byte counts.
func (s *Store) sized(u restoreUnit) restoreUnit {
	if u.entry != nil {
		u.ops++
		u.len += len(s.histKeyPrefix(u.key)) + 16 + 20 + len(u.entry.Actor) + len(u.entry.Value)
	}
	if u.last {
		u.ops++
		u.len += len(s.markKey(u.key)) + 16
		if u.cur != nil {
			u.ops++
			u.len += len(s.kvKey(u.key)) + len(u.cur.Value)
		}
	}
	u.len += len(s.markKey(u.key)) + 8 // its comparison
	return u
}

// unitOps returns u's writes; start is the revision of the restore's
// first Txn, the trimmed revision of keys whose older history is gone.
func (s *Store) unitOps(u restoreUnit, start int64) []clientv3.Op {
	var ops []clientv3.Op
	if e := u.entry; e != nil {
		he := histEntry{time: e.Time, action: e.Action, actor: e.Actor}
		if e.Action == store.ActionPut {
			he.value = e.Value
		}
		ops = append(ops, clientv3.OpPut(s.histKey(u.key, u.seq), string(he.encode())))
	}
	if u.last {
		if u.cur != nil {
			ops = append(ops, clientv3.OpPut(s.kvKey(u.key), string(u.cur.Value)))
		}
		m := marker{nextSeq: u.nextSeq}
		if u.trimmed {
			m.trimmed = start
		}
		ops = append(ops, clientv3.OpPut(s.markKey(u.key), m.encode()))
	}
	return ops
}

// packUnits groups units into Txns of at most maxOps operations and
// about maxBytes, never two units of one key in a Txn (their entries
// would share a revision), in order. A revision's units go together
// into a Txn of their own rather than split, when they fit one.
func packUnits(units []restoreUnit, maxOps, maxBytes int) [][]restoreUnit {
	var (
		batches     [][]restoreUnit
		cur         []restoreUnit
		ops, size   int
		keysInBatch = map[string]bool{}
	)
	flush := func() {
		if len(cur) > 0 {
			batches = append(batches, cur)
		}
		cur, ops, size = nil, 0, 0
		clear(keysInBatch)
	}
	fits := func(us []restoreUnit) bool {
		o, n := ops, size
		for _, u := range us {
			if keysInBatch[u.key] {
				return false
			}
			o, n = o+u.ops, n+u.len
		}
		return o <= maxOps && n <= maxBytes
	}
	for i := 0; i < len(units); {
		j := i + 1
		for j < len(units) && units[j].orig == units[i].orig && units[i].orig != 0 {
			j++
		}
		group := units[i:j]
		if len(cur) > 0 && !fits(group) {
			flush()
		}
		for _, u := range group {
			if len(cur) > 0 && !fits([]restoreUnit{u}) {
				flush()
			}
			cur = append(cur, u)
			ops, size = ops+u.ops, size+u.len
			keysInBatch[u.key] = true
		}
		i = j
	}
	flush()
	return batches
}

// beginRestore writes the restore marker in the restore's first Txn and
// returns that Txn's revision. Without Replace the Txn requires an empty
// prefix. With Replace it also deletes every history entry and marker,
// and the keys the backup holds no value for (those beyond the first
// Txn's room are returned after the first batch, for Txns of their own).
func (s *Store) beginRestore(ctx context.Context, rev int64, keys []store.ImportKey, opts RestoreOptions) (int64, [][]string, error) {
	mark := clientv3.OpPut(s.restoreKey(), restoreMark{backupRev: rev, started: s.now()}.encode())
	if !opts.Replace {
		resp, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(s.kvPrefix), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(s.histPrefix), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(s.markPrefix), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(s.restoreKey()), "=", 0),
		).Then(mark).Else(
			clientv3.OpGet(s.restoreKey()),
			clientv3.OpGet(s.kvPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()),
			clientv3.OpGet(s.histPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return 0, nil, err
		}
		if !resp.Succeeded {
			p := strings.TrimSuffix(s.watchPrefix, "/")
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				return 0, nil, fmt.Errorf("prefix %q holds a restore %s that did not finish; restore again with Replace: %w",
					p, decodeRestoreMark(kvs[0].Value), ErrRestoreUnfinished)
			}
			return 0, nil, fmt.Errorf("prefix %q holds %d keys and %d history entries; restore into an empty prefix, or replace them: %w",
				p, resp.Responses[1].GetResponseRange().Count, resp.Responses[2].GetResponseRange().Count, ErrNotEmpty)
		}
		return resp.Header.Revision, [][]string{nil}, nil
	}
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		if k.Current != nil {
			keep[s.kvKey(k.Key)] = true
		}
	}
	room := opts.MaxTxnOps - 3 // the marker, the history and the history markers
	for {
		read, err := s.cli.Get(ctx, s.kvPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return 0, nil, err
		}
		var del []string
		for _, kv := range read.Kvs {
			if !keep[string(kv.Key)] {
				del = append(del, string(kv.Key))
			}
		}
		first := del[:min(room, len(del))]
		ops := []clientv3.Op{mark,
			clientv3.OpDelete(s.histPrefix, clientv3.WithPrefix()),
			clientv3.OpDelete(s.markPrefix, clientv3.WithPrefix()),
		}
		for _, k := range first {
			ops = append(ops, clientv3.OpDelete(k))
		}
		// No key was added under kv/ since the read: the list of keys to
		// remove is complete.
		resp, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(s.kvPrefix), "<", read.Header.Revision+1).WithPrefix(),
		).Then(ops...).Commit()
		if err != nil {
			return 0, nil, err
		}
		if resp.Succeeded {
			out := [][]string{first}
			for rest := del[len(first):]; len(rest) > 0; rest = rest[min(opts.MaxTxnOps-1, len(rest)):] {
				out = append(out, rest[:min(opts.MaxTxnOps-1, len(rest))])
			}
			return resp.Header.Revision, out, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
	}
}

// restoreTxn commits one Txn of a restore begun at revision start: cmps
// and the check that the restore marker is still the one written then.
func (s *Store) restoreTxn(ctx context.Context, start int64, cmps []clientv3.Cmp, ops []clientv3.Op) (int64, error) {
	cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.restoreKey()), "=", start))
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(s.restoreKey())).Commit()
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	why := "a key it restores was written meanwhile"
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision != start {
		why = "another restore replaced it"
	}
	return 0, fmt.Errorf("%s; the prefix holds part of the backup; restore again with Replace: %w", why, ErrRestoreUnfinished)
}
