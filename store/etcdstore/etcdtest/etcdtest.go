// Package etcdtest starts a single-member embedded etcd server for tests,
// on loopback ports in a temporary directory, with its logs discarded.
// The member may serve its clients over TLS (with a throwaway CA, see
// [NewPKI]) and may have authentication enabled ([Server.EnableAuth]).
// Only test code imports it: it links the whole etcd server.
package etcdtest

import (
	"context"
	"crypto/tls"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// startTimeout bounds the wait for the member to be ready.
const startTimeout = 30 * time.Second

// Config configures [StartWith]. The zero value is what [Start] starts:
// plaintext clients, no authentication.
type Config struct {
	// TLS serves the client port over TLS, with a certificate for
	// 127.0.0.1 issued by a CA of its own ([Server.PKI]).
	TLS bool
	// ClientCertAuth requires every client to present a certificate
	// issued by that CA (mTLS). It implies TLS.
	ClientCertAuth bool
	// MaxTxnOps is the member's --max-txn-ops. Default 1024 (etcd's own
	// default is 128), so an ApplyPools of many pools fits one Txn.
	MaxTxnOps uint
}

// Server is a running (or stopped) embedded etcd member.
type Server struct {
	dir       string
	cfg       Config
	pki       *PKI // nil without TLS
	clientURL url.URL
	peerURL   url.URL
	e         *embed.Etcd
}

// Start starts a member on 127.0.0.1 with kernel-chosen ports, data in a
// t.TempDir(), and stops it at cleanup. Restart reuses the ports.
func Start(t testing.TB) *Server { return StartWith(t, Config{}) }

// StartWith starts a member as Start does, configured by cfg.
func StartWith(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.ClientCertAuth {
		cfg.TLS = true
	}
	s := &Server{
		dir:       t.TempDir(),
		cfg:       cfg,
		clientURL: url.URL{Scheme: "http", Host: "127.0.0.1:0"},
		peerURL:   url.URL{Scheme: "http", Host: "127.0.0.1:0"},
	}
	if cfg.TLS {
		s.pki = NewPKI(t)
		s.clientURL.Scheme = "https"
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
	if s.cfg.MaxTxnOps > 0 {
		cfg.MaxTxnOps = s.cfg.MaxTxnOps
	}
	cfg.MaxRequestBytes = 8 << 20
	cfg.BcryptCost = 4 // bcrypt.MinCost: each authentication costs ~1 ms, not ~1 s under -race
	if s.pki != nil {
		cfg.ClientTLSInfo.CertFile = s.pki.ServerCertFile
		cfg.ClientTLSInfo.KeyFile = s.pki.ServerKeyFile
		cfg.ClientTLSInfo.TrustedCAFile = s.pki.CAFile
		cfg.ClientTLSInfo.ClientCertAuth = s.cfg.ClientCertAuth
	}
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

// PKI returns the CA and certificates of a member started with TLS, nil
// for a plaintext one.
func (s *Server) PKI() *PKI { return s.pki }

// ClientTLS returns the TLS configuration a client of this member needs:
// nil for a plaintext member; else one trusting the member's CA, with the
// client certificate when the member requires one.
func (s *Server) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	if s.pki == nil {
		return nil
	}
	return s.pki.ClientTLS(t, s.cfg.ClientCertAuth)
}

// Client returns a client of this member with the given credentials
// (none if username is empty), closed at cleanup.
func (s *Server) Client(t testing.TB, username, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: startTimeout,
		TLS:         s.ClientTLS(t),
		Username:    username,
		Password:    password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// User is an etcd user that [Server.EnableAuth] creates.
type User struct {
	Name, Password string
	// Prefix is the key prefix the user may read and write (a role
	// named after the user holds the grant). Empty: no grant.
	Prefix string
}

// RootUser is the name of the root user that EnableAuth creates.
const RootUser = "root"

// EnableAuth creates the root user with rootPassword and users, each
// with a role of its own granting read and write on its Prefix, then
// enables authentication: from then on every client needs credentials.
func (s *Server) EnableAuth(t testing.TB, rootPassword string, users ...User) {
	t.Helper()
	cli := s.Client(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("etcdtest: %s: %v", what, err)
		}
	}
	_, err := cli.UserAdd(ctx, RootUser, rootPassword)
	must("add root user", err)
	_, err = cli.UserGrantRole(ctx, RootUser, "root")
	must("grant root role", err)
	for _, u := range users {
		_, err := cli.RoleAdd(ctx, u.Name)
		must("add role "+u.Name, err)
		if u.Prefix != "" {
			_, err = cli.RoleGrantPermission(ctx, u.Name, u.Prefix, clientv3.GetPrefixRangeEnd(u.Prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			must("grant "+u.Prefix+" to "+u.Name, err)
		}
		_, err = cli.UserAdd(ctx, u.Name, u.Password)
		must("add user "+u.Name, err)
		_, err = cli.UserGrantRole(ctx, u.Name, u.Name)
		must("grant role "+u.Name, err)
	}
	_, err = cli.AuthEnable(ctx)
	must("enable auth", err)
}

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
