package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// poolctl bench --soak DURATION runs a steady mixed load against poold for
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
// bench's own.
type soakFlags struct {
	fs       *flag.FlagSet
	duration *time.Duration
	clients  *int
	holders  *int
	interval *time.Duration
}

// addSoakFlags defines the soak flags on bench's flag set.
func addSoakFlags(fs *flag.FlagSet) *soakFlags {
	return &soakFlags{
		fs: fs,
		duration: fs.Duration("soak", 0, "soak mode: run a steady mixed load (leases, discards, cancels, client crashes, admin churn) "+
			"for `DURATION`, then report errors and leaked goroutines, fds and connections; exit 1 on a leak or an unexpected error"),
		clients:  fs.Int("soak-clients", defaultSoakClients, "soak: lease-per-request clients"),
		holders:  fs.Int("soak-holders", defaultSoakHolders, "soak: clients holding long leases"),
		interval: fs.Duration("soak-sample", defaultSoakInterval, "soak: how often to sample poold"),
	}
}

func (f *soakFlags) enabled() bool { return *f.duration != 0 }

// run validates the flags and runs the soak.
func (f *soakFlags) run(ctx context.Context, e *env, poold string, size int) error {
	cfg := soakConfig{
		duration: *f.duration, interval: *f.interval, timeout: e.g.timeout,
		clients: *f.clients, holders: *f.holders, size: size, poold: poold, output: e.g.output,
	}
	if cfg.duration < 0 || cfg.interval <= 0 || cfg.clients < 1 || cfg.clients > 1024 ||
		cfg.holders < 0 || cfg.holders > 1024 || cfg.size < 1 || cfg.size > 1<<20 {
		return usagef("bench: --soak and --soak-sample must be positive, --soak-clients 1..1024, --soak-holders 0..1024, --size 1..1048576")
	}
	if cfg.output != "table" && cfg.output != "json" {
		return usagef("bench: -o %q: want table or json", cfg.output)
	}
	cmdline := []string{"poolctl", "bench"}
	f.fs.Visit(func(fl *flag.Flag) { cmdline = append(cmdline, "--"+fl.Name+"="+fl.Value.String()) })
	cfg.command = strings.Join(cmdline, " ")
	return runSoak(ctx, cfg, e.stdout, e.stderr)
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
	cfg     soakConfig
	stderr  io.Writer
	certs   *benchCerts
	tlsConf *tls.Config
	up      *upstreamProc
	poold   *pooldProc
	cc      *grpc.ClientConn
	admin   poolv1.PoolAdminServiceClient
	stats   poolv1.StatsServiceClient
	hc      *http.Client // scrapes poold's /metrics

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

// soakReport is the result, as -o json prints it.
type soakReport struct {
	Command  string          `json:"command"`
	Time     string          `json:"time"`
	Env      benchEnvInfo    `json:"env"`
	Config   soakSettings    `json:"config"`
	ElapsedS float64         `json:"elapsed_s"`
	Activity soakActivity    `json:"activity"`
	Errors   []soakErrorKind `json:"errors"`
	// ExpectedErrors come from deliberate cancels, crashes and drains;
	// UnexpectedErrors from anything else.
	ExpectedErrors   int64 `json:"expected_errors"`
	UnexpectedErrors int64 `json:"unexpected_errors"`

	Goroutines soakTrend `json:"goroutines"`
	HeapInuse  soakTrend `json:"heap_inuse_bytes"`
	FDs        soakTrend `json:"open_fds"`
	// NonPoolFDs is open fds minus the pools' connections: what must come
	// back to its start.
	NonPoolFDs soakTrend `json:"non_pool_fds"`
	// UpstreamConns is the upstream process's open connections, from
	// /proc/PID/fd; PoolTotal the pools' open plus dialing connections.
	UpstreamConns soakTrend `json:"upstream_conns"`
	PoolTotalEnd  int       `json:"pool_total_end"`
	// InUseOpen is the leased connections after every lease was released,
	// before the load's SDK client closed (0 unless poold lost a release).
	InUseOpen int     `json:"in_use_with_client_open"`
	InUseEnd  int     `json:"in_use_end"`
	QuiesceS  float64 `json:"quiesce_s"`
	// Closes is each pool's closed connections by reason.
	Closes  map[string]map[string]uint64 `json:"closes"`
	Samples []soakSample                 `json:"samples"`
	// Leaks lists what did not come back; empty on a clean run.
	Leaks []string `json:"leaks"`
	Clean bool     `json:"clean"`
}

type soakSettings struct {
	DurationS float64 `json:"duration_s"`
	SampleS   float64 `json:"sample_s"`
	Clients   int     `json:"clients"`
	Holders   int     `json:"holders"`
	Size      int     `json:"size"`
	ChurnS    float64 `json:"churn_s"`
	MaxLo     int32   `json:"max_connections_lo"`
	MaxHi     int32   `json:"max_connections_hi"`
}

// soakActivity counts what the load did.
type soakActivity struct {
	Requests    int64 `json:"requests"`
	Leases      int64 `json:"leases"`
	Discards    int64 `json:"discards"`
	Abandons    int64 `json:"abandons"`
	Cancels     int64 `json:"cancelled_acquires"`
	Crashes     int64 `json:"client_crashes"`
	CrashLeases int64 `json:"crashed_leases"`
	Resizes     int64 `json:"resizes"`
	Reconnects  int64 `json:"reconnects"`
	Drains      int64 `json:"drains"`
}

// soakTrend is a figure at the start, its peak and its end.
type soakTrend struct {
	Start int64 `json:"start"`
	Peak  int64 `json:"peak"`
	End   int64 `json:"end"`
}

// runSoak starts the upstream and poold, creates the pools, runs the load
// for cfg.duration, quiesces and reports.
func runSoak(ctx context.Context, cfg soakConfig, stdout, stderr io.Writer) error {
	pooldPath, err := findPoold(cfg.poold)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "poolctl-soak-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	r := &soakRun{cfg: cfg, stderr: stderr, errs: map[string]*soakErrorKind{},
		hc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: cfg.timeout}}
	defer r.hc.CloseIdleConnections()
	if r.certs, err = newBenchCerts(); err != nil {
		return fmt.Errorf("bench: certificates: %w", err)
	}
	r.tlsConf = &tls.Config{RootCAs: r.certs.roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if r.up, err = startUpstream(ctx, dir, r.certs); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer r.up.stop()
	if r.poold, err = startPoold(ctx, pooldPath, filepath.Join(dir, "data"), false); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer r.poold.stop(10 * time.Second)
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

// runLoad runs the workers, the admin churn and the sampler for the soak's
// duration and waits for them.
func (r *soakRun) runLoad(ctx context.Context, start time.Time) error {
	sdk, err := client.New(r.poold.addr, client.WithInsecure(), client.WithClientName("poolctl-soak"),
		client.WithIdleStreams(r.cfg.clients+r.cfg.holders+soakCancellers+soakSideClients))
	if err != nil {
		return err
	}
	defer func() { _ = sdk.Close() }()
	// The load stops by cancellation, not by a deadline: a deadline would
	// reach poold as the acquire timeout of the leases waiting at the end,
	// and their ACQUIRE_TIMEOUT could not be told from a real one.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	stopTimer := time.AfterFunc(time.Until(start.Add(r.cfg.duration)), stop)
	defer stopTimer.Stop()
	var wg sync.WaitGroup
	spawn := func(n int, f func(ctx context.Context, id int, rng *rand.Rand)) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(lctx, i, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
			}()
		}
	}
	spawn(r.cfg.clients, func(ctx context.Context, id int, rng *rand.Rand) { r.leasePerRequest(ctx, sdk, id, rng) })
	spawn(r.cfg.holders, func(ctx context.Context, id int, rng *rand.Rand) { r.holder(ctx, sdk, id, rng) })
	spawn(soakCancellers, func(ctx context.Context, id int, rng *rand.Rand) { r.canceller(ctx, sdk, id, rng) })
	spawn(soakSideClients, func(ctx context.Context, id int, rng *rand.Rand) { r.sideClient(ctx, sdk, id, rng) })
	spawn(1, func(ctx context.Context, _ int, rng *rand.Rand) { r.crasher(ctx, rng) })
	adminErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		adminErr <- r.churn(lctx)
	}()
	sampleErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		sampleErr <- r.sampler(lctx, start)
	}()
	// A watchdog: every worker bounds its I/O by cfg.timeout, so all are
	// back by then; if not, closing the SDK client unblocks them.
	donec := make(chan struct{})
	go func() {
		wg.Wait()
		close(donec)
	}()
	select {
	case <-donec:
	case <-time.After(time.Until(start.Add(r.cfg.duration)) + 3*r.cfg.timeout):
		_ = sdk.Close()
		<-donec
		return fmt.Errorf("load still running %v after the soak's end: aborted", 3*r.cfg.timeout)
	}
	if err := errors.Join(<-adminErr, <-sampleErr); err != nil {
		return err
	}
	// Every lease was closed or discarded, and the SDK client is still
	// open: a lease poold failed to end shows here, before closing the
	// client would end it.
	r.inUseOpenErr = r.waitFor(ctx, soakSettle, func() (bool, error) {
		s, err := r.sample(ctx, start)
		r.inUseOpen = s.inUse()
		return err == nil && s.inUse() == 0, err
	})
	if r.inUseOpenErr != nil && !errors.Is(r.inUseOpenErr, errNotWithin) {
		return r.inUseOpenErr
	}
	return nil
}

