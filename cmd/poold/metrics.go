package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
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
// prefix. It starts no goroutines: each scrape reads the snapshots.
type poolCollector struct {
	mgr *poolmgr.Manager

	count, max, idleMin, idleMax, pending, dialing, serving *prometheus.Desc
	timeouts, acquires, reused, created, backlog            *prometheus.Desc
	dials, dialFailures, closes, bytes                      *prometheus.Desc
	createTime, waitTime, useTime                           *prometheus.Desc
}

func newPoolCollector(mgr *poolmgr.Manager) *poolCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("poolplane_connection_"+name, help, append([]string{"pool"}, labels...), nil)
	}
	return &poolCollector{
		mgr:          mgr,
		count:        d("count", "Connections open, by state (idle, used); db.client.connection.count.", "state"),
		max:          d("max", "Most connections allowed (limits.max_connections); db.client.connection.max."),
		idleMin:      d("idle_min", "Connections kept idle (limits.min_idle); db.client.connection.idle.min."),
		idleMax:      d("idle_max", "Most idle connections kept (limits.max_idle); db.client.connection.idle.max."),
		pending:      d("pending_requests", "Acquirers waiting for a connection; db.client.connection.pending_requests."),
		dialing:      d("dialing", "Dials in progress."),
		serving:      d("serving", "1 while the pool can hand out connections (active, circuit closed)."),
		timeouts:     d("timeouts_total", "Acquires that timed out; db.client.connection.timeouts."),
		acquires:     d("acquires_total", "Successful acquires."),
		reused:       d("reused_total", "Acquires served by an idle connection."),
		created:      d("created_total", "Acquires served by a new connection."),
		backlog:      d("backlog_rejections_total", "Acquires refused because max_waiters were queued."),
		dials:        d("dials_total", "Dials started."),
		dialFailures: d("dial_failures_total", "Dials that failed."),
		closes:       d("closes_total", "Connections closed, by reason.", "reason"),
		bytes:        d("bytes_total", "Bytes relayed, by direction (in: from the upstream, out: to it).", "direction"),
		createTime:   d("create_time_seconds", "Time to dial a connection, TLS included; db.client.connection.create_time."),
		waitTime:     d("wait_time_seconds", "Time acquires waited; db.client.connection.wait_time."),
		useTime:      d("use_time_seconds", "Time leases were held; db.client.connection.use_time."),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.count, c.max, c.idleMin, c.idleMax, c.pending, c.dialing, c.serving,
		c.timeouts, c.acquires, c.reused, c.created, c.backlog, c.dials, c.dialFailures, c.closes, c.bytes,
		c.createTime, c.waitTime, c.useTime} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
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
		gauge(c.dialing, float64(st.Dialing))
		serving := 0.0
		if p.Serving() {
			serving = 1
		}
		gauge(c.serving, serving)
		counter(c.timeouts, st.Timeouts)
		counter(c.acquires, st.Acquires)
		counter(c.reused, st.Reused)
		counter(c.created, st.New)
		counter(c.backlog, st.BacklogRejections)
		counter(c.dials, st.Dials)
		counter(c.dialFailures, st.DialFailures)
		for reason, n := range st.Closes {
			counter(c.closes, n, reason)
		}
		counter(c.bytes, st.BytesIn, "in")
		counter(c.bytes, st.BytesOut, "out")
		ch <- constHistogram(c.createTime, st.DialTime, id)
		ch <- constHistogram(c.waitTime, st.WaitTime, id)
		ch <- constHistogram(c.useTime, st.HoldTime, id)
	}
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
