// Package etcdstore is the etcd backend of the store interface that
// poolmgr declares: the method set of *store.Store (Put, Get, List,
// Snapshot, Delete, Txn, Revision, History, HistoryAt, Watch) with the
// same types, preconditions, errors and revisions, over an etcd v3
// cluster shared by several poold replicas.
//
// Layout under the configured prefix P (a bare string, no trailing
// slash needed):
//
//	P/kv/<key>                               the key's value (opaque bytes)
//	P/hist/<len(key):4 hex><key>/<seq:16 hex>   one retained version: time, action, actor, value
//	P/histmark/<key>                         the key's history bookkeeping: next seq, trimmed revision
//	P/replicas/<id>                          a live replica (see Membership)
//	P/restore                                a restore in progress or unfinished (see Store.Restore)
//
// A history entry's revision is the etcd create_revision of its own key,
// written in the same Txn as the change it records; entries are numbered
// by a per-key sequence because the revision is unknown until commit.
//
// The global revision is etcd's revision, so it also moves when anything
// outside P is written to the same cluster. A write is one etcd Txn: it
// compares the mod_revision of every key it touches (and of the key's
// history marker) with what it read, then writes the value, the history
// entry and the trimming of the history, all at one revision. A failed
// comparison re-reads and re-checks the caller's preconditions, so
// compare-and-set has exactly the semantics of package store.
//
// Limits: etcd's --max-txn-ops (default 128) bounds a Txn to about 30 ops
// (a put or delete costs one compare, the value, a history entry, the
// marker and usually one trimmed entry), and --max-request-bytes (default
// 1.5 MiB) bounds the value sizes of one Txn, lower than
// store.MaxValueSize. Raise both on the etcd cluster for large ApplyPools.
//
// All methods are safe for concurrent use.
package etcdstore

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/poolplane/poolplane/store"
)

// Defaults for zero [Config] fields.
const (
	DefaultHistoryLimit = store.DefaultHistoryLimit
	DefaultDialTimeout  = 5 * time.Second
)

// Config configures [New].
type Config struct {
	// Client is the etcd client to use. If nil, New dials Endpoints and
	// Close closes that client; a given Client is left open by Close.
	Client *clientv3.Client
	// Endpoints are the etcd members ("host:port" or URLs), used when
	// Client is nil.
	Endpoints []string
	// DialTimeout bounds the first connection when New dials, and the
	// authentication New then makes with Username. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// TLS, when New dials, is the client's TLS configuration: the CA that
	// signed the members' certificates (RootCAs; nil for the system's) and
	// a client certificate when the members require one (mTLS). With TLS
	// set every endpoint is dialed over TLS. Without it, endpoints given
	// as https:// URLs (ParseURL's etcds:// scheme) are dialed over TLS
	// verified with the system's roots, the others in plaintext.
	TLS *tls.Config
	// Username and Password authenticate to an etcd cluster with
	// authentication enabled, when New dials. They go together. Over a
	// plaintext connection the password crosses the network in clear:
	// use TLS.
	Username string
	Password string
	// Prefix is the namespace of this configuration in etcd. Required:
	// replicas that share a configuration use the same prefix.
	Prefix string
	// HistoryLimit is the number of versions kept per key. Default
	// DefaultHistoryLimit.
	HistoryLimit int
	// Now returns the time recorded in history and events. Default
	// time.Now.
	Now func() time.Time
}

// Store is a revisioned key-value store in etcd under one prefix. All
// methods are safe for concurrent use.
type Store struct {
	cli          *clientv3.Client
	ownClient    bool
	endpoints    []string    // dialed by New; nil for a given Client
	tls          *tls.Config // of the dialed client; for Ping's diagnosis
	kvPrefix     string      // P/kv/
	histPrefix   string      // P/hist/
	markPrefix   string      // P/histmark/
	watchPrefix  string      // P/
	historyLimit int
	now          func() time.Time
	restoreHook  func(txns int) // tests: called after each Txn a restore commits

	ctx    context.Context // canceled by Close: ends watchers
	cancel context.CancelFunc
	wg     sync.WaitGroup // watcher goroutines

	mu     sync.Mutex // protects following fields
	closed bool
}