// req returns a request of the configured size, distinct per worker.
func (r *soakRun) req(id int) []byte { return bytes.Repeat([]byte{'a' + byte(id%26)}, r.cfg.size) }

// roundTrip leases from pool with req as 0-RTT data, reads the echo and
// releases: Close, or Discard once in ten. Once in twenty it abandons the
// lease instead: Discard without reading the echo.
func (r *soakRun) roundTrip(ctx context.Context, sdk *client.Client, pool string, req, resp []byte, rng *rand.Rand) error {
	lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	c, err := sdk.LeaseWith(lctx, pool, req)
	cancel()
	if err != nil {
		return err
	}
	r.leases.Add(1)
	if rng.IntN(20) == 0 {
		r.abandons.Add(1)
		return c.Discard()
	}
	if err := c.SetDeadline(time.Now().Add(r.cfg.timeout)); err != nil {
		_ = c.Discard()
		return err
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		_ = c.Discard()
		return err
	}
	if !bytes.Equal(req, resp) {
		_ = c.Discard()
		return errMismatch
	}
	r.requests.Add(1)
	if rng.IntN(10) == 0 {
		r.discards.Add(1)
		return c.Discard()
	}
	return c.Close()
}

// leasePerRequest takes one lease per request from the main pool.
func (r *soakRun) leasePerRequest(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		if err := r.roundTrip(ctx, sdk, soakPoolMain, req, resp, rng); err != nil {
			if stopped(ctx, err) {
				return
			}
			r.fail("lease-per-request", false, err)
			pause(ctx, 10*time.Millisecond)
		}
	}
}

