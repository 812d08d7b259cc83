// Package store is a small revisioned key-value store on bbolt, shaped like
// etcd's KV API so that an etcd-backed implementation can stand behind the
// same interface later.
//
// Every change gets a new global revision. Each key carries the revision
// that created it, the revision that last changed it and a version count,
// so callers can compare-and-set with [AtRevision]. The store keeps the last
// [Options.HistoryLimit] versions of every key (surviving deletes), and a
// bounded change log from which [Store.Watch] replays changes and follows
// live ones. Values are opaque bytes: the store knows nothing of what they
// encode.
//
// Every write is one bbolt read-write transaction, fsynced before the
// method returns. All methods of [Store] are safe for concurrent use.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Limits on what the store accepts. Larger keys, values or actors are
// refused with an error wrapping [ErrInvalidArgument].
const (
	MaxKeySize   = 1 << 10 // bytes in a key; keys must also be non-empty
	MaxValueSize = 4 << 20 // bytes in a value
	MaxActorSize = 1 << 10 // bytes in an actor name
)

// Defaults for zero [Options] fields.
const (
	DefaultTimeout      = time.Second
	DefaultHistoryLimit = 100
	DefaultLogLimit     = 10000
)

// schemaVersion is the on-disk layout this code writes. Open refuses files
// with a higher version. Bump it, with a migration in initSchema, whenever
// the layout changes.
const schemaVersion = 1

// Bucket and meta key names. They are part of the file format.
var (
	bucketMeta    = []byte("meta")    // schema version, current and compacted revisions
	bucketKV      = []byte("kv")      // key -> CreateRevision, ModRevision, Version, value
	bucketHistory = []byte("history") // len(key), key, revision -> history entry
	bucketLog     = []byte("log")     // revision -> the changes made at that revision

	allBuckets = [][]byte{bucketMeta, bucketKV, bucketHistory, bucketLog}

	metaSchema    = []byte("schema")    // schemaVersion, 8 bytes
	metaRevision  = []byte("revision")  // current revision, 8 bytes
	metaCompacted = []byte("compacted") // highest revision removed from the log, 8 bytes
)

// Errors returned by the store. Match them with [errors.Is]; the returned
// errors wrap them with context.
var (
	// ErrNotFound: the key does not exist (Get, Delete), or has no history
	// (History, HistoryAt).
	ErrNotFound = errors.New("store: key not found")
	// ErrExists: an [Absent] precondition failed because the key exists.
	ErrExists = errors.New("store: key already exists")
	// ErrRevisionMismatch: an [AtRevision] precondition failed. The error
	// is a *[RevisionMismatchError] carrying the revisions.
	ErrRevisionMismatch = errors.New("store: revision mismatch")
	// ErrCompacted: the requested revision is older than what the store
	// still retains (Watch, HistoryAt). The error is a *[CompactedError].
	ErrCompacted = errors.New("store: revision compacted")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
	// ErrSchema: the file was written by a newer schema version (Open).
	ErrSchema = errors.New("store: unsupported schema version")
	// ErrLocked: another process (or another Store in this process) holds
	// the file and did not release it within [Options.Timeout] (Open).
	ErrLocked = errors.New("store: file locked by another process")
	// ErrInvalidArgument: a key, value, actor, revision, op list or page
	// token is malformed or out of range.
	ErrInvalidArgument = errors.New("store: invalid argument")
)

// RevisionMismatchError is returned when an [AtRevision] precondition
// fails. It matches [ErrRevisionMismatch] with errors.Is.
type RevisionMismatchError struct {
	Key      string
	Expected int64 // the revision the caller expected
	Current  int64 // the key's ModRevision; 0 if the key does not exist
}

func (e *RevisionMismatchError) Error() string {
	return fmt.Sprintf("store: key %q: revision mismatch: expected %d, current %d", e.Key, e.Expected, e.Current)
}

// Is reports whether target is [ErrRevisionMismatch].
func (e *RevisionMismatchError) Is(target error) bool { return target == ErrRevisionMismatch }

var (
	_ error = (*RevisionMismatchError)(nil)
	_ error = (*CompactedError)(nil)
)

// CompactedError is returned when a requested revision is no longer
// retained. It matches [ErrCompacted] with errors.Is.
type CompactedError struct {
	Requested int64 // the revision asked for
	Oldest    int64 // the oldest revision still retained
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("store: revision %d compacted: oldest retained is %d", e.Requested, e.Oldest)
}

// Is reports whether target is [ErrCompacted].
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// Options configures [Open]. The zero value gives the defaults.
type Options struct {
	// Timeout bounds the wait for the file lock at Open. A second process
	// (or Store) on the same file fails with an error wrapping ErrLocked.
	// Default DefaultTimeout.
	Timeout time.Duration
	// HistoryLimit is the number of versions kept per key. Default
	// DefaultHistoryLimit.
	HistoryLimit int
	// LogLimit is the number of revisions retained in the change log that
	// Watch replays from. Default DefaultLogLimit.
	LogLimit int
	// NoSync skips fsync on commit. For tests only: a crash can lose or
	// corrupt committed data.
	NoSync bool
	// ReadOnly opens an existing file for reading only, with a shared
	// lock: the file is not created, not written, and may be open
	// read-only in other processes at once (not while one holds it
	// read-write: Open then fails with ErrLocked after Timeout). Writes
	// (Put, Delete, Txn, Import) fail. For reading a backup.
	ReadOnly bool
	// Now returns the time recorded in history and events. Default
	// time.Now.
	Now func() time.Time
}

