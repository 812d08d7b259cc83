package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/spf13/pflag"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

func statsCommand() *command {
	return &command{
		name: "stats", args: "[POOL...] [--watch] [--interval D]",
		summary: "show pool statistics, once or refreshed in place",
		long: "The table shows each pool's gauges, ACQUIRES/S (acquires per second) and WAIT_P50 and WAIT_P99\n" +
			"(the median and 99th percentile of acquire waits, from the wait histogram). Once, the percentiles\n" +
			"cover the pool's life and the rate needs --watch; under --watch both cover each interval.\n" +
			"-o wide adds the counters, dial and hold times; -o json and -o yaml print the whole snapshot.",
		maxArgs: -1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			watch := fs.BoolP("watch", "w", false, "keep refreshing until interrupted; the table then shows rates and wait percentiles over each interval")
			interval := fs.Duration("interval", time.Second, "time between refreshes with --watch (at least 100ms)")
			return func(ctx context.Context, e *env, args []string) error {
				if *interval < 100*time.Millisecond {
					return usagef("stats: --interval must be at least 100ms")
				}
				if err := e.connect(); err != nil {
					return err
				}
				var names []string
				for _, a := range args {
					names = append(names, poolName(a))
				}
				if *watch {
					return e.watchStats(ctx, names, *interval)
				}
				return e.statsOnce(ctx, names)
			}
		},
	}
}

// statsOnce prints one snapshot: GetPoolStats for one pool, the first
// WatchPoolStats message for all.
func (e *env) statsOnce(ctx context.Context, names []string) error {
	ctx, cancel := e.rpcContext(ctx)
	defer cancel()
	if len(names) == 1 {
		st, err := e.stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: names[0]})
		if err != nil {
			return err
		}
		return e.show(st, func(wide bool) error { return statsTable(e.stdout, []*poolv1.PoolStats{st}, nil, wide) })
	}
	stream, err := e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: names})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	return e.show(resp, func(wide bool) error { return statsTable(e.stdout, resp.GetStats(), nil, wide) })
}

// watchStats streams snapshots until ctx ends. The table is redrawn in
// place with ANSI escapes (cursor up, clear line); json and yaml print one
// document per snapshot (yaml documents separated by "---").
func (e *env) watchStats(ctx context.Context, names []string, interval time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{Names: names, Interval: durationpb.New(interval)})
	if err != nil {
		return err
	}
	r := redrawer{plain: !isTerminal(e.stdout)}
	prev := map[string]*poolv1.PoolStats{}
	for n := 0; ; n++ {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled) {
				return nil // interrupted
			}
			if errors.Is(err, io.EOF) {
				return nil // the server ended the stream
			}
			return err
		}
		switch e.g.output {
		case "table", "wide":
			var buf bytes.Buffer
			_, _ = fmt.Fprintf(&buf, "Every %s: %s\n\n", interval, time.Now().Format(time.TimeOnly))
			if err := statsTable(&buf, resp.GetStats(), prev, e.g.output == "wide"); err != nil {
				return err
			}
			prev = map[string]*poolv1.PoolStats{}
			for _, st := range resp.GetStats() {
				prev[st.GetName()] = st
			}
			if err := r.draw(e.stdout, buf.String()); err != nil {
				return err
			}
		case "yaml":
			if n > 0 {
				_, _ = io.WriteString(e.stdout, "---\n")
			}
			fallthrough
		default:
			if err := e.show(resp, nil); err != nil {
				return err
			}
		}
	}
}

// redrawer redraws a block of text in place on a terminal.
type redrawer struct {
	plain bool // not a terminal: print each block after the last
	lines int  // lines drawn last time
}

// isTerminal reports whether w is a file that is not a terminal's; other
// writers (buffers, pipes wrapped by callers) count as terminals.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return true
	}
	fi, err := f.Stat()
	return err != nil || fi.Mode()&os.ModeCharDevice != 0
}

// draw moves the cursor up over the previous block, then writes text,
// clearing each line before it is written ("\x1b[2K") and the rest of
// the screen after it ("\x1b[J") so that a shorter block leaves nothing
// behind.
func (r *redrawer) draw(w io.Writer, text string) error {
	if r.plain {
		if r.lines > 0 {
			text = "\n" + text
		}
		r.lines++
		_, err := io.WriteString(w, text)
		return err
	}
	var b strings.Builder
	if r.lines > 0 {
		_, _ = fmt.Fprintf(&b, "\x1b[%dA", r.lines)
	}
	text = strings.TrimSuffix(text, "\n")
	lines := strings.Split(text, "\n")
	for _, l := range lines {
		b.WriteString("\r\x1b[2K")
		b.WriteString(l)
		b.WriteString("\n")
	}
	b.WriteString("\x1b[J")
	r.lines = len(lines)
	_, err := io.WriteString(w, b.String())
	return err
}