// holder holds a lease of the main pool for 100ms..2s of round trips, then
// releases it (Close, or Discard once in four) and takes another.
func (r *soakRun) holder(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+100), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
		c, err := sdk.Lease(lctx, soakPoolMain)
		cancel()
		if err != nil {
			if !stopped(ctx, err) {
				r.fail("holder", false, err)
			}
			pause(ctx, 10*time.Millisecond)
			continue
		}
		r.leases.Add(1)
		until := time.Now().Add(100*time.Millisecond + time.Duration(rng.Int64N(int64(1900*time.Millisecond))))
		ok := true
		for time.Now().Before(until) && ctx.Err() == nil {
			err := c.SetDeadline(time.Now().Add(r.cfg.timeout))
			if err == nil {
				err = echoRoundTrip(c, req, resp)
			}
			if err != nil {
				if err.Error() == errMismatch.Error() { // echoRoundTrip's own
					err = errMismatch
				}
				r.fail("holder", false, err)
				ok = false
				break
			}
			r.requests.Add(1)
			pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
		}
		if !ok || rng.IntN(4) == 0 {
			r.discards.Add(1)
			_ = c.Discard()
		} else {
			_ = c.Close()
		}
	}
}

// canceller starts leases whose acquire it cancels after 0..2ms: some are
// granted first (and used), some are cancelled while queued or opening.
func (r *soakRun) canceller(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+200), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		lctx, cancel := context.WithCancel(ctx)
		t := time.AfterFunc(time.Duration(rng.IntN(2000))*time.Microsecond, cancel)
		err := r.roundTrip(lctx, sdk, soakPoolMain, req, resp, rng)
		t.Stop()
		cancel()
		switch {
		case err == nil:
		case stopped(ctx, err):
		case errors.Is(err, context.Canceled):
			r.cancels.Add(1)
			r.fail("cancel", true, err)
		default:
			r.fail("cancel", false, err)
		}
		pause(ctx, time.Duration(rng.IntN(5))*time.Millisecond)
	}
}

