package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// Defaults of the bench.
const (
	defaultBenchRounds   = 5
	defaultBenchDuration = 2 * time.Second
	defaultBenchWarmup   = 300 * time.Millisecond
	defaultBenchClients  = "1,32"
	defaultBenchSize     = 64
	defaultBenchMaxReq   = 1_000_000
	// benchBulkChunk is the write size of the bulk cases.
	benchBulkChunk = 32 << 10
	// benchPoolTCP and benchPoolTLS are the pools the bench creates.
	benchPoolTCP = "bench-tcp"
	benchPoolTLS = "bench-tls"
)

// benchConfig is one bench run's settings.
type benchConfig struct {
	rounds      int
	duration    time.Duration // per cell per round
	warmup      time.Duration // per cell, once, before the first round
	timeout     time.Duration // bound on one request beyond the cell's end
	clients     []int
	size        int
	maxRequests int // per cell per round
	cases       []string
	poold       string
	maxProcs    int // poold's --max-procs; 0: its default
	haproxy     string
	reportDir   string
	profileDir  string
	output      string
	command     string // the command line, for the report
}

// benchFlags are the flags of the bench; --size and --poold also serve the
// soak.
type benchFlags struct {
	rounds   *int
	duration *time.Duration
	warmup   *time.Duration
	clients  *string
	size     *int
	maxReq   *int
	cases    *string
	poold    *string
	maxProcs *int
	haproxy  *string
	report   *string
	profile  *string
}

// addBenchFlags defines the bench's flags on fs.
func addBenchFlags(fs *flag.FlagSet) *benchFlags {
	return &benchFlags{
		rounds:   fs.Int("rounds", defaultBenchRounds, "rounds; each runs every case once, in rotating order"),
		duration: fs.Duration("duration", defaultBenchDuration, "how long each case runs in each round"),
		warmup:   fs.Duration("warmup", defaultBenchWarmup, "how long each case runs once, unmeasured, before the first round"),
		clients:  fs.String("clients", defaultBenchClients, "comma-separated `LIST` of concurrent client counts"),
		size:     fs.Int("size", defaultBenchSize, "request and response size in `BYTES`"),
		maxReq:   fs.Int("max-requests", defaultBenchMaxReq, "bound on the requests of one case in one round"),
		cases: fs.String("cases", "", "comma-separated case names or prefixes to run (default: all): "+
			"tcp|tls/new-conn, tcp|tls/direct, tcp|tls/lease-per-req, tcp|tls/lease-held, tcp/haproxy, bulk/direct|lease|haproxy"),
		poold: fs.String("poold", "", "poold binary `PATH` (default: poold next to poolbench, else on PATH)"),
		maxProcs: fs.Int("max-procs", 0, "poold's --max-procs `N`: most threads running its Go code at once "+
			"(default 0: poold's default, one per CPU)"),
		haproxy: fs.String("haproxy", "haproxy", `haproxy binary (PATH or name); "off" skips the HAProxy cases`),
		report:  fs.String("report", "", "write report.md and latency.png to `DIR`"),
		profile: fs.String("profile", "", "write CPU and allocation profiles of poold and of the bench client to `DIR`"),
	}
}

// config validates the flags and returns the run's settings; timeout and
// output are the common flags, command the command line.
func (f *benchFlags) config(timeout time.Duration, output, command string) (benchConfig, error) {
	cfg := benchConfig{
		rounds: *f.rounds, duration: *f.duration, warmup: *f.warmup, timeout: timeout,
		size: *f.size, maxRequests: *f.maxReq, poold: *f.poold, maxProcs: *f.maxProcs, haproxy: *f.haproxy,
		reportDir: *f.report, profileDir: *f.profile, output: output, command: command,
	}
	if cfg.rounds < 1 || cfg.duration <= 0 || cfg.warmup < 0 || cfg.size < 1 || cfg.size > 1<<20 || cfg.maxRequests < 1 || cfg.maxProcs < 0 {
		return cfg, usagef("bench: --rounds, --duration, --size (1..1048576) and --max-requests must be positive, --warmup and --max-procs not negative")
	}
	if output != "table" && output != "json" {
		return cfg, usagef("bench: -o %q: want table or json", output)
	}
	for s := range strings.SplitSeq(*f.clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 1024 {
			return cfg, usagef("bench: --clients %q: want a list of counts in 1..1024", *f.clients)
		}
		if !slices.Contains(cfg.clients, n) {
			cfg.clients = append(cfg.clients, n)
		}
	}
	slices.Sort(cfg.clients)
	if *f.cases != "" {
		for s := range strings.SplitSeq(*f.cases, ",") {
			if s = strings.TrimSpace(s); s != "" {
				cfg.cases = append(cfg.cases, s)
			}
		}
	}
	return cfg, nil
}

