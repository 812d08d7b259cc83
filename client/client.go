// Package client is the Go SDK of poolplane: it leases pooled upstream
// connections from a poold server and hands them out as net.Conn values whose
// bytes travel over a gRPC stream.
//
//	c, err := client.New("127.0.0.1:7700", client.WithInsecure())
//	...
//	defer c.Close()
//	conn, err := c.Lease(ctx, "redis") // a net.Conn to a warm upstream connection
//	...
//	defer conn.Close() // releases it; the pool keeps it when it is clean
//
// Dialer adapts a pool to net/http's Transport.DialContext and go-redis's
// Options.Dialer. WatchStats and PoolStats report pool statistics.
//
// Each leased connection rides its own Lease stream. Released streams stay
// warm in a small cache per pool and replica (WithIdleStreams), so a
// lease-per-request client pays one round trip per lease and no stream
// setup. With several poold replicas, leases (not streams) take turns over
// the replicas that are up and serving.
//
// A server allows a bounded number of streams on one connection (poold's
// --max-concurrent-streams, 1024 by default), and a held lease or a warm
// stream holds one. A Client therefore starts with one gRPC connection and
// dials another when every connection it has is full: poold says its bound
// in each Lease stream's header, and until it has, a connection takes
// DefaultMaxStreamsPerConn streams (WithMaxStreamsPerConn sets a cap).
// A lease never waits silently on that bound: a new stream that waits for
// one on a ready connection moves to another connection, and any wait ends
// with the lease's context (ErrAcquireTimeout at its deadline). So one
// Client holds as many leases as the pools grant, ten thousand and more.
//
// WithTracer traces leases, waits and releases through a LeaseTracer (the
// way pgx traces queries): a tracer keeps its span in the context
// TraceLeaseStart returns. client/examples/otel, a module of its own,
// records them as OpenTelemetry spans. WithLogger logs what the Client does
// on its own to a log/slog Logger.
//
// The package imports only the generated API and gRPC.
package client

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

const (
	// DefaultIdleStreams is the default number of warm streams kept per pool.
	DefaultIdleStreams = 8
	// defaultEndedTimeout bounds the wait for the server's ended after a
	// release; a stream that misses it is discarded.
	defaultEndedTimeout = 10 * time.Second
	// DefaultReleaseTimeout is how long Conn.Close waits with no progress
	// for bytes Write accepted to reach the upstream before it gives up,
	// closes the upstream connection and reports them undelivered. It must
	// exceed a round trip to the server and the pauses of a loaded server
	// (a stop of 100 ms in a process holding 10,000 leases was enough to
	// fail a Close whose reply had overtaken the server's count of bytes
	// written).
	DefaultReleaseTimeout = time.Second
	// closeGrace bounds how long Close waits for the server to confirm the
	// releases already queued.
	closeGrace = time.Second
	// maxClientName is the server's bound on Open.client_name.
	maxClientName = 128
	// streamWindow and connWindow are the HTTP/2 flow-control windows per
	// stream and per connection: 1 MiB is far above one lease's frames in
	// flight on a LAN, 16 MiB bounds what one connection may buffer.
	streamWindow = 1 << 20
	connWindow   = 16 << 20
)

// Option configures a Client; see New.
type Option func(*options)

type options struct {
	tlsConfig      *tls.Config
	insecure       bool
	token          string
	dialOpts       []grpc.DialOption
	clientName     string
	idleStreams    int
	releaseTimeout time.Duration
	maxStreams     int
	tracer         LeaseTracer
	logger         *slog.Logger
}

// WithTLS dials the server over TLS with cfg (nil means the system roots and
// the target's host name). Add cfg.Certificates for mTLS.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tlsConfig = cfg
	}
}

// WithInsecure dials the server without transport security: for loopback
// addresses and Unix sockets, poold's default listeners.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithToken sends token on every call as "authorization: Bearer <token>".
// Over an insecure transport the token is sent in the clear; use it there
// only on loopback or a Unix socket.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithDialOptions adds gRPC dial options, applied after the SDK's own. When
// neither WithTLS nor WithInsecure is given they must set the transport
// credentials.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithClientName names this client in the server's ListLeases (at most 128
// bytes; longer names are cut). The default is "host/program:pid".
func WithClientName(name string) Option { return func(o *options) { o.clientName = name } }