// sideClient takes leases from the side pool, which churn drains and
// resumes: POOL_DRAINING is expected when a drain overlapped the lease.
func (r *soakRun) sideClient(ctx context.Context, sdk *client.Client, id int, rng *rand.Rand) {
	req, resp := r.req(id+300), make([]byte, r.cfg.size)
	for ctx.Err() == nil {
		e0 := r.sideEpoch.Load()
		err := r.roundTrip(ctx, sdk, soakPoolSide, req, resp, rng)
		if err == nil {
			pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
			continue
		}
		if stopped(ctx, err) {
			return
		}
		e1 := r.sideEpoch.Load()
		expected := errors.Is(err, client.ErrDraining) && (e0%2 == 1 || e1 != e0)
		r.fail("side-pool", expected, err)
		pause(ctx, 20*time.Millisecond)
	}
}

// crasher simulates client crashes: a fresh SDK client (its own gRPC
// connection, like another process) takes two leases, runs round trips on
// them, and is closed after 20..300ms with the leases held and requests in
// flight. poold must close those upstream connections, not reuse them.
func (r *soakRun) crasher(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		r.crashOnce(ctx, rng)
		pause(ctx, time.Duration(50+rng.IntN(150))*time.Millisecond)
	}
}

func (r *soakRun) crashOnce(ctx context.Context, rng *rand.Rand) {
	c, err := client.New(r.poold.addr, client.WithInsecure(), client.WithClientName("poolctl-soak-crash"))
	if err != nil {
		r.fail("crash", false, err)
		return
	}
	var crashed atomic.Bool
	var wg sync.WaitGroup
	defer func() {
		crashed.Store(true)
		_ = c.Close()
		wg.Wait()
	}()
	for i := range soakCrashLeases {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
		conn, err := c.Lease(lctx, soakPoolMain)
		cancel()
		if err != nil {
			if !stopped(ctx, err) {
				r.fail("crash", false, err)
			}
			return
		}
		r.leases.Add(1)
		r.crashLeases.Add(1)
		req, resp := r.req(400+i), make([]byte, r.cfg.size)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !crashed.Load() {
				err := conn.SetDeadline(time.Now().Add(r.cfg.timeout))
				if err == nil {
					err = echoRoundTrip(conn, req, resp)
				}
				if err != nil {
					if crashed.Load() {
						r.fail("crash", true, err)
					} else {
						r.fail("crash", false, err)
					}
					return
				}
				r.requests.Add(1)
			}
		}()
	}
	pause(ctx, time.Duration(20+rng.IntN(280))*time.Millisecond)
	r.crashes.Add(1)
}

// stopped reports whether err is the load's end: ctx, the load's context,
// was cancelled and err says so.
func stopped(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, context.Canceled)
}

