// Package servertest starts poolplane's server in-process for tests: a
// bbolt store on t.TempDir(), a loaded poolmgr.Manager and server.New
// serving on loopback, all closed by the test's cleanup. It is the one
// in-process start that the server's external tests, poolctl's and the
// reliability suite share.
package servertest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"

	"github.com/poolplane/poolplane/poolmgr"
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
}

// Server is a running in-process server.
type Server struct {
	Manager  *poolmgr.Manager
	Services *server.Services
	GRPC     *grpc.Server
	// Addr is the address a client dials: host:port, or unix:///path.
	Addr string
}

// Start opens the store, loads the Manager and serves. The test's cleanup
// ends the lease streams, stops the server and closes the Manager and the
// store, in that order.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "pools.db"), o.Store)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mc := poolmgr.ManagerConfig{Store: st, Logger: logger}
	if o.Manager != nil {
		o.Manager(&mc)
	}
	mgr, err := poolmgr.NewManager(mc)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() { _ = mgr.Close() })
	if err := mgr.Load(context.Background()); err != nil {
		t.Fatalf("Load: %v", err)
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
	s := &Server{Manager: mgr, Services: svc, GRPC: gs}
	var lis net.Listener
	if o.Unix {
		// Not t.TempDir(): its path may be longer than a socket's.
		dir, err := os.MkdirTemp("", "servertest")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		path := filepath.Join(dir, "poold.sock")
		if lis, err = net.Listen("unix", path); err != nil {
			t.Fatal(err)
		}
		s.Addr = "unix://" + path
	} else {
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		s.Addr = lis.Addr().String()
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis) // ends with Stop
	}()
	t.Cleanup(func() {
		svc.Lease.Shutdown()
		gs.Stop()
		<-served
		svc.Lease.Wait()
	})
	return s
}