// bench is one run: the processes, the pools and the SDK client.
type bench struct {
	procs
	cfg    benchConfig
	stderr io.Writer
	hap    *haproxyProc
	sdk    *client.Client
	notes  []string
}

// cell is one case at one client count.
type cell struct {
	c       *benchCase
	clients int
}

func (c cell) String() string { return fmt.Sprintf("%s c=%d", c.c.name, c.clients) }

// cellResult is one cell's measurement in one round.
type cellResult struct {
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
	ElapsedS   float64 `json:"elapsed_s"`
	P50US      float64 `json:"p50_us,omitempty"`
	P99US      float64 `json:"p99_us,omitempty"`
	RPS        float64 `json:"rps,omitempty"`
	MiBps      float64 `json:"mib_per_s,omitempty"`
	// ProxyCPUUS is the proxy's CPU time per request (per MiB for bulk
	// cases), in microseconds.
	ProxyCPUUS  float64 `json:"proxy_cpu_us_per_op,omitempty"`
	ClientCPUUS float64 `json:"client_cpu_us_per_op"`
}

// runBench starts the processes, runs the rounds and writes the results.
func runBench(ctx context.Context, cfg benchConfig, stdout, stderr io.Writer) (err error) {
	pooldPath, err := findPoold(cfg.poold)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "poolbench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()

	b := &bench{cfg: cfg, stderr: stderr}
	defer b.stop()
	b.maxProcs = cfg.maxProcs
	if err := b.start(ctx, dir, pooldPath, cfg.profileDir != ""); err != nil {
		return err
	}
	hapVersion := ""
	if path, note := findHAProxy(cfg.haproxy); path != "" {
		if b.hap, err = startHAProxy(ctx, path, dir, b.up.tcpAddr); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer b.hap.stop(5 * time.Second)
		hapVersion = b.hap.version
	} else {
		b.notes = append(b.notes, note)
	}
	if err := b.createPools(ctx); err != nil {
		return err
	}
	b.sdk, err = client.New(b.poold.addr, client.WithInsecure(), client.WithClientName("poolbench"),
		client.WithIdleStreams(2*slices.Max(cfg.clients)))
	if err != nil {
		return err
	}
	defer func() { _ = b.sdk.Close() }()

	cells, err := b.cells()
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(stderr, "bench: %d cases x %d rounds x %v; upstream pid %d, poold pid %d (%s)%s\n",
		len(cells), cfg.rounds, cfg.duration, b.up.pid(), b.poold.pid(), procsNote(cfg.maxProcs), b.hapPID())
	if cfg.warmup > 0 {
		for _, c := range cells {
			if _, err := b.runCell(ctx, c, cfg.warmup); err != nil {
				return fmt.Errorf("bench: warm-up %s: %w", c, err)
			}
		}
	}
	stopProfiles, err := b.startProfiles(ctx, len(cells))
	if err != nil {
		return err
	}
	results := make(map[string][]cellResult, len(cells))
	for r := range cfg.rounds {
		start := time.Now()
		for i := range cells {
			c := cells[(i+r)%len(cells)] // rotate the order round by round
			res, err := b.runCell(ctx, c, cfg.duration)
			if err != nil {
				_ = stopProfiles()
				return fmt.Errorf("bench: round %d, %s: %w", r+1, c, err)
			}
			results[c.String()] = append(results[c.String()], res)
		}
		_, _ = fmt.Fprintf(stderr, "bench: round %d/%d done in %v\n", r+1, cfg.rounds, time.Since(start).Round(time.Millisecond))
	}
	if err := stopProfiles(); err != nil {
		return err
	}

	rep := b.summarize(cells, results, pooldPath, hapVersion)
	if err := rep.write(stdout, cfg.output); err != nil {
		return err
	}
	if cfg.reportDir != "" {
		if err := rep.writeReport(cfg.reportDir); err != nil {
			return fmt.Errorf("bench: --report: %w", err)
		}
		_, _ = fmt.Fprintf(stderr, "bench: wrote %s and %s\n", filepath.Join(cfg.reportDir, "report.md"), filepath.Join(cfg.reportDir, "latency.png"))
	}
	if rep.Errors > 0 {
		return fmt.Errorf("bench: %d requests failed", rep.Errors)
	}
	return nil
}

