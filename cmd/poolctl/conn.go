package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// target returns the gRPC target of --server: a bare absolute path is a
// Unix socket; a comma-separated list of replicas and dns:/// names are
// passed on as the SDK takes them (client.New).
func (g *globals) target() string {
	if strings.HasPrefix(g.server, "/") {
		return "unix://" + g.server
	}
	return g.server
}

// replicaTarget returns the target and dial options of the admin
// connection: a comma-separated list of replicas becomes a resolver
// private to the connection, serving the list, with calls spread over the
// replicas (round robin) as the SDK spreads them; any other target is
// returned as it is.
func replicaTarget(target string) (string, []grpc.DialOption, error) {
	if !strings.Contains(target, ",") || strings.Contains(target, "://") {
		return target, nil, nil
	}
	var addrs []resolver.Address
	for a := range strings.SplitSeq(target, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return "", nil, usagef("--server %q: empty address in the replica list", target)
		}
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	r := manual.NewBuilderWithScheme("poolctl-replicas")
	r.InitialState(resolver.State{Addresses: addrs})
	return r.Scheme() + ":///replicas", []grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`),
	}, nil
}

// useTLS reports whether the TLS flags ask for TLS.
func (g *globals) useTLS() bool {
	return g.tls || g.caFile != "" || g.certFile != "" || g.keyFile != ""
}

// tlsConfig builds the TLS configuration of the TLS flags, or nil without
// TLS.
func (g *globals) tlsConfig() (*tls.Config, error) {
	if !g.useTLS() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: g.serverName}
	if g.caFile != "" {
		pem, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificates", g.caFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case g.certFile != "" && g.keyFile != "":
		cert, err := tls.LoadX509KeyPair(g.certFile, g.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file/--key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case g.certFile != "" || g.keyFile != "":
		return nil, usagef("--cert-file and --key-file go together")
	}
	return cfg, nil
}

// checkToken warns when a token would cross a non-local network in the
// clear.
func (e *env) checkToken() {
	if e.g.token != "" && !e.g.useTLS() && !isLocalTarget(e.g.target()) {
		_, _ = fmt.Fprintf(e.stderr, "poolctl: warning: sending --token without TLS to %s\n", e.g.server)
	}
}

// isLocalTarget reports whether target is a Unix socket or a loopback
// address.
func isLocalTarget(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if i := strings.Index(target, ":///"); i >= 0 {
		target = target[i+4:]
	}
	for t := range strings.SplitSeq(target, ",") {
		t = strings.TrimSpace(t)
		host, _, err := net.SplitHostPort(t)
		if err != nil {
			host = t
		}
		if host == "localhost" {
			continue
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// bearer sends the --token on every call.
type bearer struct {
	token string
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token may go over plain loopback or a Unix socket (checkToken warns
// otherwise).
func (bearer) RequireTransportSecurity() bool { return false }

var _ credentials.PerRPCCredentials = bearer{}

// connect dials poold once, for the admin and stats services.
func (e *env) connect() error {
	if e.cc != nil {
		return nil
	}
	if err := e.g.readTokenFile(); err != nil {
		return err
	}
	cfg, err := e.g.tlsConfig()
	if err != nil {
		return err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if cfg != nil {
		opts[0] = grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	if e.g.token != "" {
		e.checkToken()
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: e.g.token}))
	}
	target, more, err := replicaTarget(e.g.target())
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(target, append(opts, more...)...)
	if err != nil {
		return fmt.Errorf("--server %s: %w", e.g.server, err)
	}
	e.cc = cc
	e.admin = poolv1.NewPoolAdminServiceClient(cc)
	e.stats = poolv1.NewStatsServiceClient(cc)
	return nil
}

// newClient returns an SDK client for forward, with the same server,
// credentials and TLS as the admin connection.
func (e *env) newClient(clientName string) (*client.Client, error) {
	if err := e.g.readTokenFile(); err != nil {
		return nil, err
	}
	cfg, err := e.g.tlsConfig()
	if err != nil {
		return nil, err
	}
	opts := []client.Option{client.WithInsecure()}
	if cfg != nil {
		opts[0] = client.WithTLS(cfg)
	}
	if e.g.token != "" {
		e.checkToken()
		opts = append(opts, client.WithToken(e.g.token))
	}
	if clientName != "" {
		opts = append(opts, client.WithClientName(clientName))
	}
	c, err := client.New(e.g.target(), opts...)
	if err != nil {
		return nil, fmt.Errorf("--server %s: %w", e.g.server, err)
	}
	return c, nil
}
