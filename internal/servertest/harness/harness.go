// Package harness holds the parts of an in-process server start that do
// not need package server: a loaded poolmgr.Manager over a bbolt store on
// t.TempDir(), and serving a gRPC server on loopback until the test ends.
// servertest.Start is built on it; package server's own (in-package) tests,
// which cannot import servertest, use it directly, so that the server is
// started one way everywhere.
package harness

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"

	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/store"
)

// Manager opens a store on t.TempDir() with opts, and creates and loads a
// Manager over it, logging to logger (nil: discard). mod, when set,
// changes the Manager's config first. The test's cleanup closes the
// Manager, then the store.
func Manager(t testing.TB, opts store.Options, logger *slog.Logger, mod func(*poolmgr.ManagerConfig)) *poolmgr.Manager {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "pools.db"), opts)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mc := poolmgr.ManagerConfig{Store: st, Logger: logger}
	if mod != nil {
		mod(&mc)
	}
	mgr, err := poolmgr.NewManager(mc)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() { _ = mgr.Close() })
	if err := mgr.Load(context.Background()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	return mgr
}

// Leases is the lease service's part in a shutdown: Shutdown ends its
// streams, Wait waits for them.
type Leases interface {
	Shutdown()
	Wait()
}

// Serve serves gs on 127.0.0.1:0, or on a Unix socket when unix is set,
// and returns the address a client dials: host:port, or unix:///path. The
// test's cleanup ends the lease streams, stops the server, waits for Serve
// to return and then for the lease streams.
func Serve(t testing.TB, gs *grpc.Server, leases Leases, unix bool) string {
	t.Helper()
	var (
		lis  net.Listener
		addr string
		err  error
	)
	if unix {
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
		addr = "unix://" + path
	} else {
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addr = lis.Addr().String()
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis) // ends with Stop
	}()
	t.Cleanup(func() {
		leases.Shutdown()
		gs.Stop()
		<-served
		leases.Wait()
	})
	return addr
}
