package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

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