// WithReleaseTimeout sets how long Conn.Close and Conn.Discard wait, with
// no progress, for bytes Write accepted to reach the upstream (default
// DefaultReleaseTimeout). Progress (any frame of the lease's stream sent or
// received, including the server's reports of bytes written) restarts it;
// when it runs out, the upstream connection is closed and Close returns an
// error matching ErrUndelivered. Raise it when the server is far away: it
// must exceed a round trip. A value <= 0 means the default.
func WithReleaseTimeout(d time.Duration) Option {
	return func(o *options) { o.releaseTimeout = d }
}

// WithIdleStreams sets how many released Lease streams are kept warm per
// pool and replica for the next lease (default DefaultIdleStreams). 0
// opens a new stream for every lease.
func WithIdleStreams(n int) Option {
	return func(o *options) {
		if n < 0 {
			n = 0
		}
		o.idleStreams = n
	}
}

// WithMaxStreamsPerConn caps the Lease streams (held leases and warm
// streams) the Client opens on one gRPC connection; a lease beyond it goes
// on another connection, dialled when every connection is full. By default
// the cap is what the server advertises (poold's --max-concurrent-streams,
// less a few streams kept for other calls), and DefaultMaxStreamsPerConn
// until a server has said. A value <= 0 means the default.
func WithMaxStreamsPerConn(n int) Option {
	return func(o *options) { o.maxStreams = max(n, 0) }
}

// Client is a connection to a poold server: a small set of gRPC
// ClientConns (one until the leases held at once need more; see the
// package documentation),
// plus the warm streams of released leases. Its methods are safe for
// concurrent use.
type Client struct {
	cc           *grpc.ClientConn // the first connection: stats calls, and the replicas seen ready
	stats        poolv1.StatsServiceClient
	dialConn     func() (*channel, error) // opens another connection
	name         string
	maxIdle      int
	endedTimeout time.Duration // overridden by tests
	// releaseTimeout bounds a Close's wait for delivery without progress.
	releaseTimeout time.Duration

	ctx    context.Context // parent of every stream; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutines of every stream

	releasing atomic.Int64  // releases queued whose ended has not arrived
	settledc  chan struct{} // size 1: nudged when releasing drops to zero

	replicas *replicaSet // the ready replicas, as the first connection's balancer sees them

	// userStreams is WithMaxStreamsPerConn's cap, 0 for none.
	userStreams int
	// stallWait is how long a new stream may wait on a ready connection
	// before the Client takes that connection to be at the server's
	// stream limit (overridden by tests).
	stallWait time.Duration

	mu     sync.Mutex // protects the following fields
	closed bool
	idle   map[idleKey][]*stream // warm streams, most recently released last
	chans  []*channel            // the connections, the first one first
	// serverStreams is the stream limit the server advertised, 0 until
	// one has.
	serverStreams int

	trace *tracer      // nil without WithTracer
	log   *slog.Logger // nil without WithLogger

	// testHookIdle, if set, is called after a stream joins the idle cache.
	testHookIdle func(pool string)
}

// idleKey names a cache of warm streams: one per pool and replica.
type idleKey struct {
	pool    string
	replica string // the replica's address; "" when the SDK's balancer is not in use
}

