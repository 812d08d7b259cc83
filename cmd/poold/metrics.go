package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	versionpkg "github.com/poolplane/poolplane/internal/version"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/poolplane/poolplane/poolmgr"
)

// metricsServer is the HTTP listener of /metrics, /healthz, /readyz and,
// with --pprof, /debug/pprof. Owned by serve: startMetrics starts its
// goroutine, stop ends it and waits.
type metricsServer struct {
	hs    *http.Server
	ln    net.Listener
	donec chan error // the server's result, read once by stop; size 1 so Serve never waits
}

// startMetrics opens --metrics-listen under the exposure rules of
// checkMetricsListen: beyond loopback it serves HTTPS with the gRPC
// listener's certificate (certs) and, with --tls-client-ca, requires a
// verified client certificate. ready is closed once poold serves
// (/readyz).
func startMetrics(o options, reg *prometheus.Registry, certs *certReloader, ready <-chan struct{}, logger *slog.Logger) (*metricsServer, error) {
	exp, err := checkMetricsListen(o)
	if err != nil {
		return nil, err
	}
	return openMetrics(o.metricsListen, exp, o.tlsClientCA, reg, certs, ready, logger)
}

// openMetrics serves the metrics listener on addr as exp says.
func openMetrics(addr string, exp metricsExposure, clientCA string, reg *prometheus.Registry, certs *certReloader,
	ready <-chan struct{}, logger *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	m := &metricsServer{ln: ln, donec: make(chan error, 1)}
	if exp.wide && exp.tls {
		tcfg, err := serverTLSConfig(certs, clientCA)
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		if exp.mtls {
			tcfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
		m.ln = tls.NewListener(ln, tcfg)
	}
	if exp.wide && !exp.mtls {
		logger.Warn("--insecure: the metrics listener is reachable from other hosts without client certificates",
			"metrics", ln.Addr().String(), "tls", exp.tls, "pprof", exp.pprof)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-ready:
			fmt.Fprintln(w, "ready")
		default:
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	})
	if exp.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	m.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { m.donec <- m.hs.Serve(m.ln) }()
	return m, nil
}

// addr is the bound address, "" for a nil server (--metrics-listen off).
func (m *metricsServer) addr() string {
	if m == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// stop shuts the server down within 5s and waits for it. A nil server is
// a no-op.
func (m *metricsServer) stop(logger *slog.Logger) {
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = m.hs.Shutdown(ctx)
	cancel()
	if err := <-m.donec; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("metrics server", "err", err)
	}
}

// poolCollector exports every pool's Stats snapshot at scrape time, named
// after OpenTelemetry's db.client.connection.* conventions with a poolplane_
// prefix, plus poolplane_build_info and this replica's fence. It starts no
// goroutines: each scrape reads the snapshots. docs/metrics.md lists every
// metric; a test checks that list, the Grafana dashboard and the alert rules
// under deploy/ against a scrape.
type poolCollector struct {
	mgr *poolmgr.Manager
	// closeReasons are every value of the reason label of closes_total:
	// each is exported, zero or not, so that rate() and alerts see a
	// series from the pool's first scrape.
	closeReasons []string
	buildInfo    prometheus.Metric

	count, max, idleMin, idleMax, pending, oldestWait, dialing, serving *prometheus.Desc
	circuitOpen, fenced                                                 *prometheus.Desc
	timeouts, acquires, waits, backlog                                  *prometheus.Desc
	dials, dialFailures, opened, healthChecks, closes, bytes            *prometheus.Desc
	createTime, waitTime, useTime                                       *prometheus.Desc
	replicaFenced                                                       *prometheus.Desc
}

