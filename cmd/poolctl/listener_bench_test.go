package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// benchTarget is one way to reach an upstream in a side-by-side
// benchmark: its address, and the PID of the process that relays (0: this
// process, poold in-process; -1: none, a direct connection).
type benchTarget struct {
	name, addr string
	pid        int
}

// cpuPer returns the CPU time target's relaying process used while run
// ran, divided by n requests (0 for a direct target).
func cpuPer(b *testing.B, tg benchTarget, n int, run func()) time.Duration {
	b.Helper()
	if tg.pid < 0 {
		run()
		return 0
	}
	before := testkit.ProcCPU(b, tg.pid)
	run()
	return (testkit.ProcCPU(b, tg.pid) - before) / time.Duration(n)
}

// BenchmarkListenerRedis: redis-benchmark (SET and GET) with 1 and 50
// clients, on loopback, side by side: directly, through HAProxy in TCP
// mode, and through a pool listener on a RAW pool and on a REDIS pool of
// the same redis-server (poold in this process, the benchmark otherwise
// idle), interleaved over 3 rounds in an order rotated round by round. It
// reports each one's median requests/s (the mean of SET and GET) and CPU
// per request of the process that relays (HAProxy's, poold's), and the
// pool listeners' ratios to HAProxy: x-haproxy-raw-c50 is RAW's rate
// over HAProxy's at 50 clients, the median over rounds of the ratio within
// a round. Run it with -benchtime 1x: one iteration is the whole
// procedure.
func BenchmarkListenerRedis(b *testing.B) {
	bin := lookTool(b, "redis-benchmark", "redis-tools")
	ts := startServer(b)
	redis := testkit.Redis(b)
	hap, hapPid := testkit.HAProxy(b, redis)
	ts.ok(b, "pools:\n"+
		"- id: raw\n  endpoints: ["+redis+"]\n  limits: {max_connections: 64, min_idle: 50}\n"+
		"- id: cache\n  endpoints: ["+redis+"]\n  protocol: redis\n  limits: {max_connections: 64, min_idle: 50}\n", "apply", "-f", "-")
	targets := []benchTarget{
		{"direct", redis, -1},
		{"haproxy", hap, hapPid},
		{"raw", ts.listen(b, "raw"), 0},
		{"redis", ts.listen(b, "cache"), 0},
	}
	const rounds = 3
	var groups []barGroup
	for range b.N {
		groups = groups[:0]
		for _, clients := range benchClients() {
			requests := 10000
			if clients > 1 {
				requests = 50000
			}
			rps := map[string][]float64{}
			cpu := map[string][]float64{}
			ratio := map[string][]float64{}
			for round := range rounds {
				var line strings.Builder
				got := map[string]float64{}
				for i := range targets {
					tg := targets[(i+round)%len(targets)] // rotate the order round by round
					var r float64
					per := cpuPer(b, tg, 2*requests, func() { r = redisBenchmarkRun(b, bin, tg.addr, clients, requests) })
					got[tg.name] = r
					rps[tg.name] = append(rps[tg.name], r)
					cpu[tg.name] = append(cpu[tg.name], float64(per.Nanoseconds())/1e3)
					fmt.Fprintf(&line, " %s %.0f req/s %.1f µs/req;", tg.name, r, float64(per.Nanoseconds())/1e3)
				}
				for _, p := range []string{"raw", "redis"} {
					ratio[p] = append(ratio[p], got[p]/got["haproxy"])
				}
				b.Logf("-c %d round %d:%s", clients, round, line.String())
			}
			c := fmt.Sprintf("-c%d", clients)
			for _, tg := range targets {
				b.ReportMetric(median(rps[tg.name]), tg.name+c+"-req/s")
				if tg.pid >= 0 {
					b.ReportMetric(median(cpu[tg.name]), tg.name+c+"-cpu-µs/req")
				}
			}
			for _, p := range []string{"raw", "redis"} {
				b.ReportMetric(median(ratio[p]), "x-haproxy-"+p+c)
			}
			g := barGroup{label: fmt.Sprintf("redis-benchmark -c %d", clients)}
			for _, tg := range targets {
				g.values = append(g.values, median(rps[tg.name]))
			}
			groups = append(groups, g)
		}
	}
	writeBarChart(b, "benchmarks-listener-redis.svg", "redis-benchmark SET/GET, median of 3 rounds", "requests/s",
		[]string{"direct", "HAProxy (TCP)", "listener, RAW pool", "listener, REDIS pool"}, groups)
}

// benchClients are the client counts of BenchmarkListenerRedis.
func benchClients() []int { return []int{1, 50} }