// New returns a Client for the poold server at target, a gRPC target such as
// "127.0.0.1:7700", "dns:///poold.internal:7700" or "unix:///run/poold.sock",
// or for several poold replicas: a comma-separated list of addresses
// ("10.0.0.1:7700,10.0.0.2:7700") or a dns:/// name with one address per
// replica.
//
// Leases and calls are spread over the replicas with gRPC client-side load
// balancing: a replica takes leases while its connection is ready and its
// gRPC health service reports SERVING (poold reports NOT_SERVING while it
// shuts down), and successive leases take turns over those replicas, each
// reusing a warm stream of its replica. A replica that is down is skipped
// until it is back. A service config passed with WithDialOptions and
// grpc.WithDefaultServiceConfig replaces the SDK's balancer; leases then
// go wherever that balancer places their streams.
//
// New does not connect: the first call does. It fails when the options are
// invalid, for example when no transport security is chosen, or when an
// address list has an empty entry.
func New(target string, opts ...Option) (*Client, error) {
	o := options{idleStreams: DefaultIdleStreams}
	for _, opt := range opts {
		opt(&o)
	}
	var dial []grpc.DialOption
	switch {
	case o.tlsConfig != nil && o.insecure:
		return nil, errors.New("client: WithTLS and WithInsecure are exclusive")
	case o.tlsConfig != nil:
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(o.tlsConfig)))
	case o.insecure:
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case len(o.dialOpts) == 0:
		return nil, errors.New("client: no transport security: use WithTLS or WithInsecure")
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{
			md:     map[string]string{"authorization": "Bearer " + o.token},
			secure: !o.insecure,
		}))
	}
	if _, _, err := parseTarget(target); err != nil {
		return nil, err
	}
	// Fixed flow-control windows, as poold's: gRPC's dynamic window (BDP
	// estimation) would add a PING and a window update to most lease
	// round trips. Options given with WithDialOptions come later and win.
	dial = append(dial, grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow))
	// gRPC reads HTTP/2 DATA frames into buffers of this pool, which does
	// not zero them (codec.go).
	dial = append(dial, experimental.WithBufferPool(recvBufs))
	dialConn := func() (*channel, error) { return newChannel(target, dial, o.dialOpts) }
	first, err := dialConn()
	if err != nil {
		return nil, err
	}
	name := o.clientName
	if name == "" {
		name = defaultClientName()
	}
	if len(name) > maxClientName {
		name = name[:maxClientName]
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		cc:             first.cc,
		stats:          poolv1.NewStatsServiceClient(first.cc),
		dialConn:       dialConn,
		name:           name,
		maxIdle:        o.idleStreams,
		endedTimeout:   defaultEndedTimeout,
		releaseTimeout: cmp.Or(max(o.releaseTimeout, 0), DefaultReleaseTimeout),
		ctx:            ctx,
		cancel:         cancel,
		settledc:       make(chan struct{}, 1),
		replicas:       first.replicas,
		userStreams:    o.maxStreams,
		stallWait:      defaultStallWait,
		idle:           make(map[idleKey][]*stream),
		chans:          []*channel{first},
		trace:          newTracer(o.tracer),
		log:            o.logger,
	}, nil
}

// parseTarget turns a comma-separated address list into a target of a
// manual resolver private to one ClientConn, which serves the list. Other
// targets are returned as they are.
func parseTarget(target string) (string, []grpc.DialOption, error) {
	if !strings.Contains(target, ",") || strings.Contains(target, "://") {
		return target, nil, nil
	}
	var addrs []resolver.Address
	for a := range strings.SplitSeq(target, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return "", nil, fmt.Errorf("client: target %q: empty address", target)
		}
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	r := manual.NewBuilderWithScheme("poolplane-replicas")
	r.InitialState(resolver.State{Addresses: addrs})
	return r.Scheme() + ":///replicas", []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

func defaultClientName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return host + "/" + filepath.Base(os.Args[0]) + ":" + strconv.Itoa(os.Getpid())
}

