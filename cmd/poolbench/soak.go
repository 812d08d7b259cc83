package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// poolbench --soak DURATION runs a steady mixed load against poold for
// DURATION and then checks that poold gave back everything it took: every
// lease, goroutine, file descriptor and upstream connection. The load mixes
// lease-per-request clients, long-held leases, discarded leases, acquires
// cancelled mid-way, client processes that "crash" (their SDK client is
// closed under live leases) and admin churn (resizes, reconnects, drains).

// Defaults of the soak mode.
const (
	defaultSoakClients  = 16
	defaultSoakHolders  = 4
	defaultSoakInterval = 10 * time.Second
	// soakPoolMain takes the load and the resize/reconnect churn;
	// soakPoolSide (TLS) is drained and resumed over and over.
	soakPoolMain = "soak-main"
	soakPoolSide = "soak-side"
	// soakCancellers, soakCrashLeases and soakSideClients size the rest
	// of the load.
	soakCancellers  = 2
	soakCrashLeases = 2
	soakSideClients = 2
	// soakSettle bounds each wait of the quiesce phase.
	soakSettle = 30 * time.Second
	// soakFDSlack and soakGoroutineSlack are how far above its start poold
	// may end (fds apart from pool connections, goroutines) and still be
	// "back near start": a closed gRPC connection or an HTTP scrape may
	// leave a short-lived goroutine or descriptor behind.
	soakFDSlack        = 4
	soakGoroutineSlack = 10
)

// soakFlags are the flags of the soak mode; --size, --poold and -o are
// the bench's own.
type soakFlags struct {
	duration *time.Duration
	clients  *int
	holders  *int
	interval *time.Duration
}

// addSoakFlags defines the soak flags on fs.
func addSoakFlags(fs *flag.FlagSet) *soakFlags {
	return &soakFlags{
		duration: fs.Duration("soak", 0, "soak mode: run a steady mixed load (leases, discards, cancels, client crashes, admin churn) "+
			"for `DURATION`, then report errors and leaked goroutines, fds and connections; exit 1 on a leak or an unexpected error"),
		clients:  fs.Int("soak-clients", defaultSoakClients, "soak: lease-per-request clients"),
		holders:  fs.Int("soak-holders", defaultSoakHolders, "soak: clients holding long leases"),
		interval: fs.Duration("soak-sample", defaultSoakInterval, "soak: how often to sample poold"),
	}
}

func (f *soakFlags) enabled() bool { return *f.duration != 0 }

// config validates the flags and returns the soak's settings; timeout and
// output are the common flags, poold and size the bench's, command the
// command line.
func (f *soakFlags) config(timeout time.Duration, output, poold string, size int, command string) (soakConfig, error) {
	cfg := soakConfig{
		duration: *f.duration, interval: *f.interval, timeout: timeout,
		clients: *f.clients, holders: *f.holders, size: size, poold: poold, output: output, command: command,
	}
	if cfg.duration < 0 || cfg.interval <= 0 || cfg.clients < 1 || cfg.clients > 1024 ||
		cfg.holders < 0 || cfg.holders > 1024 || cfg.size < 1 || cfg.size > 1<<20 {
		return cfg, usagef("bench: --soak and --soak-sample must be positive, --soak-clients 1..1024, --soak-holders 0..1024, --size 1..1048576")
	}
	if cfg.output != "table" && cfg.output != "json" {
		return cfg, usagef("bench: -o %q: want table or json", cfg.output)
	}
	return cfg, nil
}

// soakConfig is one soak run's settings.
type soakConfig struct {
	duration time.Duration
	interval time.Duration // sampling period
	timeout  time.Duration // bound on one request, admin call or acquire
	clients  int
	holders  int
	size     int
	poold    string
	output   string
	command  string
}

// soakLimits are the main pool's limits: churn moves max_connections
// between lo and hi.
func (c soakConfig) limits() (lo, hi, minIdle int32) {
	hi = int32(c.clients + c.holders + soakCancellers + soakCrashLeases + 4)
	lo = max(int32(c.holders+soakCancellers+soakCrashLeases+2), hi/2)
	minIdle = min(4, lo)
	return lo, hi, minIdle
}

// churnEvery is the admin churn period: a tenth of a second per 2s of soak,
// at most one second, so short runs churn too.
func (c soakConfig) churnEvery() time.Duration {
	return min(time.Second, max(50*time.Millisecond, c.duration/20))
}

