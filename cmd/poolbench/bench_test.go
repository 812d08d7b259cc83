package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// buildPoold builds cmd/poold into a temporary directory. poold belongs to
// poolplane's main module, two directories up: it is built there, with that
// module's own requirements.
func buildPoold(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "poold")
	testkit.GoBuild(t, root, out, "./cmd/poold", false)
	return out
}

// TestBenchShort runs the whole bench briefly, with real processes, and
// checks that the JSON output holds every case with sane numbers.
func TestBenchShort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the bench reads /proc")
	}
	poold := buildPoold(t)
	haproxy := "off"
	if _, err := exec.LookPath("haproxy"); err == nil {
		haproxy = "haproxy"
	}
	report := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb testkit.SyncBuffer
	code := run(ctx, []string{"--poold", poold, "--haproxy", haproxy, "--rounds", "1", "--duration", "100ms",
		"--warmup", "0", "--clients", "1,4", "--max-procs", "1", "-o", "json", "--report", report}, &out, &errb)
	if code != 0 {
		t.Fatalf("bench: exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("bench -o json: %v\n%s", err, out.String())
	}
	if rep.Errors != 0 {
		t.Errorf("errors = %d", rep.Errors)
	}
	if rep.Config.PooldMaxProcs != 1 {
		t.Errorf("config: poold_max_procs %d, want 1", rep.Config.PooldMaxProcs)
	}
	got := map[string]caseSummary{}
	for _, c := range rep.Cases {
		got[fmt.Sprintf("%s c=%d", c.Case, c.Clients)] = c
	}
	for _, bc := range benchCases() {
		if bc.proxy == "haproxy" && haproxy == "off" {
			continue
		}
		counts := []int{1, 4}
		if bc.bulk() {
			counts = []int{1}
		}
		for _, n := range counts {
			c, ok := got[fmt.Sprintf("%s c=%d", bc.name, n)]
			if !ok {
				t.Errorf("case %s with %d clients missing", bc.name, n)
				continue
			}
			checkCase(t, c)
		}
	}
	if want := 7; len(rep.Targets) != want {
		t.Errorf("%d targets, want %d", len(rep.Targets), want)
	}
	for _, tg := range rep.Targets {
		if haproxy == "off" && strings.Contains(tg.Name, "HAProxy") {
			if tg.Met != nil || !strings.Contains(tg.Note, "not measured") {
				t.Errorf("target %q without HAProxy: %+v", tg.Name, tg)
			}
			continue
		}
		if tg.Got == nil && strings.Contains(tg.Name, "CPU") {
			// CPU time is counted in 10ms clock ticks: a 100ms case may
			// show none, and the ratio is then undefined.
			t.Logf("target %q not measured in so short a run: %+v", tg.Name, tg)
			continue
		}
		if tg.Got == nil || tg.Met == nil || *tg.Got <= 0 {
			t.Errorf("target %q: %+v", tg.Name, tg)
		}
	}
	if haproxy == "off" && !strings.Contains(strings.Join(rep.Notes, "\n"), "HAProxy cases skipped") {
		t.Errorf("notes %q: want the HAProxy skip", rep.Notes)
	}
	md, err := os.ReadFile(filepath.Join(report, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"latency.png", caseTLSLeaseReq, "| target |", "poold: --max-procs 1"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	png, err := os.ReadFile(filepath.Join(report, "latency.png"))
	if err != nil || len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Errorf("latency.png: %v, %d bytes", err, len(png))
	}
}

func checkCase(t *testing.T, c caseSummary) {
	t.Helper()
	sane := func(v float64) bool { return v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) }
	if len(c.Rounds) != 1 || c.Requests <= 0 || c.Errors != 0 {
		t.Errorf("%s c=%d: %d rounds, %d requests, %d errors", c.Case, c.Clients, len(c.Rounds), c.Requests, c.Errors)
	}
	if c.Bulk {
		if !sane(c.MiBps) {
			t.Errorf("%s: MiB/s %v", c.Case, c.MiBps)
		}
	} else {
		if !sane(c.P50US) || c.P99US < c.P50US || c.P50US > 1e6 || !sane(c.RPS) {
			t.Errorf("%s c=%d: p50 %vµs p99 %vµs req/s %v", c.Case, c.Clients, c.P50US, c.P99US, c.RPS)
		}
		if c.Case != caseTCPDirect && c.Case != caseTLSDirect && (c.P50XFloor == nil || !sane(*c.P50XFloor)) {
			t.Errorf("%s c=%d: no ratio to the floor", c.Case, c.Clients)
		}
		if !strings.HasSuffix(c.Case, "/new-conn") && (c.P50SpeedupNoPool == nil || !sane(*c.P50SpeedupNoPool)) {
			t.Errorf("%s c=%d: no ratio to no pooling", c.Case, c.Clients)
		}
	}
	// The proxy's CPU time is counted in 10ms ticks: a short case may see
	// none, never a negative amount.
	if c.ProxyCPUUS < 0 || (c.Proxy == "" && c.ProxyCPUUS != 0) {
		t.Errorf("%s c=%d: proxy CPU %vµs", c.Case, c.Clients, c.ProxyCPUUS)
	}
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--clients", "0"},
		{"--clients", "1,x"},
		{"--rounds", "0"},
		{"--duration", "0s"},
		{"-o", "yaml"},
		{"--max-procs", "-1"},
		{"extra"},
	} {
		if r := runCLI(t, args...); r.code != 2 {
			t.Errorf("poolbench %v: exit %d, want 2\n%s", args, r.code, r.stderr)
		}
	}
}

func TestBenchNoPoold(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	r := runCLI(t)
	if r.code != 1 || !strings.Contains(r.stderr, "make build") {
		t.Fatalf("exit %d, stderr %q: want 1 and a hint to run make build", r.code, r.stderr)
	}
	r = runCLI(t, "--poold", filepath.Join(t.TempDir(), "nope"))
	if r.code != 1 || !strings.Contains(r.stderr, "--poold") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestProcCPU checks the /proc parsing against getrusage.
func TestProcCPU(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc")
	}
	end := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(end) {
	}
	got, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self, err := procCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	want := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if got <= 0 || self < got || got < want/2 || got > want*2+100*time.Millisecond {
		t.Fatalf("procCPU = %v then %v; getrusage says %v", got, self, want)
	}
}

func TestPairRatio(t *testing.T) {
	rs := func(v ...float64) []cellResult {
		out := make([]cellResult, len(v))
		for i, x := range v {
			out[i].P50US = x
		}
		return out
	}
	div := func(a, b cellResult) float64 { return a.P50US / b.P50US }
	for _, tc := range []struct {
		name string
		a, b []cellResult
		want float64 // NaN: nil
	}{
		{"pairwise median", rs(10, 20, 30), rs(5, 20, 10), 2},
		{"even count", rs(1, 2), rs(1, 1), 1.5},
		{"uneven lengths", rs(4, 8, 100), rs(2, 2), 3},
		{"zero reference skipped", rs(4, 9), rs(0, 3), 3},
		{"missing side", rs(1), nil, math.NaN()},
	} {
		got := pairRatio(tc.a, tc.b, div)
		switch {
		case math.IsNaN(tc.want) && got != nil:
			t.Errorf("%s: got %v, want nil", tc.name, *got)
		case !math.IsNaN(tc.want) && (got == nil || *got != tc.want):
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
