// Command poold is the poolplane server: it keeps named pools of warm
// upstream connections and serves the poolplane.v1 gRPC API.
//
// Every flag has a POOLPLANE_* environment equivalent (--data-dir is
// POOLPLANE_DATA_DIR); a flag given on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// options are poold's settings.
type options struct {
	listen        string
	dataDir       string
	metricsListen string
	pprof         bool
	logFormat     string
	logLevel      string
	shutdownGrace time.Duration
	history       int
	insecure      bool
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// parseFlags reads flags, falling back to POOLPLANE_* environment variables.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("poold", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7700", "gRPC listen address: host:port, or unix:///path for a node-local socket (mode 0660)")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "directory of the bbolt database (poolplane.db)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:7701", `HTTP address for /metrics, /healthz and /readyz; "off" disables it`)
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof on the metrics listener")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 30*time.Second, "on SIGTERM/SIGINT, how long leases may finish before connections are closed")
	fs.IntVar(&o.history, "history", store.DefaultHistoryLimit, "configuration revisions kept per pool")
	fs.BoolVar(&o.insecure, "insecure", false, "allow a non-loopback --listen without TLS and authentication")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: poold [flags]\n\nEvery flag can also be set as POOLPLANE_<FLAG> (for example POOLPLANE_DATA_DIR).\n\n")
		fs.PrintDefaults()
	}
	set := map[string]bool{}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return o, &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := "POOLPLANE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] {
			if err := fs.Set(f.Name, v); err != nil && envErr == nil {
				envErr = &usageError{fmt.Sprintf("%s=%q: %v", env, v, err)}
			}
		}
	})
	if envErr != nil {
		return o, envErr
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return o, &usageError{fmt.Sprintf("--log-format must be text or json, got %q", o.logFormat)}
	}
	if o.shutdownGrace < 0 {
		return o, &usageError{"--shutdown-grace must not be negative"}
	}
	if o.history < 1 {
		return o, &usageError{"--history must be at least 1"}
	}
	return o, nil
}

func newLogger(o options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, &usageError{fmt.Sprintf("--log-level: %v", err)}
	}
	ho := &slog.HandlerOptions{Level: level}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return slog.New(slog.NewTextHandler(w, ho)), nil
}

// checkListen refuses a listen address reachable from other hosts unless
// insecure is set: poold has no TLS or authentication there yet.
func checkListen(addr string, insecure bool) error {
	if strings.HasPrefix(addr, "unix://") {
		if strings.TrimPrefix(addr, "unix://") == "" {
			return &usageError{"--listen unix:// needs a path"}
		}
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return &usageError{fmt.Sprintf("--listen %q: %v", addr, err)}
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if insecure {
		return nil
	}
	return &usageError{fmt.Sprintf("--listen %s is reachable from other hosts, and poold would serve it without TLS or authentication; "+
		"listen on 127.0.0.1 or a unix:// socket, or pass --insecure to accept the risk", addr)}
}

// listen opens the gRPC listener: TCP, or a unix socket with mode 0660.
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("chmod socket: %w", err)
		}
		return ln, nil
	}
	return net.Listen("tcp", addr)
}

// started is told the bound addresses once poold serves (for tests).
type started func(grpcAddr, metricsAddr string)

// run is poold: it returns the exit status. It serves until ctx ends, then
// shuts down gracefully.
func run(ctx context.Context, args []string, stderr io.Writer, onStart started) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var uerr *usageError
	if errors.As(err, &uerr) {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return 2
	}
	logger, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return 2
	}
	if err := checkListen(o.listen, o.insecure); err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return 2
	}
	if err := serve(ctx, o, logger, onStart); err != nil {
		logger.Error("poold stopped", "err", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, o options, logger *slog.Logger, onStart started) error {
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	dbPath := filepath.Join(o.dataDir, "poolplane.db")
	st, err := store.Open(dbPath, store.Options{HistoryLimit: o.history, Timeout: 250 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%s is in use by another poold (one poold per data directory): %w", dbPath, err)
	}
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()

	mgr, err := poolmgr.NewManager(poolmgr.ManagerConfig{Store: st, Env: poolmgr.Env{Logger: logger}})
	if err != nil {
		return err
	}
	defer mgr.Close()
	if err := mgr.Load(ctx); err != nil {
		return fmt.Errorf("load pools: %w", err)
	}
	logger.Info("pools loaded", "count", len(mgr.Pools()), "data", dbPath)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newPoolCollector(mgr))
	rpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(rpcMetrics)

	gs, srv, err := server.New(server.Config{
		Manager:            mgr,
		Logger:             logger,
		UnaryInterceptors:  []grpc.UnaryServerInterceptor{rpcMetrics.UnaryServerInterceptor()},
		StreamInterceptors: []grpc.StreamServerInterceptor{rpcMetrics.StreamServerInterceptor()},
	})
	if err != nil {
		return err
	}
	rpcMetrics.InitializeMetrics(gs)

	ln, err := listen(o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var (
		metricsAddr string
		hs          *http.Server
		hsDone      = make(chan error, 1) // the metrics server's result, read once
	)
	ready := make(chan struct{})
	if o.metricsListen != "off" && o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics listen: %w", err)
		}
		metricsAddr = mln.Addr().String()
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
		if o.pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { hsDone <- hs.Serve(mln) }()
	}

	healthCtx, stopHealth := context.WithCancel(context.Background())
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		srv.Health.Run(healthCtx, time.Second)
	}()

	serveDone := make(chan error, 1) // Serve's result, read once
	go func() { serveDone <- gs.Serve(ln) }()
	close(ready)
	logger.Info("poold serving", "listen", ln.Addr().String(), "metrics", metricsAddr)
	if onStart != nil {
		onStart(ln.Addr().String(), metricsAddr)
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "grace", o.shutdownGrace)
	case serveErr = <-serveDone:
	}

	// Stop granting leases and say so, let leases finish within the grace
	// period, then cut what is left.
	stopHealth()
	<-healthDone
	srv.Health.Shutdown()
	srv.Lease.Shutdown()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(o.shutdownGrace)
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		logger.Warn("grace period over: closing the remaining leases")
		gs.Stop()
		<-stopped
	}
	srv.Lease.Wait()
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
		if err := <-hsDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("metrics server", "err", err)
		}
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	logger.Info("poold stopped")
	return nil
}