// bearer is per-RPC bearer-token credentials.
type bearer struct {
	md     map[string]string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return b.md, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Close ends every stream, warm or leased (their Conns then fail with
// ErrClientClosed), waits for the SDK's goroutines and closes the gRPC
// connection. It first waits, at most a second, for the server to confirm
// the releases already queued, so a Conn closed before the Client still
// returns its connection to the pool; a Conn still open is abandoned and
// its connection closed. It is idempotent; later calls return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.idle = nil
	c.mu.Unlock()
	c.awaitReleases(min(c.endedTimeout, closeGrace))
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	chans := c.chans
	c.chans = nil
	c.mu.Unlock()
	var errs []error
	for _, ch := range chans {
		errs = append(errs, ch.close())
	}
	return errors.Join(errs...)
}

// awaitReleases waits until the server has confirmed every queued release
// with its ended frame, or for d. Cancelling a stream whose release the
// server has not read yet abandons the lease: the server then closes the
// connection instead of pooling it.
func (c *Client) awaitReleases(d time.Duration) {
	if c.releasing.Load() == 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for c.releasing.Load() > 0 {
		select {
		case <-c.settledc:
		case <-t.C:
			return
		}
	}
}

// settled counts one queued release as confirmed or moot.
func (c *Client) settled() {
	if c.releasing.Add(-1) == 0 {
		nudge(c.settledc)
	}
}

// Lease leases a connection from pool ("name" or "pools/name") and returns
// it as a *Conn. It reuses a warm stream when there is one; either way a
// lease costs one round trip. ctx bounds only the wait for the connection:
// its deadline is sent as the acquire timeout, and the Conn outlives ctx.
//
// Errors match ErrPoolNotFound, ErrBacklogFull, ErrAcquireTimeout (also
// when ctx's deadline passes first), ErrUpstreamUnavailable, ErrDraining,
// ErrPermissionDenied (and ErrUpstreamNotAllowed), ErrQuotaExceeded,
// ErrReplicaFenced, ErrUnauthenticated, ErrUnavailable, ErrProtocol or
// ErrClientClosed;
// they are *Error values unless ctx was cancelled, in which case the error
// wraps ctx.Err(). Lease retries only as LeaseWith describes: after
// ErrBacklogFull or ErrUpstreamUnavailable, wait for Error.RetryAfter
// before trying again. Safe for concurrent use.
func (c *Client) Lease(ctx context.Context, pool string) (*Conn, error) {
	return c.LeaseWith(ctx, pool, nil)
}

// LeaseWith is Lease with 0-RTT data: firstWrite (which may be nil) is sent
// right behind the open frame, before the connection is granted, and the
// server writes it to the connection as soon as it has one. A request
// therefore reaches the upstream after half a round trip. firstWrite is
// copied; it counts as written only if LeaseWith succeeds.
//
// Unlike Lease, LeaseWith with data does not retry on a fresh stream when a
// warm stream turns out to be broken, since the data may have reached the
// upstream.
//
// A lease refused because the pool drains or closes on the replica that
// got it, or because that replica is fenced off etcd (POOL_DRAINING,
// POOL_CLOSED, REPLICA_FENCED: nothing was sent upstream), or,
// without data, one whose
// new stream failed with UNAVAILABLE and no poolplane reason (the replica
// is down or shutting down), is retried once on another replica when
// another is ready. A lease whose warm stream turned out to be broken is
// retried once on a new stream.
func (c *Client) LeaseWith(ctx context.Context, pool string, firstWrite []byte) (*Conn, error) {
	if t := c.trace; t != nil {
		return c.leaseTraced(ctx, t, pool, firstWrite)
	}
	return c.lease(ctx, pool, firstWrite)
}

// leaseTraced is lease with the tracer's events around it.
func (c *Client) leaseTraced(ctx context.Context, t *tracer, pool string, firstWrite []byte) (*Conn, error) {
	tctx := t.lease.TraceLeaseStart(ctx, TraceLeaseStartData{Pool: pool, FirstWrite: len(firstWrite)})
	start := time.Now()
	conn, err := c.lease(ctx, pool, firstWrite)
	if t.wait != nil {
		switch {
		case err == nil:
			t.wait.TraceLeaseWait(tctx, TraceLeaseWaitData{Pool: pool, WaitTime: conn.info.WaitTime})
		case errors.Is(err, ErrAcquireTimeout):
			t.wait.TraceLeaseWait(tctx, TraceLeaseWaitData{Pool: pool, WaitTime: time.Since(start), Err: err})
		}
	}
	var info LeaseInfo
	if err == nil {
		info = conn.info
		conn.traceRelease(tctx)
	}
	t.lease.TraceLeaseEnd(tctx, TraceLeaseEndData{Pool: pool, Info: info, Err: err})
	return conn, err
}

// lease is LeaseWith without tracing.
func (c *Client) lease(ctx context.Context, pool string, firstWrite []byte) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, leaseCtxErr(pool, err)
	}
	open := &poolv1.LeaseRequest_Open{Pool: pool, ClientName: c.name}
	if dl, ok := ctx.Deadline(); ok {
		d := time.Until(dl)
		if d <= 0 {
			return nil, acquireTimeout(pool)
		}
		open.AcquireTimeout = durationpb.New(d)
	}
	var (
		avoid                     string // the replica that failed the last try
		fresh                     bool   // the next try opens a new stream
		warmRetried, otherRetried bool
	)
	for {
		s, warm, err := c.stream(ctx, pool, avoid, fresh)
		if err != nil {
			return nil, err
		}
		fresh = false
		conn, err := s.open(ctx, open, firstWrite)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		avoid = s.replica()
		if warm && !warmRetried && firstWrite == nil && retryable(err) {
			warmRetried, fresh = true, true
			c.debug("poolplane: lease retried on a new stream: the warm stream broke", "pool", pool, "error", err)
			continue // the warm stream had died: try a new one once
		}
		if !otherRetried && otherReplica(err, firstWrite != nil) {
			otherRetried = true
			c.debug("poolplane: lease retried on another replica", "pool", pool, "replica", avoid, "error", err)
			continue // this replica is down or draining: try another once
		}
		return nil, err
	}
}