// ParseURL splits an etcd store URL, etcd://host:port[,host:port]/prefix
// or etcds://host:port[,host:port]/prefix, into endpoints and prefix. The
// endpoints of etcd:// are host:port; those of etcds:// are
// https://host:port, which [New] always dials over TLS. The prefix is the
// path without its leading slash and may not be empty. Credentials in
// the URL (user:password@) are refused: they would show in argv and logs.
func ParseURL(raw string) (endpoints []string, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("etcd store url %q: %w", raw, err)
	}
	if u.Scheme != "etcd" && u.Scheme != "etcds" {
		return nil, "", fmt.Errorf("etcd store url %q: scheme %q, want etcd or etcds (TLS)", raw, u.Scheme)
	}
	if u.User != nil {
		return nil, "", fmt.Errorf("etcd store url %s: credentials do not go in the URL (give a username and a password file)", u.Redacted())
	}
	for h := range strings.SplitSeq(u.Host, ",") {
		if h == "" {
			return nil, "", fmt.Errorf("etcd store url %q: empty endpoint", raw)
		}
		if u.Scheme == "etcds" {
			h = "https://" + h
		}
		endpoints = append(endpoints, h)
	}
	prefix = strings.TrimPrefix(u.Path, "/")
	if prefix == "" {
		return nil, "", fmt.Errorf("etcd store url %q: no /prefix", raw)
	}
	return endpoints, prefix, nil
}

// New returns a Store over cfg.Client, or over a client dialed to
// cfg.Endpoints. It returns an error if cfg.Prefix is empty, if only one
// of Username and Password is set, if TLS is set with a plaintext
// (http://) endpoint, or if the dial fails. Without Username it does not
// wait for the cluster to answer; with Username it authenticates, waiting
// up to DialTimeout, and fails if the cluster refuses the credentials.
func New(cfg Config) (*Store, error) {
	if cfg.Prefix == "" {
		return nil, errors.New("etcdstore: empty prefix")
	}
	if err := checkCredentials(cfg); err != nil {
		return nil, err
	}
	if cfg.HistoryLimit <= 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cli, own := cfg.Client, false
	if cli == nil {
		var err error
		cli, err = clientv3.New(clientv3.Config{
			Endpoints:   cfg.Endpoints,
			DialTimeout: cfg.DialTimeout,
			// Keepalive detects a dead member so the client fails over.
			DialKeepAliveTime:    10 * time.Second,
			DialKeepAliveTimeout: 5 * time.Second,
			TLS:                  clientTLS(cfg),
			Username:             cfg.Username,
			Password:             cfg.Password,
			Logger:               zap.NewNop(),
		})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && len(cfg.Endpoints) > 0 {
				if d := diagnose(cfg.Endpoints[0], clientTLS(cfg)); d != "" {
					err = fmt.Errorf("%w (%s)", err, d)
				}
			}
			if cfg.Username != "" {
				return nil, fmt.Errorf("etcdstore: dial %v and authenticate as %q: %w", cfg.Endpoints, cfg.Username, err)
			}
			return nil, fmt.Errorf("etcdstore: dial %v: %w", cfg.Endpoints, err)
		}
		own = true
	}
	p := strings.TrimSuffix(cfg.Prefix, "/")
	ctx, cancel := context.WithCancel(context.Background())
	st := &Store{
		cli:          cli,
		ownClient:    own,
		kvPrefix:     p + "/kv/",
		histPrefix:   p + "/hist/",
		markPrefix:   p + "/histmark/",
		watchPrefix:  p + "/",
		historyLimit: cfg.HistoryLimit,
		now:          cfg.Now,
		ctx:          ctx,
		cancel:       cancel,
	}
	if own {
		st.endpoints, st.tls = cfg.Endpoints, clientTLS(cfg)
	}
	return st, nil
}

// checkCredentials refuses a Config whose security settings would be
// silently ignored or weakened by the etcd client.
func checkCredentials(cfg Config) error {
	if cfg.Client != nil {
		if cfg.TLS != nil || cfg.Username != "" || cfg.Password != "" {
			return errors.New("etcdstore: TLS, Username and Password configure the client New dials; set them on the given Client instead")
		}
		return nil
	}
	if cfg.Username == "" && cfg.Password != "" {
		return errors.New("etcdstore: a password without a username")
	}
	if cfg.Username != "" && cfg.Password == "" {
		return fmt.Errorf("etcdstore: username %q without a password", cfg.Username)
	}
	if cfg.TLS != nil {
		for _, ep := range cfg.Endpoints {
			if strings.HasPrefix(ep, "http://") {
				// The etcd client dials http:// endpoints in plaintext
				// even when given a TLS configuration.
				return fmt.Errorf("etcdstore: endpoint %s is plaintext (http://) but TLS is configured", ep)
			}
		}
	}
	return nil
}