// pause sleeps for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// churn changes the pools every churnEvery: shrink the main pool, drain
// the side pool, reconnect the main pool, resume the side pool, grow the
// main pool. It leaves both pools as created.
func (r *soakRun) churn(ctx context.Context) error {
	lo, hi, _ := r.cfg.limits()
	tick := time.NewTicker(r.cfg.churnEvery())
	defer tick.Stop()
	var errs []error
	call := func(what string, f func(context.Context) error) {
		// Admin calls outlive the load's end: the final restore must run.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.timeout)
		defer cancel()
		if err := f(rctx); err != nil {
			r.fail("admin "+what, false, err)
			if len(errs) < 3 {
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
			}
			return
		}
		r.admins.Add(1)
	}
	resize := func(n int32) {
		call("UpdatePool", func(ctx context.Context) error {
			_, err := r.admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
				Pool: &poolv1.Pool{Name: poolsPrefix + soakPoolMain,
					Limits: &poolv1.Limits{MaxConnections: n, MaxIdle: n}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits.max_connections", "limits.max_idle"}},
			})
			return err
		})
		r.resizes.Add(1)
	}
	drain := func() {
		r.sideEpoch.Add(1) // odd: draining
		call("DrainPool", func(ctx context.Context) error {
			_, err := r.admin.DrainPool(ctx, &poolv1.DrainPoolRequest{Name: poolsPrefix + soakPoolSide})
			return err
		})
		r.drains.Add(1)
	}
	resume := func() {
		call("ResumePool", func(ctx context.Context) error {
			_, err := r.admin.ResumePool(ctx, &poolv1.ResumePoolRequest{Name: poolsPrefix + soakPoolSide})
			return err
		})
		r.sideEpoch.Add(1) // even: active
	}
	draining, small := false, false
	for step := 0; ; step++ {
		select {
		case <-ctx.Done():
			if draining {
				resume()
			}
			if small {
				resize(hi)
			}
			return errors.Join(errs...)
		case <-tick.C:
		}
		switch step % 5 {
		case 0:
			resize(lo)
			small = true
		case 1:
			drain()
			draining = true
		case 2:
			call("ReconnectPool", func(ctx context.Context) error {
				_, err := r.admin.ReconnectPool(ctx, &poolv1.ReconnectPoolRequest{Name: poolsPrefix + soakPoolMain})
				return err
			})
			r.reconnects.Add(1)
		case 3:
			resume()
			draining = false
		case 4:
			resize(hi)
			small = false
		}
	}
}

// sampler samples poold every interval and prints a progress line.
func (r *soakRun) sampler(ctx context.Context, start time.Time) error {
	tick := time.NewTicker(r.cfg.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		s, err := r.sample(ctx, start)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sample: %w", err)
		}
		r.mu.Lock()
		r.samples = append(r.samples, s)
		unexpected := r.unexpectedLocked()
		r.mu.Unlock()
		main := s.Pools[soakPoolMain]
		_, _ = fmt.Fprintf(r.stderr, "bench: soak %v: %d requests, %d unexpected errors; poold goroutines %d, heap %s, fds %d; "+
			"%s total/in_use/idle %d/%d/%d; upstream conns %d, pool total %d\n",
			time.Duration(s.AtS*float64(time.Second)).Round(time.Second), r.requests.Load(), unexpected,
			s.Goroutines, fmtBytes(s.HeapInuse), s.FDs, soakPoolMain, main.Total, main.InUse, main.Idle, s.UpstreamConns, s.poolTotal())
	}
}

func (r *soakRun) unexpectedLocked() int64 {
	var n int64
	for _, k := range r.errs {
		if !k.Expected {
			n += k.Count
		}
	}
	return n
}

// sample reads poold's /metrics, both pools' stats and the upstream's open
// connections.
func (r *soakRun) sample(ctx context.Context, start time.Time) (soakSample, error) {
	if r.poold.exited() {
		return soakSample{}, r.poold.failure("exited")
	}
	s := soakSample{AtS: time.Since(start).Seconds(), Pools: map[string]soakPoolSample{}}
	m, err := r.scrape(ctx)
	if err != nil {
		return s, err
	}
	s.Goroutines, s.HeapInuse, s.FDs = int64(m["go_goroutines"]), int64(m["go_memstats_heap_inuse_bytes"]), int64(m["process_open_fds"])
	for _, p := range []string{soakPoolMain, soakPoolSide} {
		st, err := r.poolStats(ctx, p)
		if err != nil {
			return s, fmt.Errorf("pool %s stats: %w", p, err)
		}
		s.Pools[p] = soakPoolSample{Total: st.GetTotal(), InUse: st.GetInUse(), Idle: st.GetIdle(),
			Dialing: st.GetDialing(), Waiters: st.GetWaiters()}
	}
	if s.UpstreamConns, err = procConns(r.up.pid()); err != nil {
		return s, fmt.Errorf("upstream connections: %w", err)
	}
	return s, nil
}

