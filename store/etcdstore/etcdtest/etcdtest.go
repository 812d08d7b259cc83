// Package etcdtest starts a single-member embedded etcd server for tests,
// on loopback ports in a temporary directory, with its logs discarded.
// Only test code imports it: it links the whole etcd server.
package etcdtest

import (
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// startTimeout bounds the wait for the member to be ready.
const startTimeout = 30 * time.Second

// Server is a running (or stopped) embedded etcd member.
type Server struct {
	dir       string
	clientURL url.URL
	peerURL   url.URL
	e         *embed.Etcd
}

// Start starts a member on 127.0.0.1 with kernel-chosen ports, data in a
// t.TempDir(), and stops it at cleanup. Restart reuses the ports.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		dir:       t.TempDir(),
		clientURL: url.URL{Scheme: "http", Host: "127.0.0.1:0"},
		peerURL:   url.URL{Scheme: "http", Host: "127.0.0.1:0"},
	}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = s.dir
	cfg.ListenClientUrls = []url.URL{s.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	cfg.MaxTxnOps = 1024 // ApplyPools of many pools in one Txn
	cfg.MaxRequestBytes = 8 << 20
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("etcdtest: start: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(startTimeout):
		e.Close()
		t.Fatal("etcdtest: member not ready")
	}
	// Pin the ports the kernel chose, for Restart.
	s.clientURL.Host = e.Clients[0].Addr().String()
	s.peerURL.Host = e.Peers[0].Addr().String()
	s.e = e
}

// Endpoint returns the client address, host:port.
func (s *Server) Endpoint() string { return s.clientURL.Host }

// Stop stops the member; it is idempotent. The data stays for Restart.
func (s *Server) Stop() {
	if s.e == nil {
		return
	}
	s.e.Close()
	s.e = nil
}

// Restart starts a stopped member again on the same ports and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.e != nil {
		t.Fatal("etcdtest: Restart of a running member")
	}
	s.start(t)
}

// IgnoreGoroutines are goleak options for goroutines that may outlive a
// stopped member or a closed etcd client for a moment: grpc-go's callback
// serializer of a closed ClientConn (the etcd client's, and the member's
// own loopback client) exits asynchronously, and the member's FIFO
// scheduler drains after Close returns. Tests that start members use them
// in goleak.VerifyTestMain.
func IgnoreGoroutines() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/schedule.(*fifo).run"),
	}
}