// clientTLS is the TLS configuration of the client New dials: cfg.TLS,
// or TLS 1.2+ with the system's roots when an endpoint asks for TLS
// (https://), or nil for plaintext.
func clientTLS(cfg Config) *tls.Config {
	if cfg.TLS != nil {
		return cfg.TLS
	}
	for _, ep := range cfg.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			return &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	return nil
}

// Close ends every watcher (closing its channel), waits for them, and
// closes the client if New dialed it. It is idempotent. Calls made after
// Close return an error wrapping store.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if s.ownClient {
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("etcdstore: close: %w", err)
		}
	}
	return nil
}

// check returns ctx's error or store.ErrClosed, whichever applies first.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return store.ErrClosed
	}
	return nil
}

// opCtx returns a context that ends with ctx or with Close.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return c, func() { stop(); cancel() }
}

// mapErr turns an etcd call's error into the store's: ctx's own error
// stays, a call cut by Close is ErrClosed.
func (s *Store) mapErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("etcd: %w", ctx.Err())
	}
	if s.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", store.ErrClosed, err)
	}
	return fmt.Errorf("etcd: %w", err)
}

func (s *Store) kvKey(key string) string { return s.kvPrefix + key }

func (s *Store) markKey(key string) string { return s.markPrefix + key }

// histKeyPrefix is the prefix of key's history entries: the key's length
// in 4 hex digits keeps one key's entries apart from a longer key's.
func (s *Store) histKeyPrefix(key string) string {
	return fmt.Sprintf("%s%04x%s/", s.histPrefix, len(key), key)
}

func (s *Store) histKey(key string, seq int64) string {
	return fmt.Sprintf("%s%016x", s.histKeyPrefix(key), seq)
}

// keyOfHist returns the store key of a history entry's etcd key.
func (s *Store) keyOfHist(etcdKey string) (string, bool) {
	rest, ok := strings.CutPrefix(etcdKey, s.histPrefix)
	if !ok || len(rest) < 4 {
		return "", false
	}
	n, err := parseHex(rest[:4])
	if err != nil || int64(len(rest)) < 4+n+1+16 {
		return "", false
	}
	return rest[4 : 4+n], true
}

// Revision returns the current global revision (etcd's). It returns ctx's
// error if ctx is done, and store.ErrClosed after Close.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, s.kvPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, s.mapErr(ctx, err)
	}
	return resp.Header.Revision, nil
}

// Put sets key to value if expect holds, and returns the new revision. It
// has the semantics and errors of store.Store.Put.
func (s *Store) Put(ctx context.Context, key string, value []byte, expect store.Expect, actor string) (int64, error) {
	return s.Txn(ctx, []store.Op{{Kind: store.OpPut, Key: key, Value: value, Expect: expect}}, actor)
}

// Delete removes key if expect holds, and returns the new revision. It has
// the semantics and errors of store.Store.Delete.
func (s *Store) Delete(ctx context.Context, key string, expect store.Expect, actor string) (int64, error) {
	return s.Txn(ctx, []store.Op{{Kind: store.OpDelete, Key: key, Expect: expect}}, actor)
}