// scrape returns poold's unlabelled metrics.
func (r *soakRun) scrape(ctx context.Context) (map[string]float64, error) {
	rctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+r.poold.metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_open_fds"} {
		if _, ok := m[name]; !ok {
			return nil, fmt.Errorf("scrape metrics: no %s", name)
		}
	}
	return m, nil
}

// parseMetrics reads the unlabelled samples of a Prometheus text
// exposition: "name value [timestamp]" lines.
func parseMetrics(rd io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		m[f[0]] = v
	}
	return m, sc.Err()
}

// procConns counts the TCP connections process pid has open: its socket
// descriptors less its listeners.
func procConns(pid int) (int, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	ents, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return 0, err
	}
	listen := map[string]bool{}
	for _, f := range []string{"/net/tcp", "/net/tcp6"} {
		b, err := os.ReadFile(dir + f)
		if err != nil {
			continue // no IPv6
		}
		for k, v := range listenInodes(b) {
			listen[k] = v
		}
	}
	n := 0
	for _, e := range ents {
		l, err := os.Readlink(dir + "/fd/" + e.Name())
		if err != nil {
			continue // closed since ReadDir
		}
		inode, ok := strings.CutPrefix(l, "socket:[")
		if !ok {
			continue
		}
		if !listen[strings.TrimSuffix(inode, "]")] {
			n++
		}
	}
	return n, nil
}

// listenInodes returns the inodes of the LISTEN sockets of a
// /proc/PID/net/tcp table.
func listenInodes(table []byte) map[string]bool {
	m := map[string]bool{}
	for i, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		if i == 0 || len(f) < 10 || f[3] != "0A" {
			continue
		}
		m[f[9]] = true
	}
	return m
}

