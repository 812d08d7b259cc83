package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/poolplane/poolplane/internal/version"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store/etcdstore"
)

// serve runs poold until ctx ends: the core (store, replica set, pools),
// the security around it, the gRPC and metrics listeners, then the
// graceful shutdown.
func serve(ctx context.Context, o options, logger *slog.Logger, onStart started) error {
	if o.maxProcs > 0 {
		runtime.GOMAXPROCS(o.maxProcs)
	}
	sec, err := openSecurity(o, logger)
	if err != nil {
		return err
	}
	defer sec.close()

	c, err := openCore(ctx, o, sec, logger)
	if err != nil {
		return err
	}
	defer c.close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newPoolCollector(c.mgr))
	rpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(rpcMetrics)

	gs, srv, err := server.New(server.Config{
		Manager:              c.mgr,
		Logger:               logger,
		Auth:                 sec.auth,
		PublicPoolHealth:     o.publicHealth,
		MaxRecvMsgSize:       o.maxRecvMsgSize,
		MaxConcurrentStreams: uint32(o.maxConcurrentStreams),
		MaxStatsWatchers:     o.maxStatsWatchers,
		UnaryInterceptors:    []grpc.UnaryServerInterceptor{rpcMetrics.UnaryServerInterceptor()},
		StreamInterceptors:   []grpc.StreamServerInterceptor{rpcStreamMetrics(rpcMetrics)},
	}, sec.grpcOpts...)
	if err != nil {
		return err
	}
	rpcMetrics.InitializeMetrics(gs)

	ln, err := openAPIListener(o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ready := make(chan struct{})
	var ms *metricsServer
	if o.metricsListen != "off" && o.metricsListen != "" {
		if ms, err = startMetrics(o, reg, sec.certs, ready, logger); err != nil {
			_ = ln.Close()
			return err
		}
	}

	healthCtx, stopHealth := context.WithCancel(context.Background())
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		_ = srv.Health.Run(healthCtx, time.Second) // ends with healthCtx
	}()

	serveDone := make(chan error, 1) // Serve's result, read once
	go func() { serveDone <- gs.Serve(ln) }()
	close(ready)
	metricsAddr := ms.addr()
	// The Manager logged "pools loaded" (how many, how many failed).
	logger.Info("poold serving", "version", version.Get().Version, "listen", ln.Addr().String(), "metrics", metricsAddr, "data", c.where, "follow", c.shared, "max_procs", runtime.GOMAXPROCS(0))
	if onStart != nil {
		onStart(ln.Addr().String(), metricsAddr)
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "grace", o.shutdownGrace)
	case serveErr = <-serveDone:
	}
	stopHealth()
	<-healthDone
	shutdown(gs, srv, c.listeners, o.shutdownGrace, logger)
	ms.stop(logger)
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	logger.Info("poold stopped")
	return nil
}

// core is what poold serves: the store, the replica set's membership (with
// an etcd store) and the Manager with every pool loaded.
type core struct {
	st      closingStore
	where   string // the store, for the log
	shared  bool   // the store is shared with other replicas
	members *etcdstore.Membership
	mgr     *poolmgr.Manager
	// listeners serves the pools' local listeners, opened by Load.
	listeners *listen.Host
}

// openCore opens the store, joins the replica set of a shared store and
// loads every pool before poold serves.
func openCore(ctx context.Context, o options, sec *security, logger *slog.Logger) (_ *core, err error) {
	warn := func(msg string) { logger.Warn(msg) }
	c := &core{shared: o.store != "bolt"}
	if c.st, c.where, err = openStore(ctx, o, warn); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	var secretKey []byte
	if o.secretKeyFile != "" {
		if secretKey, err = readSecretKey(o.secretKeyFile, warn); err != nil {
			return nil, err
		}
	}
	mcfg := poolmgr.ManagerConfig{Store: c.st, SecretKey: secretKey, Follow: c.shared, Logger: logger,
		Env: poolmgr.Env{Logger: logger, Upstreams: o.allowlist}}
	if es, ok := c.st.(*etcdstore.Store); ok {
		id := o.replicaID
		if id == "" {
			id = defaultReplicaID()
		}
		if c.members, err = es.Join(id, 0); err != nil {
			return nil, err
		}
		jctx, cancel := context.WithTimeout(ctx, storeLoadTimeout)
		err = c.members.WaitReady(jctx)
		cancel()
		if err != nil {
			return nil, err
		}
		mcfg.Replicas = c.members
		logger.Info("joined the replica set", "replica_id", id, "store", o.store)
	}
	if len(o.allowUpstream) == 0 {
		logger.Info("no --allow-upstream: pools may reach any upstream but link-local and metadata addresses (the default of a loopback or unix:// --listen)")
	}
	if c.listeners, err = listen.New(listen.Config{Logger: logger, TLS: sec.listenerTLS, Authorize: sec.authorizeLease}); err != nil {
		return nil, err
	}
	mcfg.Listeners = c.listeners
	if c.mgr, err = poolmgr.NewManager(mcfg); err != nil {
		return nil, err
	}
	c.listeners.SetPools(c.mgr)
	loadCtx, cancelLoad := context.WithTimeout(ctx, storeLoadTimeout)
	err = c.mgr.Load(loadCtx)
	cancelLoad()
	if err != nil {
		return nil, fmt.Errorf("load pools: %w", err)
	}
	return c, nil
}