// soakRun is one soak: the processes, the admin connection and the counts.
type soakRun struct {
	procs
	cfg    soakConfig
	stderr io.Writer
	cc     *grpc.ClientConn
	admin  poolv1.PoolAdminServiceClient
	stats  poolv1.StatsServiceClient
	hc     *http.Client // scrapes poold's /metrics

	// sideEpoch counts the side pool's drain transitions: odd while
	// draining (or about to be). A POOL_DRAINING error is expected when
	// the pool was draining, or changed state, during the lease.
	sideEpoch atomic.Int64

	requests, leases                    atomic.Int64
	discards, abandons, cancels         atomic.Int64
	crashes, crashLeases                atomic.Int64
	resizes, reconnects, drains, admins atomic.Int64

	// inUseOpen is the pools' leased connections once the load stopped,
	// with its SDK client still open; inUseOpenErr says whether it reached 0.
	inUseOpen    int
	inUseOpenErr error

	mu      sync.Mutex // protects errs and samples
	errs    map[string]*soakErrorKind
	samples []soakSample
}

// soakErrorKind counts the errors of one kind.
type soakErrorKind struct {
	Kind     string `json:"kind"`
	Expected bool   `json:"expected"`
	Count    int64  `json:"count"`
	Example  string `json:"example"`
}

// soakSample is one look at poold and the upstream.
type soakSample struct {
	AtS           float64                   `json:"at_s"`
	Goroutines    int64                     `json:"goroutines"`
	HeapInuse     int64                     `json:"heap_inuse_bytes"`
	FDs           int64                     `json:"open_fds"`
	Pools         map[string]soakPoolSample `json:"pools"`
	UpstreamConns int                       `json:"upstream_conns"`
}

// soakPoolSample is a pool's gauges.
type soakPoolSample struct {
	Total   int32 `json:"total"`
	InUse   int32 `json:"in_use"`
	Idle    int32 `json:"idle"`
	Dialing int32 `json:"dialing"`
	Waiters int32 `json:"waiters"`
}

// poolTotal is every pool's open plus dialing connections: the most the
// upstream may see.
func (s soakSample) poolTotal() int {
	n := 0
	for _, p := range s.Pools {
		n += int(p.Total + p.Dialing)
	}
	return n
}

func (s soakSample) inUse() int {
	n := 0
	for _, p := range s.Pools {
		n += int(p.InUse)
	}
	return n
}

// runSoak starts the upstream and poold, creates the pools, runs the load
// for cfg.duration, quiesces and reports.
func runSoak(ctx context.Context, cfg soakConfig, stdout, stderr io.Writer) error {
	pooldPath, err := findPoold(cfg.poold)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "poolbench-soak-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	r := &soakRun{cfg: cfg, stderr: stderr, errs: map[string]*soakErrorKind{},
		hc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: cfg.timeout}}
	defer r.hc.CloseIdleConnections()
	defer r.stop()
	if err := r.start(ctx, dir, pooldPath, false); err != nil {
		return err
	}
	if r.poold.metricsAddr == "" {
		return errors.New("bench: --soak: poold reported no metrics listener")
	}
	if r.cc, err = grpc.NewClient(r.poold.addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	defer func() { _ = r.cc.Close() }()
	r.admin = poolv1.NewPoolAdminServiceClient(r.cc)
	r.stats = poolv1.NewStatsServiceClient(r.cc)
	if err := r.createPools(ctx); err != nil {
		return err
	}
	lo, hi, _ := cfg.limits()
	_, _ = fmt.Fprintf(stderr, "bench: soak for %v: %d lease-per-request clients, %d holders, %d cancellers, 1 crasher, %d side-pool clients; "+
		"max_connections %d..%d, churn every %v; upstream pid %d, poold pid %d\n",
		cfg.duration, cfg.clients, cfg.holders, soakCancellers, soakSideClients, lo, hi, cfg.churnEvery(), r.up.pid(), r.poold.pid())

	start := time.Now()
	first, err := r.sample(ctx, start)
	if err != nil {
		return fmt.Errorf("bench: first sample: %w", err)
	}
	r.samples = append(r.samples, first)

	loadErr := r.runLoad(ctx, start)
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return err
	}
	if loadErr != nil {
		return fmt.Errorf("bench: soak: %w", loadErr)
	}
	rep, err := r.quiesce(ctx, start)
	if err != nil {
		return fmt.Errorf("bench: soak: %w", err)
	}
	rep.Command = cfg.command
	rep.Time = time.Now().UTC().Format(time.RFC3339)
	rep.Env = benchEnv(pooldPath, "")
	rep.ElapsedS = elapsed.Seconds()
	if err := rep.write(stdout, cfg.output); err != nil {
		return err
	}
	switch {
	case len(rep.Leaks) > 0 && rep.UnexpectedErrors > 0:
		return fmt.Errorf("bench: soak: %d unexpected errors and leaks: %s", rep.UnexpectedErrors, strings.Join(rep.Leaks, "; "))
	case len(rep.Leaks) > 0:
		return fmt.Errorf("bench: soak: leaks: %s", strings.Join(rep.Leaks, "; "))
	case rep.UnexpectedErrors > 0:
		return fmt.Errorf("bench: soak: %d unexpected errors", rep.UnexpectedErrors)
	case rep.Activity.Requests == 0:
		return errors.New("bench: soak: no request succeeded")
	}
	return nil
}

