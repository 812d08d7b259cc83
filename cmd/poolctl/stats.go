package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

func statsCommand() *command {
	return &command{
		name: "stats", args: "[POOL] [--watch] [--interval D]",
		summary: "show pool statistics, once or refreshed in place",
		maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			watch := fs.Bool("watch", false, "keep refreshing until interrupted")
			fs.BoolVar(watch, "w", false, "shorthand for --watch")
			interval := fs.Duration("interval", time.Second, "time between refreshes with --watch (at least 100ms)")
			return func(ctx context.Context, e *env, args []string) error {
				if *interval < 100*time.Millisecond {
					return usagef("stats: --interval must be at least 100ms")
				}
				if err := e.connect(); err != nil {
					return err
				}
				var names []string
				if len(args) == 1 {
					names = []string{poolName(args[0])}
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
		return e.show(st, func() error { return statsTable(e.stdout, []*poolv1.PoolStats{st}) })
	}
	stream, err := e.stats.WatchPoolStats(ctx, &poolv1.WatchPoolStatsRequest{})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	return e.show(resp, func() error { return statsTable(e.stdout, resp.GetStats()) })
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
		case "table":
			var buf bytes.Buffer
			_, _ = fmt.Fprintf(&buf, "Every %s: %s\n\n", interval, time.Now().Format(time.TimeOnly))
			if err := statsTable(&buf, resp.GetStats()); err != nil {
				return err
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
			if err := writeStructured(e.stdout, e.g.output, resp); err != nil {
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

// statsTable writes one row per pool.
func statsTable(w io.Writer, stats []*poolv1.PoolStats) error {
	t := newTable(w, "NAME", "STATE", "SERVING", "PROTOCOL", "GEN", "MAX", "TOTAL", "IN_USE", "IDLE", "DIALING", "WAITERS",
		"ACQUIRES", "REUSED", "CREATED", "WAITS", "TIMEOUTS", "REJECTED", "DIAL_FAILURES", "CIRCUIT", "LISTENERS", "LAST_DIAL_ERROR")
	for _, s := range stats {
		circuit := "closed"
		if s.GetCircuitOpen() {
			circuit = "open"
		}
		t.row(s.GetName(), stateString(s.GetState()), yesNo(s.GetServing()), protocolString(s.GetProtocol()), itoa(s.GetGeneration()),
			itoa(s.GetMaxConnections()), itoa(s.GetTotal()), itoa(s.GetInUse()), itoa(s.GetIdle()),
			itoa(s.GetDialing()), itoa(s.GetWaiters()), itoa(s.GetAcquires()), itoa(s.GetReused()),
			itoa(s.GetCreated()), itoa(s.GetWaits()), itoa(s.GetTimeouts()), itoa(s.GetBacklogRejections()),
			itoa(s.GetDialFailures()), circuit, listenersString(s.GetListeners()), s.GetLastDialError())
	}
	return t.flush()
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
