package server_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"google.golang.org/grpc"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
)

// sdkEnvConfig tweaks startSDKEnvWith.
type sdkEnvConfig struct {
	manager func(*poolmgr.ManagerConfig) // after Store and Logger are set
	logger  *slog.Logger                 // nil: discard
	client  []client.Option              // after the defaults
}

// startSDKEnvWith is startSDKEnv with a tweaked Manager, logger or client:
// a store on t.TempDir(), a loaded Manager, server.New on 127.0.0.1:0 and
// a client.Client, closed by t.Cleanup (the client first).
func startSDKEnvWith(t testing.TB, cfg sdkEnvConfig) *sdkEnv {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{Logger: cfg.logger, Manager: cfg.manager, Listeners: true})
	e := &sdkEnv{mgr: srv.Manager, svcs: srv.Services, addr: srv.Addr, streams: &leaseStreamCounter{}}
	all := append([]client.Option{
		client.WithInsecure(),
		client.WithClientName("e2e"),
		client.WithDialOptions(grpc.WithStatsHandler(e.streams)),
	}, cfg.client...)
	c, err := client.New(e.addr, all...)
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	e.c = c
	return e
}

// hostsResolver resolves names from a fixed table; safe for concurrent use.
type hostsResolver struct {
	mu    sync.Mutex // protects hosts
	hosts map[string][]string
}

func (r *hostsResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if addrs, ok := r.hosts[host]; ok {
		return addrs, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestSDKLeaseUpstreamRefusedAtDial: a pool whose name passes the
// allowlist when written but resolves outside it is refused at dial time,
// and the lease fails with PERMISSION_DENIED/UPSTREAM_NOT_ALLOWED (what the
// SDK documents, not retryable), naming the refusal in last_dial_error. It
// stays so on later leases, when the refusals have opened the circuit.
func TestSDKLeaseUpstreamRefusedAtDial(t *testing.T) {
	allow, err := poolmgr.NewAllowlist([]string{"api.internal:*", "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	up := startSDKUpstream(t, testkit.EchoConn)
	_, port, _ := net.SplitHostPort(up.addr)
	res := &hostsResolver{hosts: map[string][]string{"api.internal": {"127.0.0.1"}}} // outside 10.0.0.0/8
	e := startSDKEnvWith(t, sdkEnvConfig{manager: func(c *poolmgr.ManagerConfig) {
		c.Env.Upstreams = allow
		c.Env.Resolver = res
	}})
	e.createPool(t, "api", poolmgr.Config{Endpoints: []string{"api.internal:" + port}})

	ctx := ctxT(t)
	for i := range 8 { // past the circuit's threshold of refusals
		_, err := e.c.Lease(ctx, "api")
		var perr *client.Error
		if !errors.As(err, &perr) || !errors.Is(err, client.ErrUpstreamNotAllowed) || !errors.Is(err, client.ErrPermissionDenied) ||
			perr.Code != codes.PermissionDenied || perr.RetryAfter != 0 {
			t.Fatalf("lease %d: %v, want PERMISSION_DENIED UPSTREAM_NOT_ALLOWED without RetryInfo", i, err)
		}
		if md := perr.Metadata; md["pool"] != "api" || !strings.Contains(md["last_dial_error"], "not allowed") ||
			!strings.Contains(md["last_dial_error"], "127.0.0.1") {
			t.Fatalf("lease %d: metadata %v, want the pool and the refused address in last_dial_error", i, md)
		}
	}
	if n := up.accepted.Load(); n != 0 {
		t.Fatalf("the refused upstream accepted %d connections", n)
	}
}

// TestSDKLeaseDrainingMetadata: POOL_DRAINING carries the pool, its state
// and the leases it still waits for.
func TestSDKLeaseDrainingMetadata(t *testing.T) {
	up := startSDKUpstream(t, testkit.EchoConn)
	e := startSDKEnvWith(t, sdkEnvConfig{})
	e.createPool(t, "d", poolmgr.Config{Endpoints: []string{up.addr}})
	ctx := ctxT(t)
	held, err := e.c.Lease(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := e.mgr.Drain(ctx, "d", poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.Lease(ctx, "d")
	var perr *client.Error
	if !errors.As(err, &perr) || !errors.Is(err, client.ErrDraining) || perr.Code != codes.FailedPrecondition {
		t.Fatalf("lease of a draining pool: %v, want FAILED_PRECONDITION POOL_DRAINING", err)
	}
	want := map[string]string{"pool": "d", "state": "DRAINING", "in_use": "1", "total": "1", "idle": "0"}
	for k, v := range want {
		if got := perr.Metadata[k]; got != v {
			t.Errorf("metadata[%q] = %q, want %q (all: %v)", k, got, v, perr.Metadata)
		}
	}
}

// TestSDKLeaseClientCertRefusedAfterHandshake: a pool to a TLS 1.3
// upstream that requires a client certificate, configured without one.
// The server refuses it only after the client's handshake is done; the
// pool's dial catches the alert, so the lease fails with
// UPSTREAM_UNAVAILABLE naming the alert in last_dial_error, instead of
// handing out a connection that reads EOF.
func TestSDKLeaseClientCertRefusedAfterHandshake(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	up.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	up.StartTLS()
	t.Cleanup(up.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})

	e := startSDKEnvWith(t, sdkEnvConfig{})
	e.createPool(t, "mtls", poolmgr.Config{
		Endpoints: []string{up.Listener.Addr().String()},
		TLS:       poolmgr.TLSConfig{Enabled: true, CAPEM: string(caPEM)}, // no client certificate
	})
	_, err := e.c.Lease(ctxT(t), "mtls")
	var perr *client.Error
	if !errors.As(err, &perr) || !errors.Is(err, client.ErrUpstreamUnavailable) {
		t.Fatalf("lease: %v, want UPSTREAM_UNAVAILABLE", err)
	}
	if got := perr.Metadata["last_dial_error"]; !strings.Contains(got, "certificate required") {
		t.Fatalf("last_dial_error = %q, want the certificate_required alert", got)
	}
}