// Get returns key's current state. It has the errors of store.Store.Get.
func (s *Store) Get(ctx context.Context, key string) (store.KeyValue, error) {
	if err := validateKey(key); err != nil {
		return store.KeyValue{}, err
	}
	if err := s.check(ctx); err != nil {
		return store.KeyValue{}, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, s.kvKey(key))
	if err != nil {
		return store.KeyValue{}, s.mapErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KeyValue{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	return s.toKV(resp.Kvs[0]), nil
}

func (s *Store) toKV(kv *mvccpb.KeyValue) store.KeyValue {
	return store.KeyValue{
		Key:            strings.TrimPrefix(string(kv.Key), s.kvPrefix),
		Value:          append(make([]byte, 0, len(kv.Value)), kv.Value...),
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
	}
}

// List returns one page of the keys starting with prefix, sorted by key.
// It has the semantics and errors of store.Store.List; page tokens are
// this package's own.
func (s *Store) List(ctx context.Context, prefix string, pageSize int, pageToken string) ([]store.KeyValue, string, error) {
	start := s.kvKey(prefix)
	if pageToken != "" {
		after, err := decodePageToken(pageToken, prefix)
		if err != nil {
			return nil, "", err
		}
		start = s.kvKey(after) + "\x00"
	}
	if err := s.check(ctx); err != nil {
		return nil, "", err
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.kvKey(prefix))),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if pageSize > 0 {
		opts = append(opts, clientv3.WithLimit(int64(pageSize)))
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, start, opts...)
	if err != nil {
		return nil, "", s.mapErr(ctx, err)
	}
	kvs := make([]store.KeyValue, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs = append(kvs, s.toKV(kv))
	}
	if resp.More && len(kvs) > 0 {
		return kvs, encodePageToken(kvs[len(kvs)-1].Key), nil
	}
	return kvs, "", nil
}

// Snapshot returns every key starting with prefix, sorted by key, and the
// revision they reflect, read at once. Watch(ctx, rev) then delivers
// exactly the changes made after it.
func (s *Store) Snapshot(ctx context.Context, prefix string) ([]store.KeyValue, int64, error) {
	if err := s.check(ctx); err != nil {
		return nil, 0, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, s.kvKey(prefix), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, s.mapErr(ctx, err)
	}
	kvs := make([]store.KeyValue, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs = append(kvs, s.toKV(kv))
	}
	return kvs, resp.Header.Revision, nil
}

// histRef is one retained history entry as listed before a write.
type histRef struct {
	key string // etcd key
	rev int64  // the revision of the change it records
}

// keyState is what a write read about one key before its etcd Txn.
type keyState struct {
	cur     store.KeyValue
	exists  bool
	markRev int64 // mod_revision of the history marker; 0 if none
	mark    marker
	hist    []histRef // retained entries, oldest first
}

// marker is the per-key history bookkeeping.
type marker struct {
	nextSeq int64 // sequence number of the next entry
	trimmed int64 // highest revision of the key's discarded entries; 0 if none
}

func (m marker) encode() string {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(m.nextSeq))
	return string(binary.BigEndian.AppendUint64(b, uint64(m.trimmed)))
}

func decodeMarker(b []byte) marker {
	if len(b) != 16 {
		return marker{}
	}
	return marker{nextSeq: int64(binary.BigEndian.Uint64(b)), trimmed: int64(binary.BigEndian.Uint64(b[8:]))}
}

// readState reads key's value, history marker and history entry list at
// one revision, and returns that revision too.
func (s *Store) readState(ctx context.Context, key string, withValues bool) (keyState, []*mvccpb.KeyValue, int64, error) {
	histOpts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if !withValues {
		histOpts = append(histOpts, clientv3.WithKeysOnly())
	}
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.kvKey(key)),
		clientv3.OpGet(s.markKey(key)),
		clientv3.OpGet(s.histKeyPrefix(key), histOpts...),
	).Commit()
	if err != nil {
		return keyState{}, nil, 0, err
	}
	var st keyState
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		st.cur, st.exists = s.toKV(kvs[0]), true
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		st.markRev = kvs[0].ModRevision
		st.mark = decodeMarker(kvs[0].Value)
	}
	entries := resp.Responses[2].GetResponseRange().Kvs
	for _, kv := range entries {
		st.hist = append(st.hist, histRef{key: string(kv.Key), rev: kv.CreateRevision})
	}
	return st, entries, resp.Header.Revision, nil
}

// Txn applies ops atomically, all at one new revision, and returns it. It
// has the semantics and errors of store.Store.Txn.
func (s *Store) Txn(ctx context.Context, ops []store.Op, actor string) (int64, error) {
	if err := validateOps(ops, actor); err != nil {
		return 0, err
	}
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	for {
		rev, ok, err := s.tryTxn(c, ops, actor)
		var se storeErr
		if errors.As(err, &se) {
			return 0, se.err
		}
		if err != nil {
			return 0, s.mapErr(ctx, err)
		}
		if ok {
			return rev, nil
		}
		// Another writer changed one of the keys between our read and our
		// Txn: read again and re-check the preconditions. Every retry
		// means another write succeeded, so this ends.
		if err := c.Err(); err != nil {
			return 0, s.mapErr(ctx, err)
		}
	}
}

// storeErr marks a precondition failure, which Txn returns unwrapped.
type storeErr struct{ err error }

func (e storeErr) Error() string { return e.err.Error() }

