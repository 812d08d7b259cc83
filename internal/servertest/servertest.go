// Package servertest starts poolplane's server in-process for tests: a
// bbolt store on t.TempDir(), a loaded poolmgr.Manager and server.New
// serving on loopback, all closed by the test's cleanup. It is the one
// in-process start that the server's external tests, poolctl's and the
// reliability suite share; package server's in-package tests use its
// parts in package harness.
package servertest

import (
	"log/slog"
	"testing"

	"google.golang.org/grpc"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"
)

// Options tweak Start. The zero value serves on 127.0.0.1:0 with a
// discarding logger.
type Options struct {
	Store    store.Options
	Logger   *slog.Logger                 // nil: discard
	Manager  func(*poolmgr.ManagerConfig) // after Store and Logger are set
	Server   func(*server.Config)         // after Manager and Logger are set
	GRPC     []grpc.ServerOption          // passed to server.New
	Register func(*grpc.Server)           // extra services, before Serve
	Unix     bool                         // serve on a Unix socket instead of TCP
	// Listeners serves the pools' local listeners (Server.Listeners).
	Listeners bool
}

// Server is a running in-process server.
type Server struct {
	Manager  *poolmgr.Manager
	Services *server.Services
	GRPC     *grpc.Server
	// Addr is the address a client dials: host:port, or unix:///path.
	Addr string
	// Listeners serves the pools' local listeners; nil without
	// Options.Listeners.
	Listeners *listen.Host
}

// Start opens the store, loads the Manager and serves. The test's cleanup
// ends the lease streams, stops the server and closes the Manager and the
// store, in that order.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mod := o.Manager
	var lh *listen.Host
	if o.Listeners {
		lh = harness.Listeners(t, logger)
		mod = func(mc *poolmgr.ManagerConfig) {
			mc.Listeners = lh
			if o.Manager != nil {
				o.Manager(mc)
			}
		}
	}
	mgr := harness.Manager(t, o.Store, logger, mod)
	if lh != nil {
		harness.ServeListeners(t, lh, mgr)
	}
	cfg := server.Config{Manager: mgr, Logger: logger}
	if o.Server != nil {
		o.Server(&cfg)
	}
	gs, svc, err := server.New(cfg, o.GRPC...)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	if o.Register != nil {
		o.Register(gs)
	}
	return &Server{Manager: mgr, Services: svc, GRPC: gs, Addr: harness.Serve(t, gs, svc.Lease, o.Unix), Listeners: lh}
}
