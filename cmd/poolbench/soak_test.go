package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/poolplane/poolplane/client"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestBenchSoakShort runs a 3-second soak against real processes and checks
// its JSON report: load of every kind happened, and a clean run reports no
// leak and no unexpected error.
func TestBenchSoakShort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the soak reads /proc")
	}
	poold := buildPoold(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb testkit.SyncBuffer
	code := run(ctx, []string{"--poold", poold, "--soak", "3s", "--soak-sample", "1s", "-o", "json"},
		&out, &errb)
	if code != 0 {
		t.Fatalf("bench --soak: exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	var rep soakReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("bench --soak -o json: %v\n%s", err, out.String())
	}
	t.Logf("soak 3s: %d requests, %d leases, %d crashes, %d cancels, %d drains; errors %d expected, %d unexpected; "+
		"goroutines %d/%d/%d; upstream conns end %d, pool total %d",
		rep.Activity.Requests, rep.Activity.Leases, rep.Activity.Crashes, rep.Activity.Cancels, rep.Activity.Drains,
		rep.ExpectedErrors, rep.UnexpectedErrors, rep.Goroutines.Start, rep.Goroutines.Peak, rep.Goroutines.End,
		rep.UpstreamConns.End, rep.PoolTotalEnd)
	if !rep.Clean || len(rep.Leaks) != 0 || rep.UnexpectedErrors != 0 {
		t.Errorf("clean=%v leaks=%q unexpected=%d errors=%+v", rep.Clean, rep.Leaks, rep.UnexpectedErrors, rep.Errors)
	}
	a := rep.Activity
	if a.Requests <= 0 || a.Leases <= 0 || a.Crashes <= 0 || a.CrashLeases <= 0 || a.Resizes <= 0 || a.Reconnects <= 0 || a.Drains <= 0 {
		t.Errorf("activity %+v: want some of each", a)
	}
	if rep.InUseOpen != 0 || rep.InUseEnd != 0 || rep.UpstreamConns.End > int64(rep.PoolTotalEnd) || rep.PoolTotalEnd <= 0 {
		t.Errorf("end: in use %d, upstream %d, pool total %d", rep.InUseEnd, rep.UpstreamConns.End, rep.PoolTotalEnd)
	}
	// A first sample, about three periodic ones and the last.
	if n := len(rep.Samples); n < 3 {
		t.Errorf("%d samples, want at least 3", n)
	}
	for _, tr := range []struct {
		name string
		t    soakTrend
	}{{"goroutines", rep.Goroutines}, {"heap", rep.HeapInuse}, {"fds", rep.FDs}} {
		if tr.t.Start <= 0 || tr.t.Peak < tr.t.Start || tr.t.Peak < tr.t.End {
			t.Errorf("%s: %+v", tr.name, tr.t)
		}
	}
	if rep.Config.Clients != defaultSoakClients || rep.Config.DurationS != 3 || rep.Config.MaxLo >= rep.Config.MaxHi {
		t.Errorf("config %+v", rep.Config)
	}
	if rep.ElapsedS < 3 || rep.ElapsedS > 10 {
		t.Errorf("elapsed %vs", rep.ElapsedS)
	}
	if !regexp.MustCompile(`bench: soak \d+s: \d+ requests, 0 unexpected errors; poold goroutines \d+`).MatchString(errb.String()) {
		t.Errorf("stderr lacks the progress lines:\n%s", errb.String())
	}
}

func TestBenchSoakUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--soak", "-1s"},
		{"--soak", "1s", "--soak-clients", "0"},
		{"--soak", "1s", "--soak-holders", "-1"},
		{"--soak", "1s", "--soak-sample", "0s"},
		{"--soak", "1s", "-o", "yaml"},
		{"--soak", "1s", "--size", "0"},
	} {
		if r := runCLI(t, args...); r.code != 2 {
			t.Errorf("poolbench %v: exit %d, want 2\n%s", args, r.code, r.stderr)
		}
	}
}

func TestSoakLeaks(t *testing.T) {
	pools := func(total, inUse int32) map[string]soakPoolSample {
		return map[string]soakPoolSample{soakPoolMain: {Total: total, InUse: inUse, Idle: total - inUse}, soakPoolSide: {Total: 2, Idle: 2}}
	}
	first := soakSample{Goroutines: 16, FDs: 20, Pools: pools(4, 0), UpstreamConns: 6}
	for _, tc := range []struct {
		name  string
		last  soakSample
		inErr error
		want  string // "" for no leak
	}{
		{"clean", soakSample{Goroutines: 16, FDs: 27, Pools: pools(11, 0), UpstreamConns: 13}, nil, ""},
		{"slack", soakSample{Goroutines: 16 + soakGoroutineSlack, FDs: 20 + soakFDSlack, Pools: pools(4, 0), UpstreamConns: 6}, nil, ""},
		{"fewer upstream", soakSample{Goroutines: 16, FDs: 20, Pools: pools(4, 0), UpstreamConns: 3}, nil, ""},
		{"in use", soakSample{Goroutines: 16, FDs: 20, Pools: pools(4, 1), UpstreamConns: 6}, errors.New("not within"), "still in use"},
		{"upstream", soakSample{Goroutines: 16, FDs: 21, Pools: pools(4, 0), UpstreamConns: 7}, nil, "upstream has 7 connections open, the pools 6"},
		{"goroutines", soakSample{Goroutines: 17 + soakGoroutineSlack, FDs: 20, Pools: pools(4, 0), UpstreamConns: 6}, nil, "goroutines"},
		{"fds", soakSample{Goroutines: 16, FDs: 21 + soakFDSlack, Pools: pools(4, 0), UpstreamConns: 6}, nil, "fds other than pool connections"},
	} {
		got := strings.Join(soakLeaks(first, tc.last, tc.inErr), "; ")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: leaks %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
go_memstats_heap_inuse_bytes 3.3e+06
process_open_fds 17
poolplane_connection_count{pool="a",state="idle"} 4
go_gc_duration_seconds{quantile="0.5"} 1.2e-05
`
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 42, "go_memstats_heap_inuse_bytes": 3.3e6, "process_open_fds": 17}
	if len(m) != len(want) {
		t.Errorf("got %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, err := parseMetrics(strings.NewReader("go_goroutines x\n")); err == nil {
		t.Error("a bad value parsed")
	}
}

func TestListenInodes(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:C3D4 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
`
	got := listenInodes([]byte(table))
	if len(got) != 1 || !got["111"] {
		t.Errorf("listenInodes = %v, want only 111", got)
	}
}

// TestProcConns counts this process's own loopback connections.
func TestProcConns(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc")
	}
	n0, err := procConns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	n1, err := procConns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if n1-n0 != 2 {
		t.Errorf("connections %d then %d: want 2 more (the listener not counted)", n0, n1)
	}
}

func TestErrClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errMismatch, "response mismatch"},
		{fmt.Errorf("lease: %w", context.Canceled), "canceled"},
		{client.ErrClientClosed, "client closed"},
		{os.ErrDeadlineExceeded, "deadline"},
		{io.ErrUnexpectedEOF, "EOF"},
		{net.ErrClosed, "use of closed conn"},
		{&client.Error{Code: codes.FailedPrecondition, Reason: "POOL_DRAINING"}, "POOL_DRAINING"},
		{&client.Error{Code: codes.Unavailable}, "Unavailable"},
		{errors.New("boom"), "other"},
	} {
		if got := errClass(tc.err); got != tc.want {
			t.Errorf("errClass(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