func newPoolCollector(mgr *poolmgr.Manager) *poolCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("poolplane_connection_"+name, help, append([]string{"pool"}, labels...), nil)
	}
	version, commit := buildVersion()
	return &poolCollector{
		mgr:          mgr,
		closeReasons: poolmgr.CloseReasons(),
		buildInfo: prometheus.MustNewConstMetric(
			prometheus.NewDesc("poolplane_build_info", "Always 1; the labels say which build of poold this is.",
				nil, prometheus.Labels{"version": version, "commit": commit, "goversion": runtime.Version()}),
			prometheus.GaugeValue, 1),
		count:        d("count", "Connections open, by state (idle, used); db.client.connection.count.", "state"),
		max:          d("max", "Most connections allowed (limits.max_connections, this replica's share of it); db.client.connection.max."),
		idleMin:      d("idle_min", "Connections kept idle (limits.min_idle); db.client.connection.idle.min."),
		idleMax:      d("idle_max", "Most idle connections kept (limits.max_idle); db.client.connection.idle.max."),
		pending:      d("pending_requests", "Acquirers waiting for a connection; db.client.connection.pending_requests."),
		oldestWait:   d("oldest_wait_seconds", "How long the longest-waiting acquirer has waited so far, 0 with none waiting (PgBouncer's maxwait)."),
		dialing:      d("dialing", "Dials in progress."),
		serving:      d("serving", "1 while the pool can hand out connections (active, circuit closed)."),
		circuitOpen:  d("circuit_open", "1 while the dial circuit is open: dials failed repeatedly and acquires that need one fail fast."),
		fenced:       d("fenced", "1 while this replica holds no share of the pool's fleet-wide limit (fenced)."),
		timeouts:     d("timeouts_total", "Acquires that timed out; db.client.connection.timeouts."),
		acquires:     d("acquires_total", "Successful acquires, by the connection that served them: reused (it served a lease before) or new (its first lease).", "connection"),
		waits:        d("waits_total", "Acquires that found no idle connection and queued."),
		backlog:      d("backlog_rejections_total", "Acquires refused because max_waiters were queued."),
		dials:        d("dials_total", "Dials started, by configured endpoint.", "endpoint"),
		dialFailures: d("dial_failures_total", "Dials that failed, by configured endpoint.", "endpoint"),
		opened:       d("opened_total", "Connections opened (dials that succeeded), by configured endpoint.", "endpoint"),
		healthChecks: d("health_checks_total", "Health checks of idle connections, by result (ok, failed).", "result"),
		closes:       d("closes_total", "Connections closed, by reason.", "reason"),
		bytes:        d("bytes_total", "Bytes relayed, by direction (in: from the upstream, out: to it).", "direction"),
		createTime:   d("create_time_seconds", "Time to dial a connection, TLS included; db.client.connection.create_time."),
		waitTime:     d("wait_time_seconds", "Time acquires waited; db.client.connection.wait_time."),
		useTime:      d("use_time_seconds", "Time leases were held; db.client.connection.use_time."),
		replicaFenced: prometheus.NewDesc("poolplane_replica_fenced",
			"1 while this replica may no longer count itself among the replicas sharing the store: its fleet-scoped pools hold no share and serve nothing.", nil, nil),
	}
}

// buildVersion returns the version and VCS revision of this build
// (internal/version: stamped by make build, else what the go command
// recorded), for poolplane_build_info.
func buildVersion() (version, commit string) {
	v := versionpkg.Get()
	return v.Version, v.Commit
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.count, c.max, c.idleMin, c.idleMax, c.pending, c.oldestWait, c.dialing, c.serving,
		c.circuitOpen, c.fenced, c.timeouts, c.acquires, c.waits, c.backlog, c.dials, c.dialFailures, c.opened,
		c.healthChecks, c.closes, c.bytes, c.createTime, c.waitTime, c.useTime, c.replicaFenced} {
		ch <- d
	}
	ch <- c.buildInfo.Desc()
}

// Collect implements prometheus.Collector.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- c.buildInfo
	ch <- prometheus.MustNewConstMetric(c.replicaFenced, prometheus.GaugeValue, boolValue(c.mgr.ReplicaSet().Fenced))
	for _, id := range c.mgr.Pools() {
		p, err := c.mgr.Pool(id)
		if err != nil {
			continue // deleted since Pools
		}
		st := p.Stats()
		cfg := p.Config()
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{id}, labels...)...)
		}
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{id}, labels...)...)
		}
		gauge(c.count, float64(st.Idle), "idle")
		gauge(c.count, float64(st.InUse), "used")
		gauge(c.max, float64(st.Max))
		gauge(c.idleMin, float64(st.MinIdle))
		gauge(c.idleMax, float64(cfg.Limits.MaxIdle))
		gauge(c.pending, float64(st.Waiters))
		gauge(c.oldestWait, st.OldestWait.Seconds())
		gauge(c.dialing, float64(st.Dialing))
		gauge(c.serving, boolValue(p.Serving()))
		gauge(c.circuitOpen, boolValue(st.CircuitOpen))
		gauge(c.fenced, boolValue(st.Fenced))
		counter(c.timeouts, st.Timeouts)
		counter(c.acquires, st.Reused, "reused")
		counter(c.acquires, st.New, "new")
		counter(c.waits, st.Waits)
		counter(c.backlog, st.BacklogRejections)
		for _, e := range st.Endpoints {
			counter(c.dials, e.Dials, e.Endpoint)
			counter(c.dialFailures, e.DialFailures, e.Endpoint)
			counter(c.opened, e.Opened, e.Endpoint)
		}
		counter(c.healthChecks, st.HealthChecks-st.HealthFailures, "ok")
		counter(c.healthChecks, st.HealthFailures, "failed")
		for _, reason := range c.closeReasons {
			counter(c.closes, st.Closes[reason], reason)
		}
		counter(c.bytes, st.BytesIn, "in")
		counter(c.bytes, st.BytesOut, "out")
		ch <- constHistogram(c.createTime, st.DialTime, id)
		ch <- constHistogram(c.waitTime, st.WaitTime, id)
		ch <- constHistogram(c.useTime, st.HoldTime, id)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// constHistogram converts a poolmgr histogram (per-bucket counts) to
// Prometheus's cumulative buckets.
func constHistogram(d *prometheus.Desc, h poolmgr.Histogram, pool string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			cum += h.Counts[i]
		}
		buckets[b.Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets, pool)
}
