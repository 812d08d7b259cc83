package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
)

// poold at its default level (INFO) logs no line per lease, stats poll or
// health check: a benchmark's leases used to log one line each. It still
// logs admin changes, "pools loaded" once, and durations as "5s".
func TestPooldLogsNoLinePerLease(t *testing.T) {
	up := testkit.EchoServer(t)
	p := startPoold(t, t.TempDir(), "--log-format", "json")
	cc := dial(t, p.grpcAddr)
	ctx := context.Background()
	if _, err := poolv1.NewPoolAdminServiceClient(cc).CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "echo",
		Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(p.grpcAddr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	const leases = 50
	for i := range leases {
		conn, err := c.Lease(ctx, "echo")
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			_ = conn.Close()
		} else {
			conn.Discard()
		}
		if _, err := c.PoolStats(ctx, "echo"); err != nil {
			t.Fatal(err)
		}
		if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: ""}); err != nil {
			t.Fatal(err)
		}
	}
	// Closing the client ends its warm lease streams (the server sees them
	// cancelled); wait for that, so none is still open at the shutdown.
	_ = c.Close()
	leaseCalls := func(name string) float64 {
		_, body := httpGet(t, "http://"+p.metricsAddr+"/metrics")
		sum := 0.0
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, name+"{") && strings.Contains(line, `grpc_method="Lease"`) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				sum += v
			}
		}
		return sum
	}
	pollUntil(t, 10*time.Second, func() bool { return leaseCalls("grpc_server_handled_total") == leaseCalls("grpc_server_started_total") },
		func() { t.Fatal("lease streams still open after the client closed") })
	if code := p.stop(t); code != 0 { // every call has ended, and logged
		t.Fatalf("exit %d, log:\n%s", code, p.log)
	}

	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.log.String()))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not a JSON log line: %q", sc.Text())
		}
		lines = append(lines, l)
	}
	count := func(match func(map[string]any) bool) int {
		n := 0
		for _, l := range lines {
			if match(l) {
				n++
			}
		}
		return n
	}
	if n := count(func(l map[string]any) bool {
		s, _ := l["grpc.service"].(string)
		return s == "poolplane.v1.LeaseService" || s == "poolplane.v1.StatsService" || s == "grpc.health.v1.Health"
	}); n > 0 {
		t.Errorf("%d lines at INFO for %d leases, stats polls and health checks:\n%s", n, leases, p.log)
	}
	if n := count(func(l map[string]any) bool { return l["grpc.method"] == "CreatePool" }); n == 0 {
		t.Errorf("no line for CreatePool, an admin change:\n%s", p.log)
	}
	if n := count(func(l map[string]any) bool { return l["msg"] == "pools loaded" }); n != 1 {
		t.Errorf("%q logged %d times, want once:\n%s", "pools loaded", n, p.log)
	}
	if n := count(func(l map[string]any) bool { return l["msg"] == "shutting down" && l["grace"] == "5s" }); n != 1 {
		t.Errorf("no %q line with grace %q:\n%s", "shutting down", "5s", p.log)
	}
	if len(lines) > 20 {
		t.Errorf("%d lines for one pool and %d leases:\n%s", len(lines), leases, p.log)
	}
}

// Durations, nested in groups too, are written as Go writes them in both
// formats, not as nanoseconds in JSON.
func TestLogDurationsReadable(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		l, err := newLogger(options{logFormat: format, logLevel: "info"}, &buf)
		if err != nil {
			t.Fatal(err)
		}
		l.Info("x", "wait", 1500*time.Millisecond, slog.Group("dial", "timeout", 2*time.Minute))
		out := buf.String()
		want := []string{`"wait":"1.5s"`, `"dial":{"timeout":"2m0s"}`}
		if format == "text" {
			want = []string{"wait=1.5s", "dial.timeout=2m0s"}
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: %q lacks %s", format, out, w)
			}
		}
	}
}