// Store is a revisioned key-value store backed by one bbolt file. All
// methods are safe for concurrent use. Writes are serialised by bbolt;
// reads run concurrently with each other and with writes.
type Store struct {
	db           *bolt.DB
	now          func() time.Time
	historyLimit int64
	logLimit     int64

	stopc chan struct{}  // closed by Close to end watchers
	wg    sync.WaitGroup // watcher goroutines

	mu      sync.Mutex    // protects following fields
	closed  bool          // Close was called
	notifyc chan struct{} // closed and replaced after every commit
}

// Open opens (creating if needed, mode 0600) the store file at path;
// with opts.ReadOnly, an existing file for reading only.
//
// It returns an error wrapping ErrLocked if the file stays locked for
// opts.Timeout, ErrSchema if the file was written by a newer version of
// this package, and the underlying error if the file is not a bbolt
// database or cannot be read; with ReadOnly, also if the file does not
// exist or is not a store file (a bucket is missing).
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.HistoryLimit <= 0 {
		opts.HistoryLimit = DefaultHistoryLimit
	}
	if opts.LogLimit <= 0 {
		opts.LogLimit = DefaultLogLimit
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      opts.Timeout,
		NoSync:       opts.NoSync,
		ReadOnly:     opts.ReadOnly,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w: %w", path, ErrLocked, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	schemaTx := db.Update
	if opts.ReadOnly {
		schemaTx = db.View
	}
	if err := schemaTx(func(tx *bolt.Tx) error { return initSchema(tx, opts.ReadOnly) }); err != nil {
		_ = db.Close() // the schema error is the one to report
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{
		db:           db,
		now:          opts.Now,
		historyLimit: int64(opts.HistoryLimit),
		logLimit:     int64(opts.LogLimit),
		stopc:        make(chan struct{}),
		notifyc:      make(chan struct{}),
	}, nil
}

// initSchema checks the schema version and creates every bucket; if
// readOnly, it checks that every bucket exists instead.
func initSchema(tx *bolt.Tx, readOnly bool) error {
	if meta := tx.Bucket(bucketMeta); meta != nil {
		if v := meta.Get(metaSchema); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("schema version: %w", errCorrupt)
			}
			if got := btoi(v); got > schemaVersion {
				return fmt.Errorf("file schema %d, this build supports up to %d: %w", got, schemaVersion, ErrSchema)
			}
		}
	}
	if readOnly {
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("not a store file: no bucket %s: %w", name, errCorrupt)
			}
		}
		return nil
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	// Older schemas would be migrated here; version 1 is the first.
	return tx.Bucket(bucketMeta).Put(metaSchema, itob(schemaVersion))
}

// Close ends every watcher (closing its channel), waits for them and
// closes the file. It is idempotent: later calls return nil. Calls made
// after Close return an error wrapping ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stopc)
	s.mu.Unlock()
	s.wg.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// Revision returns the current global revision: the revision of the latest
// committed change, 0 for an empty store. It returns ctx's error if ctx is
// done, and ErrClosed after Close.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.view(ctx, func(tx *bolt.Tx) error {
		rev = currentRevision(tx)
		return nil
	})
	return rev, err
}

// Backup writes a consistent snapshot of the whole file to w while the
// store stays open for reads and writes, and returns the number of bytes
// written. Open can read the copy. It returns ErrClosed after Close.
//
// The snapshot is one long read transaction: writes continue meanwhile,
// but a write that must grow the file's memory map waits for it to end.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.view(context.Background(), func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		if err != nil {
			return fmt.Errorf("backup: %w", err)
		}
		return nil
	})
	return n, err
}

// view runs fn in a read transaction after checking ctx and Close.
func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return mapClosed(s.db.View(fn))
}

// check returns ctx's error or ErrClosed, whichever applies first.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return nil
}

// mapClosed turns bbolt's error for a call racing with Close into
// ErrClosed.
func mapClosed(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// broadcast wakes every watcher waiting for a commit.
func (s *Store) broadcast() {
	s.mu.Lock()
	close(s.notifyc)
	s.notifyc = make(chan struct{})
	s.mu.Unlock()
}

// commitSignal returns the channel that the next commit closes.
func (s *Store) commitSignal() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notifyc
}

func currentRevision(tx *bolt.Tx) int64 {
	if v := tx.Bucket(bucketMeta).Get(metaRevision); len(v) == 8 {
		return btoi(v)
	}
	return 0
}

func compactedRevision(tx *bolt.Tx) int64 {
	if v := tx.Bucket(bucketMeta).Get(metaCompacted); len(v) == 8 {
		return btoi(v)
	}
	return 0
}

func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("empty key: %w", ErrInvalidArgument)
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("key of %d bytes exceeds %d: %w", len(key), MaxKeySize, ErrInvalidArgument)
	}
	return nil
}

func validateValue(value []byte) error {
	if len(value) > MaxValueSize {
		return fmt.Errorf("value of %d bytes exceeds %d: %w", len(value), MaxValueSize, ErrInvalidArgument)
	}
	return nil
}

func validateActor(actor string) error {
	if len(actor) > MaxActorSize {
		return fmt.Errorf("actor of %d bytes exceeds %d: %w", len(actor), MaxActorSize, ErrInvalidArgument)
	}
	return nil
}
