// Package listen serves pools on local listeners: TCP addresses and Unix
// sockets set in a pool's configuration. Each connection accepted is a
// lease of the pool, relayed by package relay as a gRPC lease is, with the
// same limits, waiters, protocol awareness, stats and end reasons; the
// client side is the accepted socket itself, so a program in any language
// reaches a pool in one hop.
//
// A Host implements poolmgr.ListenerHost: the Manager opens listeners
// before a write commits (so one that cannot be bound fails the write) and
// syncs them to every change it applies.
package listen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poolplane/poolplane/internal/unixsock"
	"github.com/poolplane/poolplane/poolmgr"
)

// PoolSource gives the live pool of an id; *poolmgr.Manager implements it.
type PoolSource interface {
	Pool(id string) (*poolmgr.Pool, error)
}

// Config configures New.
type Config struct {
	// Pools finds the pool a listener serves, at each connection (a pool
	// replaced by a rollback is found anew). It may be set later with
	// SetPools (the Manager takes the Host in its configuration); until
	// then connections are refused.
	Pools PoolSource
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// TLS is the server configuration of listeners with tls set: the
	// process's certificate, with client certificates required and
	// verified (tls.RequireAndVerifyClientCert). Nil: such listeners
	// cannot be opened.
	TLS *tls.Config
	// Authorize decides whether the client with the verified certificate
	// cert may lease pool, and returns the Grant. Required with TLS.
	Authorize func(cert *x509.Certificate, pool string) (Grant, error)
	// RefuseTimeout bounds telling a client the pool turned away why:
	// reading its opening, writing the error and waiting for it to close.
	// Default 2s.
	RefuseTimeout time.Duration
}

// Grant is what Config.Authorize grants the client of a TLS listener.
type Grant struct {
	// Holder is the name its leases are listed under.
	Holder string
	// Revoked, when not nil, ends when the grant must be decided again
	// (its principal was changed or removed): the client is authorized
	// again, and its connection ends if it may no longer lease the pool.
	Revoked context.Context
	// Release, when not nil, is called once the connection ends (it gives
	// back what the grant counted, such as a principal's lease cap).
	Release func()
}

// handshakeTimeout bounds a TLS listener's handshake.
const handshakeTimeout = 10 * time.Second

// Host opens, serves and closes the listeners of every pool. Its methods
// are safe for concurrent use.
type Host struct {
	cfg    Config
	logger *slog.Logger
	source atomic.Pointer[PoolSource] // Config.Pools, or SetPools'

	// stopCtx ends acquires waiting for a connection when the host shuts
	// down.
	stopCtx context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup // accept loops, connections, relay readers and workers
	// work hands a function to an idle worker goroutine (spawn).
	work chan func()

	mu sync.Mutex // protects the fields below; never held across I/O
	// pools holds each pool's listeners in configured order, failed ones
	// included (with their error).
	pools map[string][]*listener
	// prepared holds what Prepare opened for a pool, for its next Sync.
	prepared map[string][]*listener
	conns    map[*clientConn]struct{}
	closed   bool // Shutdown was called: nothing opens again
}

var _ poolmgr.ListenerHost = (*Host)(nil)