// tryTxn reads the state of every key, checks the preconditions and
// commits if nothing changed meanwhile. ok is false if something did.
func (s *Store) tryTxn(ctx context.Context, ops []store.Op, actor string) (rev int64, ok bool, err error) {
	now := s.now().UTC()
	var (
		cmps []clientv3.Cmp
		then []clientv3.Op
	)
	for _, op := range ops {
		st, _, _, err := s.readState(ctx, op.Key, false)
		if err != nil {
			return 0, false, err
		}
		if err := op.Expect.Check(op.Key, st.cur, st.exists); err != nil {
			return 0, false, storeErr{err}
		}
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(s.kvKey(op.Key)), "=", st.cur.ModRevision),
			clientv3.Compare(clientv3.ModRevision(s.markKey(op.Key)), "=", st.markRev))
		entry := histEntry{time: now, actor: actor}
		switch op.Kind {
		case store.OpPut:
			then = append(then, clientv3.OpPut(s.kvKey(op.Key), string(op.Value)))
			entry.action, entry.value = store.ActionPut, op.Value
		case store.OpDelete:
			if !st.exists {
				return 0, false, storeErr{fmt.Errorf("delete %q: %w", op.Key, store.ErrNotFound)}
			}
			then = append(then, clientv3.OpDelete(s.kvKey(op.Key)))
			entry.action = store.ActionDelete
		}
		m := st.mark
		if m.nextSeq == 0 {
			m.nextSeq = 1
		}
		then = append(then, clientv3.OpPut(s.histKey(op.Key, m.nextSeq), string(entry.encode())))
		m.nextSeq++
		for n := len(st.hist) + 1; n > s.historyLimit && len(st.hist) > 0; n-- {
			then = append(then, clientv3.OpDelete(st.hist[0].key))
			m.trimmed = st.hist[0].rev
			st.hist = st.hist[1:]
		}
		then = append(then, clientv3.OpPut(s.markKey(op.Key), m.encode()))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		return 0, false, err
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// History returns the retained versions of key, oldest first. It has the
// semantics and errors of store.Store.History.
func (s *Store) History(ctx context.Context, key string) ([]store.HistoryEntry, error) {
	if err := validateKey(key); err != nil {
		return nil, err
	}
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	_, entries, _, err := s.readState(c, key, true)
	if err != nil {
		return nil, s.mapErr(ctx, err)
	}
	out := make([]store.HistoryEntry, 0, len(entries))
	for _, kv := range entries {
		e, err := decodeHistEntry(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("history of %q: %w", key, err)
		}
		out = append(out, e.toStore(kv.CreateRevision))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("history of %q: %w", key, store.ErrNotFound)
	}
	return out, nil
}

// HistoryAt returns the version of key in effect at revision rev. It has
// the semantics and errors of store.Store.HistoryAt.
func (s *Store) HistoryAt(ctx context.Context, key string, rev int64) (store.HistoryEntry, error) {
	if err := validateKey(key); err != nil {
		return store.HistoryEntry{}, err
	}
	if rev <= 0 {
		return store.HistoryEntry{}, fmt.Errorf("revision %d is not positive: %w", rev, store.ErrInvalidArgument)
	}
	if err := s.check(ctx); err != nil {
		return store.HistoryEntry{}, err
	}
	c, cancel := s.opCtx(ctx)
	defer cancel()
	st, entries, cur, err := s.readState(c, key, true)
	if err != nil {
		return store.HistoryEntry{}, s.mapErr(ctx, err)
	}
	if rev > cur {
		return store.HistoryEntry{}, fmt.Errorf("revision %d is beyond the current revision %d: %w", rev, cur, store.ErrInvalidArgument)
	}
	if len(entries) == 0 && st.markRev == 0 {
		return store.HistoryEntry{}, fmt.Errorf("history of %q: %w", key, store.ErrNotFound)
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if kv := entries[i]; kv.CreateRevision <= rev {
			e, err := decodeHistEntry(kv.Value)
			if err != nil {
				return store.HistoryEntry{}, fmt.Errorf("history of %q: %w", key, err)
			}
			return e.toStore(kv.CreateRevision), nil
		}
	}
	if st.mark.trimmed > 0 {
		oldest := st.mark.trimmed + 1
		if len(entries) > 0 {
			oldest = entries[0].CreateRevision
		}
		return store.HistoryEntry{}, fmt.Errorf("history of %q: %w", key, &store.CompactedError{Requested: rev, Oldest: oldest})
	}
	return store.HistoryEntry{}, fmt.Errorf("history of %q at revision %d: %w", key, rev, store.ErrNotFound)
}