// quiesce waits for poold to give everything back, takes the last sample
// and builds the report.
func (r *soakRun) quiesce(ctx context.Context, start time.Time) (*soakReport, error) {
	t0 := time.Now()
	rep := &soakReport{}
	var last soakSample
	// Every lease was released or its client closed: in_use must reach 0.
	inUseErr := r.waitFor(ctx, soakSettle, func() (bool, error) {
		s, err := r.sample(ctx, start)
		last = s
		return err == nil && s.inUse() == 0, err
	})
	if inUseErr != nil && !errors.Is(inUseErr, errNotWithin) {
		return nil, inUseErr // poold died, or cannot be sampled
	}
	first := r.samples[0]
	nonPool := func(s soakSample) int64 { return s.FDs - int64(s.poolTotal()) }
	back := func(s soakSample) bool {
		return s.inUse() == 0 && s.UpstreamConns <= s.poolTotal() &&
			s.Goroutines <= first.Goroutines+soakGoroutineSlack && nonPool(s) <= nonPool(first)+soakFDSlack
	}
	if inUseErr == nil {
		// Goroutines, fds and upstream connections may trail the releases.
		err := r.waitFor(ctx, soakSettle, func() (bool, error) {
			s, err := r.sample(ctx, start)
			if err == nil {
				last = s
			}
			return err == nil && back(s), err
		})
		if err != nil && !errors.Is(err, errNotWithin) {
			return nil, err
		}
	}
	rep.QuiesceS = time.Since(t0).Seconds()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, last)
	lo, hi, _ := r.cfg.limits()
	rep.Config = soakSettings{DurationS: r.cfg.duration.Seconds(), SampleS: r.cfg.interval.Seconds(), Clients: r.cfg.clients,
		Holders: r.cfg.holders, Size: r.cfg.size, ChurnS: r.cfg.churnEvery().Seconds(), MaxLo: lo, MaxHi: hi}
	rep.Activity = soakActivity{Requests: r.requests.Load(), Leases: r.leases.Load(), Discards: r.discards.Load(),
		Abandons: r.abandons.Load(), Cancels: r.cancels.Load(), Crashes: r.crashes.Load(), CrashLeases: r.crashLeases.Load(),
		Resizes: r.resizes.Load(), Reconnects: r.reconnects.Load(), Drains: r.drains.Load()}
	rep.Errors = []soakErrorKind{}
	for _, k := range r.errs {
		rep.Errors = append(rep.Errors, *k)
		if k.Expected {
			rep.ExpectedErrors += k.Count
		} else {
			rep.UnexpectedErrors += k.Count
		}
	}
	slices.SortFunc(rep.Errors, func(a, b soakErrorKind) int {
		if a.Expected != b.Expected {
			if !a.Expected {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Kind, b.Kind)
	})
	rep.Samples = slices.Clone(r.samples)
	trend := func(f func(soakSample) int64) soakTrend {
		t := soakTrend{Start: f(first), End: f(last)}
		for _, s := range rep.Samples {
			t.Peak = max(t.Peak, f(s))
		}
		return t
	}
	rep.Goroutines = trend(func(s soakSample) int64 { return s.Goroutines })
	rep.HeapInuse = trend(func(s soakSample) int64 { return s.HeapInuse })
	rep.FDs = trend(func(s soakSample) int64 { return s.FDs })
	rep.NonPoolFDs = trend(nonPool)
	rep.UpstreamConns = trend(func(s soakSample) int64 { return int64(s.UpstreamConns) })
	rep.PoolTotalEnd = last.poolTotal()
	rep.InUseEnd = last.inUse()
	rep.Closes = map[string]map[string]uint64{}
	for _, p := range []string{soakPoolMain, soakPoolSide} {
		if st, err := r.poolStats(ctx, p); err == nil {
			rep.Closes[p] = st.GetCloses()
		}
	}
	rep.InUseOpen = r.inUseOpen
	rep.Leaks = soakLeaks(first, last, inUseErr)
	if r.inUseOpenErr != nil {
		rep.Leaks = append(rep.Leaks, fmt.Sprintf("%d connections still in use %v after every lease was released (SDK client open)",
			r.inUseOpen, soakSettle))
	}
	rep.Clean = len(rep.Leaks) == 0 && rep.UnexpectedErrors == 0
	return rep, nil
}

// soakLeaks judges the last sample against the first.
func soakLeaks(first, last soakSample, inUseErr error) []string {
	leaks := []string{}
	if n := last.inUse(); n > 0 || inUseErr != nil {
		leaks = append(leaks, fmt.Sprintf("%d connections still in use %v after the load stopped", n, soakSettle))
	}
	if last.UpstreamConns > last.poolTotal() {
		leaks = append(leaks, fmt.Sprintf("upstream has %d connections open, the pools %d", last.UpstreamConns, last.poolTotal()))
	}
	if last.Goroutines > first.Goroutines+soakGoroutineSlack {
		leaks = append(leaks, fmt.Sprintf("poold goroutines %d at the end, %d at the start", last.Goroutines, first.Goroutines))
	}
	if nf, nl := first.FDs-int64(first.poolTotal()), last.FDs-int64(last.poolTotal()); nl > nf+soakFDSlack {
		leaks = append(leaks, fmt.Sprintf("poold fds other than pool connections %d at the end, %d at the start", nl, nf))
	}
	return leaks
}

func fmtBytes(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }

// write prints the report as tables or JSON.
func (rep *soakReport) write(w io.Writer, format string) error {
	if format == "json" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	var b bytes.Buffer
	rep.writeTables(&b)
	_, err := w.Write(b.Bytes())
	return err
}