func (b *bench) hapPID() string {
	if b.hap == nil {
		return ""
	}
	return fmt.Sprintf(", haproxy pid %d", b.hap.pid())
}

// cells lists the cells to run: every available case selected by --cases,
// request/response ones at each client count, bulk ones once.
func (b *bench) cells() ([]cell, error) {
	var cells []cell
	matched := make([]bool, len(b.cfg.cases))
	for _, c := range benchCases() {
		sel := len(b.cfg.cases) == 0
		for i, f := range b.cfg.cases {
			if c.name == f || strings.HasPrefix(c.name, strings.TrimSuffix(f, "/")+"/") || strings.HasSuffix(c.name, "/"+f) {
				sel, matched[i] = true, true
			}
		}
		if !sel || (c.proxy == "haproxy" && b.hap == nil) {
			continue
		}
		if c.bulk() {
			cells = append(cells, cell{c: c, clients: 1})
			continue
		}
		for _, n := range b.cfg.clients {
			cells = append(cells, cell{c: c, clients: n})
		}
	}
	for i, ok := range matched {
		if !ok {
			return nil, usagef("bench: --cases %q matches no case", b.cfg.cases[i])
		}
	}
	if len(cells) == 0 {
		return nil, errors.New("bench: no case to run")
	}
	return cells, nil
}

