package main

import (
	"context"
	"encoding/csv"
	"math"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// benchRequests is redis-benchmark's -n per test (SET, then GET) per run.
const benchRequests = 10000

// redisBenchmarkRPS runs redis-benchmark -c 50 -n benchRequests -t set,get
// against addr and returns the mean of its SET and GET requests/s.
func redisBenchmarkRPS(b *testing.B, bin, addr string) float64 {
	b.Helper()
	return redisBenchmarkRun(b, bin, addr, 50, benchRequests)
}

// redisBenchmarkRun runs redis-benchmark -c clients -n requests -t set,get
// against addr and returns the mean of its SET and GET requests/s.
func redisBenchmarkRun(b *testing.B, bin, addr string, clients, requests int) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.CommandContext(ctx, bin, "-h", host, "-p", port,
		"-c", strconv.Itoa(clients), "-n", strconv.Itoa(requests), "-t", "set,get", "-q", "--csv").Output()
	if err != nil {
		b.Fatalf("redis-benchmark: %v\n%s", err, out)
	}
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		b.Fatalf("redis-benchmark output: %v\n%s", err, out)
	}
	var sum float64
	var n int
	for _, r := range recs {
		if len(r) < 2 || (r[0] != "SET" && r[0] != "GET") {
			continue
		}
		rps, err := strconv.ParseFloat(r[1], 64)
		if err != nil {
			b.Fatalf("redis-benchmark output: %v\n%s", err, out)
		}
		sum += rps
		n++
	}
	if n != 2 {
		b.Fatalf("redis-benchmark output: %d of SET, GET\n%s", n, out)
	}
	return sum / 2
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN() // nothing measured
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkForwardRedisBenchmark: redis-benchmark (50 clients, SET and
// GET) through poolctl forward on a RAW pool (--reuse) and on a REDIS pool
// of the same redis-server, alternately, 3 rounds. It reports the median
// requests/s of each (the mean of SET and GET) and x-raw-rps, the median
// over rounds of REDIS/RAW within a round. Run it with -benchtime 1x: one
// iteration is the whole procedure.
func BenchmarkForwardRedisBenchmark(b *testing.B) {
	bin := lookTool(b, "redis-benchmark", "redis-tools")
	ts := startServer(b)
	redis := testkit.Redis(b)
	ts.ok(b, "pools:\n"+
		"- id: raw\n  endpoints: ["+redis+"]\n  limits: {max_connections: 64}\n"+
		"- id: cache\n  endpoints: ["+redis+"]\n  protocol: redis\n  limits: {max_connections: 64}\n", "apply", "-f", "-")
	rawAddr, _ := ts.startForward(b, "raw", "--reuse")
	redisAddr, _ := ts.startForward(b, "cache")
	const rounds = 3
	var raw, red, ratio []float64
	for range b.N {
		raw, red, ratio = raw[:0], red[:0], ratio[:0]
		for round := range rounds {
			r := redisBenchmarkRPS(b, bin, rawAddr)
			p := redisBenchmarkRPS(b, bin, redisAddr)
			b.Logf("round %d: RAW %.0f req/s, REDIS %.0f req/s", round, r, p)
			raw, red, ratio = append(raw, r), append(red, p), append(ratio, p/r)
		}
	}
	b.ReportMetric(median(raw), "raw-req/s")
	b.ReportMetric(median(red), "redis-req/s")
	b.ReportMetric(median(ratio), "x-raw-rps")
}