func (rep *soakReport) writeTables(w io.Writer) {
	a := rep.Activity
	_, _ = fmt.Fprintf(w, "soak: %s for %v (elapsed %.1fs), %d lease-per-request clients, %d holders, %d-byte requests, "+
		"max_connections %d..%d, churn every %gs\n\n",
		rep.Command, time.Duration(rep.Config.DurationS*float64(time.Second)), rep.ElapsedS, rep.Config.Clients,
		rep.Config.Holders, rep.Config.Size, rep.Config.MaxLo, rep.Config.MaxHi, rep.Config.ChurnS)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "requests\t%d round trips, %d leases (%.0f req/s)\n", a.Requests, a.Leases, float64(a.Requests)/max(rep.ElapsedS, 1e-9))
	_, _ = fmt.Fprintf(tw, "lease ends\t%d discarded, %d abandoned unread, %d acquires cancelled, %d client crashes holding %d leases\n",
		a.Discards, a.Abandons, a.Cancels, a.Crashes, a.CrashLeases)
	_, _ = fmt.Fprintf(tw, "admin churn\t%d resizes, %d reconnects, %d drain/resume cycles\n", a.Resizes, a.Reconnects, a.Drains)
	_, _ = fmt.Fprintf(tw, "errors\t%d unexpected, %d expected\n", rep.UnexpectedErrors, rep.ExpectedErrors)
	_ = tw.Flush()
	_, _ = fmt.Fprintln(w)
	if len(rep.Errors) > 0 {
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "error kind\tcount\texample")
		for _, k := range rep.Errors {
			ex := k.Example
			if len(ex) > 100 {
				ex = ex[:100] + "..."
			}
			_, _ = fmt.Fprintf(tw, "%s\t%d\t%s\n", k.Kind, k.Count, ex)
		}
		_ = tw.Flush()
		_, _ = fmt.Fprintln(w)
	}
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintln(tw, "poold\tstart\tpeak\tend\t")
	row := func(name string, t soakTrend, f func(int64) string) {
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, f(t.Start), f(t.Peak), f(t.End))
	}
	num := func(n int64) string { return strconv.FormatInt(n, 10) }
	row("goroutines", rep.Goroutines, num)
	row("heap in use", rep.HeapInuse, fmtBytes)
	row("open fds", rep.FDs, num)
	row("fds less pool conns", rep.NonPoolFDs, num)
	row("upstream conns", rep.UpstreamConns, num)
	_ = tw.Flush()
	_, _ = fmt.Fprintf(w, "\nafter the load: in use %d with the SDK client open; after quiesce (%.1fs): in use %d, upstream conns %d, pool total %d\n",
		rep.InUseOpen, rep.QuiesceS, rep.InUseEnd, rep.UpstreamConns.End, rep.PoolTotalEnd)
	for _, p := range slices.Sorted(maps.Keys(rep.Closes)) {
		var parts []string
		for _, reason := range slices.Sorted(maps.Keys(rep.Closes[p])) {
			parts = append(parts, fmt.Sprintf("%s %d", reason, rep.Closes[p][reason]))
		}
		_, _ = fmt.Fprintf(w, "closes %s: %s\n", p, strings.Join(parts, ", "))
	}
	_, _ = fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintln(tw, "t\tgoroutines\theap\tfds\tmain total/in_use/idle\tside total/in_use/idle\tupstream conns\t")
	for _, s := range rep.Samples {
		m, sd := s.Pools[soakPoolMain], s.Pools[soakPoolSide]
		_, _ = fmt.Fprintf(tw, "%.0fs\t%d\t%s\t%d\t%d/%d/%d\t%d/%d/%d\t%d\t\n", s.AtS, s.Goroutines, fmtBytes(s.HeapInuse), s.FDs,
			m.Total, m.InUse, m.Idle, sd.Total, sd.InUse, sd.Idle, s.UpstreamConns)
	}
	_ = tw.Flush()
	_, _ = fmt.Fprintln(w)
	switch {
	case rep.Clean:
		_, _ = fmt.Fprintln(w, "verdict: clean: no leak, no unexpected error")
	default:
		for _, l := range rep.Leaks {
			_, _ = fmt.Fprintf(w, "LEAK: %s\n", l)
		}
		if rep.UnexpectedErrors > 0 {
			_, _ = fmt.Fprintf(w, "UNEXPECTED ERRORS: %d\n", rep.UnexpectedErrors)
		}
	}
}