// otherReplica reports whether a lease that failed to open may be retried
// on another replica: the pool drains or closes here, or this replica is
// fenced off etcd (the lease was refused before anything reached the
// upstream), or, when no data went with the open, the stream failed with
// UNAVAILABLE and no poolplane reason.
func otherReplica(err error, sentData bool) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if errors.Is(err, ErrDraining) || errors.Is(err, ErrReplicaFenced) || e.Reason == poolv1.ErrorReason_POOL_CLOSED.String() {
		return true
	}
	return !sentData && e.Code == codes.Unavailable && e.Reason == ""
}

// retryable reports whether a lease that failed on a warm stream may be
// retried on a new one: the stream broke (no poolplane reason), the server
// did not refuse the lease.
func retryable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Reason == "" && e.Code != codes.Canceled
}

func leaseCtxErr(pool string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return acquireTimeout(pool)
	}
	return fmt.Errorf("client: lease %s: %w", pool, err)
}

// Dialer returns a dial function that leases from pool, ignoring its
// network and address arguments, for http.Transport.DialContext and
// go-redis's Options.Dialer:
//
//	tr := &http.Transport{DialContext: c.Dialer("api")}
//	rdb := redis.NewClient(&redis.Options{Dialer: c.Dialer("redis")})
//
// The pool does the upstream's TLS, so HTTP clients use http:// URLs.
//
// These clients keep their own pools of open connections, each holding a
// lease: cap them at or below the pool's max_connections
// (Transport.MaxConnsPerHost, go-redis PoolSize), or their surplus dials wait
// for a lease until the acquire timeout. go-redis v9 may hold one connection
// beyond PoolSize, so leave the pool some headroom. The returned function is
// safe for concurrent use.
func (c *Client) Dialer(pool string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		conn, err := c.Lease(ctx, pool)
		if err != nil {
			return nil, err
		}
		return conn, nil
	}
}

// stream returns a stream of pool, marked opening: a warm one (unless
// fresh) or a new one, on the replica whose turn it is, or on another than
// avoid when avoid is set and another is ready.
func (c *Client) stream(ctx context.Context, pool, avoid string, fresh bool) (s *stream, warm bool, err error) {
	replica := c.replicas.pick(avoid)
	if !fresh {
		if s := c.takeIdle(idleKey{pool, replica}); s != nil {
			return s, true, nil
		}
	}
	s, err = c.newStream(ctx, pool, replica, avoid)
	return s, false, err
}

// takeIdle pops the most recently released live stream of k and marks it
// opening, or returns nil.
func (c *Client) takeIdle(k idleKey) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		ss := c.idle[k]
		if len(ss) == 0 {
			return nil
		}
		s := ss[len(ss)-1]
		ss[len(ss)-1] = nil
		c.idle[k] = ss[:len(ss)-1]
		if s.claim() {
			return s
		}
	}
}

// putIdle caches a stream whose lease ended, or discards it when the cache
// is full or the client closed.
func (c *Client) putIdle(s *stream) {
	k := s.idleKey()
	c.mu.Lock()
	if c.closed || len(c.idle[k]) >= c.maxIdle || !s.isIdle() {
		c.mu.Unlock()
		s.fail(errDiscarded)
		return
	}
	c.idle[k] = append(c.idle[k], s)
	hook := c.testHookIdle
	c.mu.Unlock()
	if hook != nil {
		hook(s.pool)
	}
}

// removeIdle drops a dead stream from the cache.
func (c *Client) removeIdle(s *stream) {
	k := s.idleKey()
	c.mu.Lock()
	defer c.mu.Unlock()
	ss := c.idle[k]
	for i, x := range ss {
		if x == s {
			copy(ss[i:], ss[i+1:])
			ss[len(ss)-1] = nil
			c.idle[k] = ss[:len(ss)-1]
			return
		}
	}
}

// idleStreams returns the number of warm streams of pool, over every
// replica (for tests).
func (c *Client) idleStreams(pool string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, ss := range c.idle {
		if k.pool == pool {
			n += len(ss)
		}
	}
	return n
}