// New returns a Host with no listeners.
func New(cfg Config) (*Host, error) {
	if cfg.TLS != nil && cfg.Authorize == nil {
		return nil, errors.New("listen: Config.Authorize is required with Config.TLS")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RefuseTimeout <= 0 {
		cfg.RefuseTimeout = 2 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	h := &Host{cfg: cfg, logger: cfg.Logger, stopCtx: ctx, stop: stop,
		pools: map[string][]*listener{}, prepared: map[string][]*listener{}, conns: map[*clientConn]struct{}{},
		work: make(chan func())}
	if cfg.Pools != nil {
		h.SetPools(cfg.Pools)
	}
	return h, nil
}

// SetPools sets where connections find their pools (Config.Pools).
func (h *Host) SetPools(p PoolSource) { h.source.Store(&p) }

// errNotServing refuses connections before SetPools.
var errNotServing = errors.New("poold is starting")

// pool returns the live pool id.
func (h *Host) pool(id string) (*poolmgr.Pool, error) {
	p := h.source.Load()
	if p == nil {
		return nil, errNotServing
	}
	return (*p).Pool(id)
}

// listener is one of a pool's listeners.
type listener struct {
	pool string
	// address is cfg.Address, which never changes: read by connections.
	address string
	// cfg is the listener's settings, replaced by Sync under Host.mu.
	cfg  poolmgr.Listener
	addr poolmgr.ListenAddr
	ln   net.Listener // nil when err is set
	// bound is the address bound; err why the listener is not open.
	bound, err string
	// tls is cfg.TLS as last synced: read by each connection.
	tls atomic.Bool

	accepted, refused atomic.Uint64
	active            atomic.Int64
	closeOnce         sync.Once
}

// close stops accepting; connections accepted go on.
func (l *listener) close() {
	l.closeOnce.Do(func() {
		if l.ln != nil {
			_ = l.ln.Close() // a Unix socket's file goes with it
		}
	})
}

// status is the listener's ListenerStatus.
func (l *listener) status() poolmgr.ListenerStatus {
	return poolmgr.ListenerStatus{Address: l.address, Bound: l.bound, Err: l.err,
		Accepted: l.accepted.Load(), Refused: l.refused.Load(), Active: int(l.active.Load())}
}

// open binds a listener for pool id.
func (h *Host) open(id string, cfg poolmgr.Listener) (*listener, error) {
	a, err := poolmgr.ParseListenAddr(cfg.Address)
	if err != nil {
		return nil, err
	}
	if cfg.TLS && h.cfg.TLS == nil {
		return nil, fmt.Errorf("listener %s has tls, and poold serves TLS listeners only with --tls-cert, --tls-key and --tls-client-ca", cfg.Address)
	}
	var ln net.Listener
	if a.Network == "unix" {
		mode := os.FileMode(cfg.Mode)
		if mode == 0 {
			mode = poolmgr.DefaultUnixMode
		}
		ln, err = unixsock.Listen(a.Addr, mode, cfg.Group)
	} else {
		var lc net.ListenConfig
		if a.Loopback {
			// A loopback peer cannot vanish unnoticed: its kernel is this
			// one, which closes its sockets when it dies. Keepalive probes
			// would find nothing, and setting them up costs four system
			// calls per connection.
			lc.KeepAlive = -1
		}
		ln, err = lc.Listen(context.Background(), "tcp", a.Addr)
	}
	if err != nil {
		return nil, err
	}
	l := &listener{pool: id, address: cfg.Address, cfg: cfg, addr: a, ln: ln, bound: ln.Addr().String()}
	if a.Network == "unix" {
		l.bound = "unix://" + a.Addr
	}
	l.tls.Store(cfg.TLS)
	return l, nil
}

// holderLocked returns the pool other than id whose listener holds the
// address key, or "".
func (h *Host) holderLocked(id, key string) string {
	if key == "" {
		return ""
	}
	for pid, ls := range h.pools {
		for _, l := range ls {
			if l.ln != nil && l.key() == key && pid != id {
				return pid
			}
		}
	}
	for pid, ls := range h.prepared {
		for _, l := range ls {
			if l.key() == key && pid != id {
				return pid
			}
		}
	}
	return ""
}

// key is the open listener's address key (see poolmgr.ListenAddr.Key), of
// the port bound when it asked for port 0.
func (l *listener) key() string {
	if l.addr.Network == "unix" {
		return l.addr.Key()
	}
	return "tcp:" + l.ln.Addr().String()
}

// findLocked returns pool id's open listener at address, or nil.
func findLocked(ls []*listener, address string) *listener {
	for _, l := range ls {
		if l.ln != nil && l.address == address {
			return l
		}
	}
	return nil
}

// Prepare opens the listeners of want that pool id does not serve yet
// (see poolmgr.ListenerHost). An address served by another pool, or one
// that cannot be bound, is a *poolmgr.ValidationError on
// listeners[i].address.
func (h *Host) Prepare(id string, want []poolmgr.Listener) (abort func(), err error) {
	var opened []*listener
	abort = func() {
		h.mu.Lock()
		var drop []*listener
		for _, l := range opened {
			if h.dropPreparedLocked(id, l) {
				drop = append(drop, l)
			}
		}
		h.mu.Unlock()
		for _, l := range drop {
			l.close()
		}
	}
	for i, w := range want {
		a, perr := poolmgr.ParseListenAddr(w.Address)
		if perr != nil {
			continue // Validate reports it
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			abort()
			return func() {}, errors.New("listen: shutting down")
		}
		held := findLocked(h.pools[id], w.Address) != nil || findLocked(h.prepared[id], w.Address) != nil
		other := h.holderLocked(id, a.Key())
		h.mu.Unlock()
		if held {
			continue
		}
		field := fmt.Sprintf("listeners[%d].address", i)
		if other != "" {
			abort()
			return func() {}, &poolmgr.ValidationError{Violations: []poolmgr.FieldViolation{{Field: field,
				Reason: fmt.Sprintf("%s is served by pool %s", w.Address, other)}}}
		}
		l, oerr := h.open(id, w)
		if oerr != nil {
			abort()
			return func() {}, &poolmgr.ValidationError{Violations: []poolmgr.FieldViolation{{Field: field,
				Reason: fmt.Sprintf("cannot open %s: %v", w.Address, oerr)}}}
		}
		h.mu.Lock()
		h.prepared[id] = append(h.prepared[id], l)
		h.mu.Unlock()
		opened = append(opened, l)
	}
	return abort, nil
}

// dropPreparedLocked removes l from pool id's prepared listeners and
// reports whether it was still there (not adopted by Sync).
func (h *Host) dropPreparedLocked(id string, l *listener) bool {
	ps := h.prepared[id]
	for i, p := range ps {
		if p == l {
			ps = append(ps[:i], ps[i+1:]...)
			if len(ps) == 0 {
				delete(h.prepared, id)
			} else {
				h.prepared[id] = ps
			}
			return true
		}
	}
	return false
}

// Sync brings pool id's listeners to want (see poolmgr.ListenerHost).
func (h *Host) Sync(id string, want []poolmgr.Listener) {
	next := make([]*listener, 0, len(want))
	var start []*listener
	for _, w := range want {
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return
		}
		if l := findLocked(h.pools[id], w.Address); l != nil {
			// Kept. A change of tls applies to the next connection; mode
			// and group to the socket file now.
			l.tls.Store(w.TLS)
			old := l.cfg
			l.cfg = w
			h.mu.Unlock()
			if l.addr.Network == "unix" && (old.Mode != w.Mode || old.Group != w.Group) {
				h.rechmod(l, w)
			}
			next = append(next, l)
			continue
		}
		if l := findLocked(h.prepared[id], w.Address); l != nil {
			h.dropPreparedLocked(id, l)
			h.mu.Unlock()
			next = append(next, l)
			start = append(start, l)
			continue
		}
		a, _ := poolmgr.ParseListenAddr(w.Address)
		other := h.holderLocked(id, a.Key())
		h.mu.Unlock()
		var l *listener
		var err error
		if other != "" {
			err = fmt.Errorf("%s is served by pool %s", w.Address, other)
		} else {
			l, err = h.open(id, w)
		}
		if err != nil {
			h.logger.Error("pool listener not opened", "pool", id, "address", w.Address, "error", err)
			next = append(next, &listener{pool: id, address: w.Address, cfg: w, err: err.Error()})
			continue
		}
		next = append(next, l)
		start = append(start, l)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		for _, l := range start {
			l.close()
		}
		return
	}
	old := h.pools[id]
	if len(next) == 0 {
		delete(h.pools, id)
	} else {
		h.pools[id] = next
	}
	h.wg.Add(len(start))
	h.mu.Unlock()
	for _, l := range old {
		if !contains(next, l) {
			l.close()
			if l.ln != nil {
				h.logger.Info("pool listener closed", "pool", id, "address", l.address)
			}
		}
	}
	for _, l := range start {
		h.logger.Info("pool listener open", "pool", id, "address", l.address, "bound", l.bound)
		go h.accept(l)
	}
}

// rechmod applies a kept Unix socket listener's new mode and group.
func (h *Host) rechmod(l *listener, cfg poolmgr.Listener) {
	mode := os.FileMode(cfg.Mode)
	if mode == 0 {
		mode = poolmgr.DefaultUnixMode
	}
	if err := unixsock.Chmod(l.addr.Addr, mode, cfg.Group); err != nil {
		h.logger.Error("pool listener mode not changed", "pool", l.pool, "address", l.address, "error", err)
	}
}

func contains(ls []*listener, l *listener) bool {
	for _, x := range ls {
		if x == l {
			return true
		}
	}
	return false
}

// Status reports pool id's listeners (see poolmgr.ListenerHost).
func (h *Host) Status(id string) []poolmgr.ListenerStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	ls := h.pools[id]
	if len(ls) == 0 {
		return nil
	}
	out := make([]poolmgr.ListenerStatus, len(ls))
	for i, l := range ls {
		out[i] = l.status()
	}
	return out
}