// createPools creates the main (TCP) and side (TLS) pools and waits for
// their min_idle connections.
func (r *soakRun) createPools(ctx context.Context) error {
	_, hi, minIdle := r.cfg.limits()
	pools := []*poolv1.CreatePoolRequest{
		{PoolId: soakPoolMain, Pool: &poolv1.Pool{Endpoints: []string{r.up.tcpAddr},
			Limits: &poolv1.Limits{MaxConnections: hi, MinIdle: minIdle, MaxIdle: hi}}},
		{PoolId: soakPoolSide, Pool: &poolv1.Pool{Endpoints: []string{r.up.tlsAddr},
			Limits: &poolv1.Limits{MaxConnections: 8, MinIdle: 2, MaxIdle: 8},
			Tls:    &poolv1.UpstreamTLS{Enabled: true, ServerName: "localhost", CaPem: string(r.certs.caPEM)}}},
	}
	for _, req := range pools {
		rctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
		_, err := r.admin.CreatePool(rctx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("bench: create pool %s: %w", req.PoolId, err)
		}
	}
	for _, req := range pools {
		if err := r.waitFor(ctx, r.cfg.timeout, func() (bool, error) {
			st, err := r.poolStats(ctx, req.PoolId)
			if err != nil {
				return false, err
			}
			return st.GetIdle() >= req.Pool.Limits.MinIdle, nil
		}); err != nil {
			return fmt.Errorf("bench: pool %s never held min_idle connections: %w", req.PoolId, err)
		}
	}
	return nil
}

func (r *soakRun) poolStats(ctx context.Context, pool string) (*poolv1.PoolStats, error) {
	rctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	defer cancel()
	return r.stats.GetPoolStats(rctx, &poolv1.GetPoolStatsRequest{Name: poolsPrefix + pool})
}

// errNotWithin is waitFor's timeout.
var errNotWithin = errors.New("not within")

// waitFor polls cond every 50ms until it holds, fails, or d passes.
func (r *soakRun) waitFor(ctx context.Context, d time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w %v", errNotWithin, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fail counts an error of activity; expected errors come from the load's
// own cancels, crashes and drains.
func (r *soakRun) fail(activity string, expected bool, err error) {
	kind := activity + ": " + errClass(err)
	if expected {
		kind += " (expected)"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.errs[kind]
	if k == nil {
		msg := err.Error()
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		k = &soakErrorKind{Kind: kind, Expected: expected, Example: msg}
		r.errs[kind] = k
	}
	k.Count++
}

// errMismatch is a response that differs from its request.
var errMismatch = errors.New("response differs from request")

// errClass names the kind of err: its poolplane reason or sentinel.
func errClass(err error) string {
	var ce *client.Error
	switch {
	case errors.Is(err, errMismatch):
		return "response mismatch"
	case errors.Is(err, client.ErrDraining):
		return "POOL_DRAINING"
	case errors.Is(err, client.ErrBacklogFull):
		return "BACKLOG_FULL"
	case errors.Is(err, client.ErrAcquireTimeout):
		return "ACQUIRE_TIMEOUT"
	case errors.Is(err, client.ErrUpstreamUnavailable):
		return "UPSTREAM_UNAVAILABLE"
	case errors.Is(err, client.ErrPoolNotFound):
		return "POOL_NOT_FOUND"
	case errors.Is(err, client.ErrProtocol):
		return "PROTOCOL_VIOLATION"
	case errors.Is(err, client.ErrClientClosed):
		return "client closed"
	case errors.Is(err, client.ErrLeaseEnded):
		return "lease ended"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, net.ErrClosed):
		return "use of closed conn"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.As(err, &ce):
		return strings.TrimSpace(ce.Code.String() + " " + ce.Reason)
	}
	return "other"
}
