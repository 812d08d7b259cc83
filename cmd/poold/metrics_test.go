package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/testkit"
)

var updateCatalog = flag.Bool("update", false, "rewrite "+catalogFile+" from a scrape of poold")

// catalogFile is the list of the metrics and labels poold exports that the
// Grafana dashboard and the alert rules under deploy/ may name: the
// deploy/prometheus module checks them against it, and
// TestMetricsCatalog keeps it equal to what poold serves.
const catalogFile = "../../deploy/prometheus/testdata/metrics.json"

// catalogPrefixes are the metric families the catalog lists: poold's own
// and the gRPC server's. The Go runtime's change with the toolchain.
var catalogPrefixes = []string{"poolplane_", "grpc_server_"}

// enumLabels are the labels whose values poold fixes (the others, like
// pool and endpoint, come from the configuration): the catalog lists their
// values, so that a matcher on a value poold never exports fails the check.
var enumLabels = map[string]bool{"state": true, "connection": true, "result": true, "reason": true, "direction": true}

// catalog maps each series name (a histogram's _bucket, _sum and _count)
// to its labels, each with its values when it is an enum label.
type catalog map[string]map[string][]string

// lease opens a lease on pool through cc and returns its release.
func lease(t *testing.T, cc *grpc.ClientConn, pool string) func() {
	t.Helper()
	ls, err := poolv1.NewLeaseServiceClient(cc).Lease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: pool}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := ls.Recv(); err != nil || m.GetGranted() == nil {
		t.Fatalf("granted: %v %v", m, err)
	}
	return func() {
		t.Helper()
		_ = ls.Send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: true}}})
		if m, err := ls.Recv(); err != nil || m.GetEnded() == nil {
			t.Fatalf("ended: %v %v", m, err)
		}
		_ = ls.CloseSend()
	}
}

// refusedAddr is a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// scrape parses poold's /metrics.
func scrape(t *testing.T, p *poold) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, "http://"+p.metricsAddr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels
// include want, and whether there is one.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			if got[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// buildCatalog lists the series names and labels of mfs.
func buildCatalog(mfs map[string]*dto.MetricFamily) catalog {
	c := catalog{}
	add := func(name string, m *dto.Metric, extra ...string) {
		if c[name] == nil {
			c[name] = map[string][]string{}
		}
		for _, l := range extra {
			if c[name][l] == nil {
				c[name][l] = []string{}
			}
		}
		for _, lp := range m.GetLabel() {
			vals := c[name][lp.GetName()]
			if vals == nil {
				vals = []string{}
			}
			if enumLabels[lp.GetName()] && !slices.Contains(vals, lp.GetValue()) {
				vals = append(vals, lp.GetValue())
				slices.Sort(vals)
			}
			c[name][lp.GetName()] = vals
		}
	}
	for name, mf := range mfs {
		if !slices.ContainsFunc(catalogPrefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		for _, m := range mf.GetMetric() {
			if mf.GetType() == dto.MetricType_HISTOGRAM {
				add(name+"_bucket", m, "le")
				add(name+"_sum", m)
				add(name+"_count", m)
				continue
			}
			add(name, m)
		}
	}
	return c
}

// TestMetricsCatalog starts poold with a pool of two endpoints, one
// refusing, leases, and checks what /metrics says against what happened:
// acquires by connection, connections opened and dials failed by endpoint,
// waits, the build. It then keeps the catalog under deploy/prometheus
// equal to the scrape (go test -run TestMetricsCatalog -update rewrites it),
// and docs/metrics.md naming every poolplane_ metric.
func TestMetricsCatalog(t *testing.T) {
	up := testkit.EchoServer(t)
	down := refusedAddr(t)
	p := startPoold(t, t.TempDir())
	cc := dial(t, p.grpcAddr)
	if _, err := poolv1.NewPoolAdminServiceClient(cc).CreatePool(context.Background(), &poolv1.CreatePoolRequest{PoolId: "two", Pool: &poolv1.Pool{
		Endpoints: []string{up, down}, Limits: &poolv1.Limits{MaxConnections: 2}}}); err != nil {
		t.Fatal(err)
	}
	// The first lease dials the first endpoint; the second, while the
	// first is held, dials the second, which refuses, and is served by a
	// redial of the first after the backoff.
	release1 := lease(t, cc, "two")
	release2 := lease(t, cc, "two")
	release2()
	release1()
	release1 = lease(t, cc, "two") // reused
	release1()

	mfs := scrape(t, p)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"poolplane_connection_acquires_total", map[string]string{"pool": "two", "connection": "new"}, 2},
		{"poolplane_connection_acquires_total", map[string]string{"pool": "two", "connection": "reused"}, 1},
		{"poolplane_connection_opened_total", map[string]string{"pool": "two", "endpoint": up}, 2},
		{"poolplane_connection_opened_total", map[string]string{"pool": "two", "endpoint": down}, 0},
		{"poolplane_connection_dials_total", map[string]string{"pool": "two", "endpoint": up}, 2},
		{"poolplane_connection_dials_total", map[string]string{"pool": "two", "endpoint": down}, 1},
		{"poolplane_connection_dial_failures_total", map[string]string{"pool": "two", "endpoint": down}, 1},
		{"poolplane_connection_dial_failures_total", map[string]string{"pool": "two", "endpoint": up}, 0},
		{"poolplane_connection_waits_total", map[string]string{"pool": "two"}, 2},
		{"poolplane_connection_pending_requests", map[string]string{"pool": "two"}, 0},
		{"poolplane_connection_oldest_wait_seconds", map[string]string{"pool": "two"}, 0},
		{"poolplane_connection_circuit_open", map[string]string{"pool": "two"}, 0},
		{"poolplane_connection_fenced", map[string]string{"pool": "two"}, 0},
		{"poolplane_connection_health_checks_total", map[string]string{"pool": "two", "result": "failed"}, 0},
		{"poolplane_connection_closes_total", map[string]string{"pool": "two", "reason": "max_lease_duration"}, 0},
		{"poolplane_replica_fenced", nil, 0},
		{"poolplane_build_info", nil, 1},
	} {
		if got, ok := value(mfs, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	for _, gone := range []string{"poolplane_connection_created_total", "poolplane_connection_reused_total"} {
		if mfs[gone] != nil {
			t.Errorf("%s is still exported", gone)
		}
	}
	if v := mfs["poolplane_build_info"].GetMetric()[0].GetLabel(); len(v) != 3 {
		t.Errorf("poolplane_build_info labels = %v, want commit, goversion, version", v)
	}

	got := buildCatalog(mfs)
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	if *updateCatalog {
		if err := os.WriteFile(catalogFile, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(catalogFile)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/poold -run TestMetricsCatalog -update writes it)", err)
	}
	if !bytes.Equal(want, b) {
		t.Errorf("%s differs from what poold exports; if the change is meant, run\n\tgo test ./cmd/poold -run TestMetricsCatalog -update\nand check the dashboard and the rules (cd deploy/prometheus && go test ./...). Scraped:\n%s", catalogFile, b)
	}

	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range mfs {
		if strings.HasPrefix(name, "poolplane_") && !bytes.Contains(doc, []byte("`"+name)) {
			t.Errorf("docs/metrics.md does not name %s", name)
		}
	}
}