// Shutdown closes every listener, so no connection is accepted any more,
// and ends acquires still waiting; connections with a lease go on until
// they end or EndLeases. Idempotent.
func (h *Host) Shutdown() {
	h.mu.Lock()
	h.closed = true
	var ls []*listener
	for _, p := range h.pools {
		ls = append(ls, p...)
	}
	for _, p := range h.prepared {
		ls = append(ls, p...)
	}
	h.prepared = map[string][]*listener{}
	h.mu.Unlock()
	h.stop()
	for _, l := range ls {
		l.close()
	}
}

// EndLeases ends every connection's lease with the relay's Shutdown
// reason (the upstream connection is closed) and waits for them to go, at
// most until ctx ends: the end of a shutdown's grace period.
func (h *Host) EndLeases(ctx context.Context) {
	h.mu.Lock()
	cs := make([]*clientConn, 0, len(h.conns))
	for c := range h.conns {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.end()
	}
	donec := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(donec)
	}()
	select {
	case <-donec:
	case <-ctx.Done():
	}
}

// Wait blocks until every connection has ended and every goroutine
// exited; call it after Shutdown.
func (h *Host) Wait() { h.wg.Wait() }

// Close shuts the host down, ends every lease and waits for every
// goroutine.
func (h *Host) Close() {
	h.Shutdown()
	h.EndLeases(context.Background())
	h.wg.Wait()
}