// createPools creates the TCP and TLS pools through the admin API and waits
// until they hold enough idle connections for the largest client count.
func (b *bench) createPools(ctx context.Context) error {
	cc, err := grpc.NewClient(b.poold.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = cc.Close() }()
	admin := poolv1.NewPoolAdminServiceClient(cc)
	stats := poolv1.NewStatsServiceClient(cc)
	n := int32(slices.Max(b.cfg.clients))
	limits := &poolv1.Limits{MaxConnections: 2 * n, MinIdle: n, MaxIdle: 2 * n}
	pools := []*poolv1.CreatePoolRequest{
		{PoolId: benchPoolTCP, Pool: &poolv1.Pool{Endpoints: []string{b.up.tcpAddr}, Limits: limits}},
		{PoolId: benchPoolTLS, Pool: &poolv1.Pool{Endpoints: []string{b.up.tlsAddr}, Limits: limits,
			Tls: &poolv1.UpstreamTLS{Enabled: true, ServerName: "localhost", CaPem: string(b.certs.caPEM)}}},
	}
	for _, req := range pools {
		rctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
		_, err := admin.CreatePool(rctx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("bench: create pool %s: %w", req.PoolId, err)
		}
	}
	deadline := time.Now().Add(b.cfg.timeout)
	for _, req := range pools {
		for {
			rctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
			st, err := stats.GetPoolStats(rctx, &poolv1.GetPoolStatsRequest{Name: poolsPrefix + req.PoolId})
			cancel()
			if err != nil {
				return fmt.Errorf("bench: pool %s stats: %w", req.PoolId, err)
			}
			if st.GetIdle() >= n {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("bench: pool %s has %d idle connections after %v, want %d (last dial error: %q)",
					req.PoolId, st.GetIdle(), b.cfg.timeout, n, st.GetLastDialError())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// proxyCPU returns the CPU time used so far by the proxy of c, or 0.
func (b *bench) proxyCPU(c *benchCase) (time.Duration, error) {
	var p *child
	switch c.proxy {
	case "poold":
		p = b.poold.child
	case "haproxy":
		p = b.hap.child
	default:
		return 0, nil
	}
	if p.exited() {
		return 0, p.failure("exited")
	}
	return procCPU(p.pid())
}

// runCell runs one cell for d and measures it.
func (b *bench) runCell(ctx context.Context, c cell, d time.Duration) (cellResult, error) {
	if err := ctx.Err(); err != nil {
		return cellResult{}, err
	}
	if c.c.bulk() {
		return b.runBulk(ctx, c, d)
	}
	// Every I/O of the cell ends by this deadline; a request still pending
	// after it has failed.
	deadline := time.Now().Add(d + b.cfg.timeout)
	workers := make([]rrWorker, 0, c.clients)
	defer func() {
		for _, w := range workers {
			w.close()
		}
	}()
	for range c.clients {
		w, err := c.c.newWorker(b, deadline)
		if err != nil {
			return cellResult{}, fmt.Errorf("set up client: %w", err)
		}
		workers = append(workers, w)
	}
	perWorker := max(1, b.cfg.maxRequests/c.clients)
	var (
		stop     atomic.Bool
		errCount atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
		samples  = make([][]time.Duration, c.clients)
	)
	cpu0, err := b.proxyCPU(c.c)
	if err != nil {
		return cellResult{}, err
	}
	self0, _ := procCPU(0)
	start := time.Now()
	stopTimer := time.AfterFunc(d, func() { stop.Store(true) })
	defer stopTimer.Stop()
	watchdog := time.AfterFunc(d+b.cfg.timeout, func() {
		stop.Store(true)
		for _, w := range workers {
			w.abort()
		}
	})
	defer watchdog.Stop()
	stopCtx := context.AfterFunc(ctx, func() { stop.Store(true) })
	defer stopCtx()
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := bytes.Repeat([]byte{'a' + byte(i%26)}, b.cfg.size)
			resp := make([]byte, b.cfg.size)
			lat := make([]time.Duration, 0, 4096)
			errs := 0
			for n := 0; n < perWorker && !stop.Load(); n++ {
				t0 := time.Now()
				err := w.roundTrip(req, resp)
				if err != nil {
					errCount.Add(1)
					errOnce.Do(func() { firstErr = err })
					if errs++; errs >= 10 {
						break
					}
					if w.persistent() {
						break // its connection is broken
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			samples[i] = lat
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if !watchdog.Stop() {
		return cellResult{}, fmt.Errorf("requests still pending %v after the case's end: aborted", b.cfg.timeout)
	}
	settleCPU()
	cpu1, err := b.proxyCPU(c.c)
	if err != nil {
		return cellResult{}, err
	}
	self1, _ := procCPU(0)
	all := slices.Concat(samples...)
	slices.Sort(all)
	res := cellResult{Requests: int64(len(all)), Errors: errCount.Load(), ElapsedS: elapsed.Seconds()}
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if len(all) == 0 {
		if firstErr != nil {
			return res, fmt.Errorf("no request succeeded: %w", firstErr)
		}
		return res, errors.New("no request succeeded")
	}
	res.P50US = usOf(percentile(all, 0.50))
	res.P99US = usOf(percentile(all, 0.99))
	res.RPS = float64(len(all)) / elapsed.Seconds()
	if c.c.proxy != "" {
		res.ProxyCPUUS = usOf(cpu1-cpu0) / float64(len(all))
	}
	res.ClientCPUUS = usOf(self1-self0) / float64(len(all))
	return res, nil
}

// runBulk streams echo traffic through one connection for d: a writer sends
// 32 KiB chunks, then half-closes; the reader counts the bytes until the
// echo's EOF.
func (b *bench) runBulk(ctx context.Context, c cell, d time.Duration) (cellResult, error) {
	deadline := time.Now().Add(d + b.cfg.timeout)
	conn, err := c.c.dialBulk(b, deadline)
	if err != nil {
		return cellResult{}, fmt.Errorf("connect: %w", err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(deadline); err != nil {
		return cellResult{}, err
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return cellResult{}, fmt.Errorf("%T has no CloseWrite", conn)
	}
	cpu0, err := b.proxyCPU(c.c)
	if err != nil {
		return cellResult{}, err
	}
	self0, _ := procCPU(0)
	start := time.Now()
	end := start.Add(d)
	stopCtx, stopWriter := context.WithDeadline(ctx, end)
	defer stopWriter()
	werrc := make(chan error, 1)
	var written int64
	go func() {
		chunk := bytes.Repeat([]byte("0123456789abcdef"), benchBulkChunk/16)
		for stopCtx.Err() == nil {
			n, err := conn.Write(chunk)
			written += int64(n)
			if err != nil {
				werrc <- err
				return
			}
		}
		werrc <- cw.CloseWrite()
	}()
	var read int64
	buf := make([]byte, 64<<10)
	var rerr error
	for {
		n, err := conn.Read(buf)
		read += int64(n)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				rerr = err
			}
			break
		}
	}
	elapsed := time.Since(start)
	if rerr != nil {
		_ = conn.Close() // unblock the writer
	}
	werr := <-werrc
	settleCPU()
	switch {
	case rerr != nil:
		return cellResult{}, fmt.Errorf("read: %w", rerr)
	case werr != nil:
		return cellResult{}, fmt.Errorf("write: %w", werr)
	case read != written:
		return cellResult{}, fmt.Errorf("read %d bytes back of %d written", read, written)
	}
	cpu1, err := b.proxyCPU(c.c)
	if err != nil {
		return cellResult{}, err
	}
	self1, _ := procCPU(0)
	mib := float64(read) / (1 << 20)
	res := cellResult{Requests: read / benchBulkChunk, ElapsedS: elapsed.Seconds(), MiBps: mib / elapsed.Seconds()}
	if c.c.proxy != "" {
		res.ProxyCPUUS = usOf(cpu1-cpu0) / mib
	}
	res.ClientCPUUS = usOf(self1-self0) / mib
	return res, nil
}

// settleCPU lets the proxy's threads go idle before its CPU time is read:
// a tickless kernel charges a running thread only when it is descheduled
// or ticked.
func settleCPU() { time.Sleep(10 * time.Millisecond) }

func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q * float64(len(sorted)))
	return sorted[min(i, len(sorted)-1)]
}

func usOf(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// startProfiles, with --profile, profiles the bench client and poold over
// the rounds; the returned function stops and saves the profiles.
func (b *bench) startProfiles(ctx context.Context, cells int) (func() error, error) {
	dir := b.cfg.profileDir
	if dir == "" {
		return func() error { return nil }, nil
	}
	if b.poold.metricsAddr == "" {
		return nil, errors.New("bench: --profile: poold has no metrics listener")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, "client-cpu.pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	// poold's profile covers the measured time, a lower bound of the
	// rounds' length.
	secs := max(1, int((time.Duration(b.cfg.rounds*cells) * b.cfg.duration).Seconds()))
	base := "http://" + b.poold.metricsAddr + "/debug/pprof/"
	pctx, cancel := context.WithCancel(ctx)
	donec := make(chan error, 1)
	go func() {
		donec <- fetch(pctx, base+"profile?seconds="+strconv.Itoa(secs), filepath.Join(dir, "poold-cpu.pprof"))
	}()
	var once sync.Once
	var stopErr error
	return func() error {
		once.Do(func() {
			pprof.StopCPUProfile()
			ferr := f.Close()
			perr := <-donec
			cancel()
			aerr := fetch(ctx, base+"allocs", filepath.Join(dir, "poold-allocs.pprof"))
			af, err := os.Create(filepath.Join(dir, "client-allocs.pprof"))
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(af, 0)
				err = errors.Join(err, af.Close())
			}
			stopErr = errors.Join(ferr, perr, aerr, err)
			if stopErr == nil {
				_, _ = fmt.Fprintf(b.stderr, "bench: profiles in %s (go tool pprof -top %s)\n", dir, filepath.Join(dir, "poold-cpu.pprof"))
			}
		})
		return stopErr
	}, nil
}

// fetch saves the body of an HTTP GET of url to path.
func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