// close closes the pools, leaves the replica set and closes the store, in
// that order.
func (c *core) close() {
	if c.listeners != nil {
		c.listeners.Close()
	}
	if c.mgr != nil {
		_ = c.mgr.Close()
	}
	if c.members != nil {
		_ = c.members.Close()
	}
	_ = c.st.Close()
}

// security is poold's authentication and transport security, and the
// watcher that reloads them when their files change.
type security struct {
	auth     *server.Authenticator // nil without --auth-file
	certs    *certReloader         // nil without --tls-cert
	grpcOpts []grpc.ServerOption
	// listenerTLS serves pool listeners with tls: the gRPC listener's
	// certificate, client certificates required (nil without
	// --tls-client-ca).
	listenerTLS *tls.Config
	w           *watcher
}

func openSecurity(o options, logger *slog.Logger) (*security, error) {
	sec := &security{w: &watcher{interval: o.reloadInterval, logger: logger}}
	if o.authFile != "" {
		ps, err := server.LoadAuthFile(o.authFile)
		if err != nil {
			return nil, err
		}
		if sec.auth, err = server.NewAuthenticator(ps); err != nil {
			return nil, err
		}
		sec.w.items = append(sec.w.items, authReloadable(o.authFile, sec.auth))
	}
	if o.tlsCert != "" {
		var err error
		if sec.certs, err = newCertReloader(o.tlsCert, o.tlsKey); err != nil {
			return nil, err
		}
		tcfg, err := serverTLSConfig(sec.certs, o.tlsClientCA)
		if err != nil {
			return nil, err
		}
		sec.grpcOpts = append(sec.grpcOpts, grpc.Creds(credentials.NewTLS(tcfg)))
		if o.tlsClientCA != "" {
			sec.listenerTLS = tcfg.Clone()
			sec.listenerTLS.ClientAuth = tls.RequireAndVerifyClientCert
		}
		sec.w.items = append(sec.w.items, reloadable{name: "TLS certificate " + o.tlsCert, files: []string{o.tlsCert, o.tlsKey}, reload: sec.certs.reload})
	}
	if o.insecure && (o.tlsCert == "" || o.authFile == "") {
		logger.Warn("--insecure: serving without TLS and authentication where they are missing", "listen", o.listen,
			"tls", o.tlsCert != "", "auth", o.authFile != "")
	}
	if len(sec.w.items) > 0 {
		sec.w.start()
	}
	return sec, nil
}

// authorizeLease decides whether the client of a pool listener with tls
// may lease pool id: the principal --auth-file maps its certificate to,
// or, without an auth file, any certificate --tls-client-ca verified.
func (sec *security) authorizeLease(cert *x509.Certificate, id string) (listen.Grant, error) {
	if sec.auth == nil {
		return listen.Grant{Holder: cert.Subject.String()}, nil
	}
	g, err := sec.auth.AuthorizeLease(cert, id)
	if err != nil {
		return listen.Grant{}, err
	}
	return listen.Grant{Holder: g.Holder, Revoked: g.Revoked, Release: g.Release}, nil
}

// close stops the reload watcher.
func (sec *security) close() {
	if len(sec.w.items) > 0 {
		sec.w.stop()
	}
}

// shutdown stops granting leases and says so, lets leases finish within
// the grace period, then ends what is left: each lease with
// END_REASON_SHUTDOWN, and streams that do not end within endLeasesWait
// are cut. It returns once every relay goroutine has exited.
func shutdown(gs *grpc.Server, srv *server.Services, lh *listen.Host, grace time.Duration, logger *slog.Logger) {
	srv.Health.Shutdown()
	srv.Lease.Shutdown()
	lh.Shutdown()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	idle := make(chan struct{}) // the pool listeners' connections are gone
	go func() {
		lh.Wait()
		close(idle)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for stopped != nil || idle != nil {
		select {
		case <-stopped:
			stopped = nil
			continue
		case <-idle:
			idle = nil
			continue
		case <-timer.C:
		}
		logger.Warn("grace period over: ending the remaining leases")
		ectx, cancel := context.WithTimeout(context.Background(), endLeasesWait)
		lh.EndLeases(ectx)
		srv.Lease.EndLeases(ectx)
		if stopped != nil {
			select {
			case <-stopped:
			case <-ectx.Done():
				gs.Stop()
				<-stopped
			}
		}
		cancel()
		break
	}
	srv.Lease.Wait()
}