// statsTable writes one row per pool: gauges, then the acquire rate and
// the median and 99th percentile of acquire waits. With prev (the last
// snapshot of each pool, under --watch) the rate and percentiles cover
// the time since it; without, the percentiles cover the pool's life and
// the rate is "-". wide adds the counters. -o json and yaml print the
// whole snapshot, histograms included.
func statsTable(w io.Writer, stats []*poolv1.PoolStats, prev map[string]*poolv1.PoolStats, wide bool) error {
	header := []string{"NAME", "STATE", "SERVING", "PROTOCOL", "GEN", "MAX", "TOTAL", "IN_USE", "IDLE", "DIALING", "WAITERS",
		"ACQUIRES/S", "WAIT_P50", "WAIT_P99", "TIMEOUTS", "REJECTED", "DIAL_FAILURES", "CIRCUIT", "LISTENERS", "LAST_DIAL_ERROR"}
	if wide {
		header = append(header, "ACQUIRES", "REUSED", "CREATED", "WAITS", "DIALS", "DIAL_P99", "HOLD_P50", "HOLD_P99", "BYTES_IN", "BYTES_OUT")
	}
	t := newTable(w, header...)
	for _, s := range stats {
		circuit := "closed"
		if s.GetCircuitOpen() {
			circuit = "open"
		}
		p := prev[s.GetName()]
		rate := "-"
		if p != nil && s.GetTime() != nil && p.GetTime() != nil {
			if d := s.GetTime().AsTime().Sub(p.GetTime().AsTime()); d > 0 && s.GetAcquires() >= p.GetAcquires() {
				rate = strconv.FormatFloat(float64(s.GetAcquires()-p.GetAcquires())/d.Seconds(), 'f', 1, 64)
			}
		}
		wait := histDelta(s.GetAcquireWait(), p.GetAcquireWait())
		row := []string{s.GetName(), stateString(s.GetState()), yesNo(s.GetServing()), protocolString(s.GetProtocol()), itoa(s.GetGeneration()),
			itoa(s.GetMaxConnections()), itoa(s.GetTotal()), itoa(s.GetInUse()), itoa(s.GetIdle()),
			itoa(s.GetDialing()), itoa(s.GetWaiters()), rate, quantileString(wait, 0.5), quantileString(wait, 0.99),
			itoa(s.GetTimeouts()), itoa(s.GetBacklogRejections()),
			itoa(s.GetDialFailures()), circuit, listenersString(s.GetListeners()), s.GetLastDialError()}
		if wide {
			dial := histDelta(s.GetDialTime(), p.GetDialTime())
			hold := histDelta(s.GetHoldTime(), p.GetHoldTime())
			row = append(row, itoa(s.GetAcquires()), itoa(s.GetReused()), itoa(s.GetCreated()), itoa(s.GetWaits()),
				itoa(s.GetDials()), quantileString(dial, 0.99), quantileString(hold, 0.5), quantileString(hold, 0.99),
				itoa(s.GetBytesIn()), itoa(s.GetBytesOut()))
		}
		t.row(row...)
	}
	return t.flush()
}

// histDelta returns the observations of h since prev (an earlier snapshot
// of the same histogram), or h itself without a comparable prev.
func histDelta(h, prev *poolv1.Histogram) *poolv1.Histogram {
	if prev == nil || len(prev.GetCounts()) != len(h.GetCounts()) || prev.GetCount() > h.GetCount() ||
		!slices.Equal(prev.GetBounds(), h.GetBounds()) {
		return h
	}
	d := &poolv1.Histogram{Bounds: h.GetBounds(), Counts: make([]uint64, len(h.GetCounts())),
		Count: h.GetCount() - prev.GetCount(), Sum: h.GetSum() - prev.GetSum()}
	for i, c := range h.GetCounts() {
		if c < prev.GetCounts()[i] {
			return h
		}
		d.Counts[i] = c - prev.GetCounts()[i]
	}
	return d
}

// quantile estimates the q-quantile of h (0 < q <= 1) in seconds by linear
// interpolation within the bucket that holds it, as Prometheus'
// histogram_quantile does; ok is false without observations. A quantile
// in the overflow bucket is the last bound.
func quantile(h *poolv1.Histogram, q float64) (sec float64, ok bool) {
	counts, bounds := h.GetCounts(), h.GetBounds()
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(bounds) == 0 {
		return 0, false
	}
	rank := q * float64(total)
	var cum uint64
	for i, c := range counts {
		if c == 0 || float64(cum+c) < rank {
			cum += c
			continue
		}
		if i >= len(bounds) {
			return bounds[len(bounds)-1], true
		}
		lower := 0.0
		if i > 0 {
			lower = bounds[i-1]
		}
		return lower + (bounds[i]-lower)*(rank-float64(cum))/float64(c), true
	}
	return bounds[len(bounds)-1], true
}

// quantileString formats quantile(h, q) as a duration, "-" without
// observations.
func quantileString(h *poolv1.Histogram, q float64) string {
	sec, ok := quantile(h, q)
	if !ok {
		return "-"
	}
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d >= time.Second:
		d = d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		d = d.Round(10 * time.Microsecond)
	default:
		d = d.Round(time.Microsecond)
	}
	return d.String()
}

// listenersString shows a pool's listeners in one column: each bound
// address with its connections being served, or the address and why it
// is not open; "-" for none.
func listenersString(ls []*poolv1.ListenerStatus) string {
	if len(ls) == 0 {
		return "-"
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		if l.GetError() != "" {
			out[i] = l.GetAddress() + " (not open: " + printable(l.GetError()) + ")"
			continue
		}
		out[i] = fmt.Sprintf("%s (%d active)", l.GetBoundAddress(), l.GetActive())
	}
	return strings.Join(out, ", ")
}