// track registers an accepted connection; false once the host shut down.
func (h *Host) track(c *clientConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	h.wg.Add(1)
	return true
}

func (h *Host) untrack(c *clientConn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// accept runs a listener's accept loop until the listener is closed.
func (h *Host) accept(l *listener) {
	defer h.wg.Done()
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http's Server does, then go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			h.logger.Warn("pool listener accept", "pool", l.pool, "address", l.address, "error", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-h.stopCtx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		l.accepted.Add(1)
		c := &clientConn{h: h, l: l, raw: nc, nc: nc}
		if !h.track(c) {
			_ = nc.Close()
			return
		}
		l.active.Add(1)
		h.spawn(c.serve)
	}
}

// workerIdle is how long a worker goroutine waits for more work before it
// exits.
const workerIdle = 10 * time.Second

// spawn runs f on an idle worker goroutine, or on a new one. Workers serve
// connections and run relay readers one after another: a connection per
// request then costs no new goroutine, nor the growth of its stack. A
// worker exits after workerIdle without work, or when the host shuts down.
func (h *Host) spawn(f func()) {
	select {
	case h.work <- f:
	default:
		h.wg.Add(1)
		go h.worker(f)
	}
}

func (h *Host) worker(f func()) {
	defer h.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		idle.Reset(workerIdle)
		select {
		case f = <-h.work:
		case <-idle.C:
			return
		case <-h.stopCtx.Done():
			return
		}
	}
}
