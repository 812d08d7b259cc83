package etcdstore_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"
	"github.com/poolplane/poolplane/store/storetest"
)

// secureEtcd starts a member that requires mTLS and authentication, with
// the user "poolplane" (password "s3cret") granted the prefix "pp".
func secureEtcd(t *testing.T) *etcdtest.Server {
	t.Helper()
	srv := etcdtest.StartWith(t, etcdtest.Config{ClientCertAuth: true})
	srv.EnableAuth(t, "r00t", etcdtest.User{Name: "poolplane", Password: "s3cret", Prefix: "pp"})
	return srv
}

// newStore opens a store on srv with cfg's security settings, closed at
// cleanup.
func newStore(t *testing.T, srv *etcdtest.Server, cfg etcdstore.Config) (*etcdstore.Store, error) {
	t.Helper()
	cfg.Endpoints = []string{srv.Endpoint()}
	if cfg.Prefix == "" {
		cfg.Prefix = "pp"
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	s, err := etcdstore.New(cfg)
	if err == nil {
		t.Cleanup(func() { _ = s.Close() })
	}
	return s, err
}

// The store works over mTLS with the right credentials: writes, reads,
// history, watches and the replica set (etcd leases) all pass etcd's
// permission checks within the granted prefix.
func TestTLSAuthWorks(t *testing.T) {
	srv := secureEtcd(t)
	s, err := newStore(t, srv, etcdstore.Config{TLS: srv.ClientTLS(t), Username: "poolplane", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	rev, err := s.Put(ctx, "pools/a", []byte("v1"), store.Absent(), "t")
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Watch(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "pools/a", []byte("v2"), store.AtRevision(rev), "t"); err != nil {
		t.Fatal(err)
	}
	if ev := storetest.Recv(t, w); string(ev.KV.Value) != "v2" {
		t.Errorf("watched %+v", ev)
	}
	if h, err := s.History(ctx, "pools/a"); err != nil || len(h) != 2 {
		t.Errorf("History = %v, %v", h, err)
	}
	ms, err := s.Join("r1", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ms.WaitReady(wctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if r, n := ms.Members(); r != 0 || n != 1 {
		t.Errorf("Members = %d, %d", r, n)
	}
}

// Wrong or missing credentials and missing TLS fail, and say why.
func TestTLSAuthRefused(t *testing.T) {
	srv := secureEtcd(t)
	tlsCfg := srv.ClientTLS(t)
	pki := srv.PKI()

	t.Run("wrong password", func(t *testing.T) {
		_, err := newStore(t, srv, etcdstore.Config{TLS: tlsCfg, Username: "poolplane", Password: "nope"})
		if !errors.Is(err, rpctypes.ErrAuthFailed) || !strings.Contains(err.Error(), `authenticate as "poolplane"`) {
			t.Errorf("New = %v, want an authentication failure", err)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, err := newStore(t, srv, etcdstore.Config{TLS: tlsCfg, Username: "mallory", Password: "s3cret"})
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("New = %v, want an authentication failure", err)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		// The client certificate alone names a user etcd does not know.
		s, err := newStore(t, srv, etcdstore.Config{TLS: tlsCfg})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Put(t.Context(), "k", nil, store.Any(), "t")
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("Put without credentials = %v, want permission denied", err)
		}
	})
	t.Run("outside the grant", func(t *testing.T) {
		s, err := newStore(t, srv, etcdstore.Config{Prefix: "other", TLS: tlsCfg, Username: "poolplane", Password: "s3cret"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Put(t.Context(), "k", nil, store.Any(), "t")
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("Put outside the granted prefix = %v, want permission denied", err)
		}
	})
	t.Run("plaintext", func(t *testing.T) {
		_, err := newStore(t, srv, etcdstore.Config{Username: "poolplane", Password: "s3cret", DialTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "serves TLS but the client dials it in plaintext") {
			t.Fatalf("New over plaintext to a TLS member = %v, want the reason", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, err := newStore(t, srv, etcdstore.Config{TLS: &tls.Config{RootCAs: pki.CertPool(), MinVersion: tls.VersionTLS12},
			Username: "poolplane", Password: "s3cret", DialTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("New without the client certificate to an mTLS member = %v, want the reason", err)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		other := etcdtest.NewPKI(t)
		_, err := newStore(t, srv, etcdstore.Config{TLS: other.ClientTLS(t, true),
			Username: "poolplane", Password: "s3cret", DialTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("New trusting another CA = %v, want the reason", err)
		}
	})
	t.Run("operation without credentials over plaintext", func(t *testing.T) {
		s, err := newStore(t, srv, etcdstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		err = s.Ping(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "serves TLS but the client dials it in plaintext") {
			t.Fatalf("Ping = %v, want a deadline error and the reason", err)
		}
	})
}

func TestConfigCredentials(t *testing.T) {
	tests := []struct {
		name string
		cfg  etcdstore.Config
		want string
	}{
		{"password without username", etcdstore.Config{Password: "x"}, "password without a username"},
		{"username without password", etcdstore.Config{Username: "u"}, "without a password"},
		{"TLS with http endpoint", etcdstore.Config{Endpoints: []string{"http://127.0.0.1:1"}, TLS: &tls.Config{MinVersion: tls.VersionTLS12}}, "plaintext"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Prefix = "p"
			if len(tt.cfg.Endpoints) == 0 {
				tt.cfg.Endpoints = []string{"127.0.0.1:1"}
			}
			s, err := etcdstore.New(tt.cfg)
			if err == nil {
				_ = s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want %q", err, tt.want)
			}
		})
	}
}

// The conformance suite passes over mTLS with authentication.
func TestConformanceTLSAuth(t *testing.T) {
	srv := etcdtest.StartWith(t, etcdtest.Config{ClientCertAuth: true})
	srv.EnableAuth(t, "r00t", etcdtest.User{Name: "poolplane", Password: "s3cret", Prefix: "conf"})
	tlsCfg := srv.ClientTLS(t)
	runConformance(t, etcdstore.Config{
		Endpoints: []string{srv.Endpoint()},
		Prefix:    "conf",
		TLS:       tlsCfg,
		Username:  "poolplane",
		Password:  "s3cret",
	})
}
