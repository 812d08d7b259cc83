package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/server"

	"github.com/poolplane/poolplane/internal/testkit"
)

// pooldCert issues poold's serving certificate, for poold.test and
// 127.0.0.1: PEM, and its serial.
func pooldCert(t *testing.T, ca *testkit.CA) (certPEM, keyPEM []byte, serial int64) {
	t.Helper()
	c := ca.Issue(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "poold"}, Hosts: []string{"poold.test", "127.0.0.1"}, Server: true})
	return c.CertPEM, c.KeyPEM, c.Serial
}

// servedSerial handshakes with addr and returns the serial of the
// certificate it presents.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "poold.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// TestPooldTLSAuthAndReload: TLS with a token and with a client
// certificate, roles, and a SIGHUP certificate reload that keeps an open
// lease alive.
func TestPooldTLSAuthAndReload(t *testing.T) {
	// A stray SIGHUP must never kill the test binary.
	guard := make(chan os.Signal, 1)
	signal.Notify(guard, syscall.SIGHUP)
	t.Cleanup(func() { signal.Stop(guard) })

	dir := t.TempDir()
	pki := testkit.NewCA(t)
	certFile, keyFile, caFile, authFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "auth.yaml")
	c1, k1, serial1 := pooldCert(t, pki)
	testkit.WriteFile(t, certFile, c1)
	testkit.WriteFile(t, keyFile, k1)
	testkit.WriteFile(t, caFile, pki.PEM)
	testkit.WriteFile(t, authFile, []byte("principals:\n"+
		"- {name: ops, token_sha256: "+server.HashToken("ops-token")+", role: admin}\n"+
		"- {name: svc, mtls_subject: svc, role: client, pools: ['echo*']}\n"))

	up := testkit.EchoServer(t)
	p := startPoold(t, filepath.Join(dir, "data"), "--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", caFile,
		"--auth-file", authFile, "--reload-interval", "1h")
	dialTLS := func(certs ...tls.Certificate) *grpc.ClientConn {
		cc, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS12, RootCAs: pki.Pool(), ServerName: "poold.test", Certificates: certs})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	ctx := context.Background()
	ops := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer ops-token")
	admin := poolv1.NewPoolAdminServiceClient(dialTLS())
	if _, err := admin.ListPools(ctx, &poolv1.ListPoolsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no credentials: %v", err)
	}
	if _, err := admin.CreatePool(ops, &poolv1.CreatePoolRequest{PoolId: "echo", Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := healthpb.NewHealthClient(dialTLS()).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health over TLS without credentials: %v", err)
	}
	// Plaintext does not reach a TLS listener.
	if _, err := poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr)).ListPools(ops, &poolv1.ListPoolsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext: %v", err)
	}

	// A client principal identified by its certificate leases.
	cSvc := pki.Client(t, "svc")
	cc, ck := cSvc.CertPEM, cSvc.KeyPEM
	svcCert, err := tls.X509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	svc := dialTLS(svcCert)
	if _, err := poolv1.NewPoolAdminServiceClient(svc).ListPools(ctx, &poolv1.ListPoolsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client principal listing pools: %v", err)
	}
	ls, err := poolv1.NewLeaseServiceClient(svc).Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(m *poolv1.LeaseRequest) {
		t.Helper()
		if err := ls.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	echo := func(msg string) {
		t.Helper()
		send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Data_{Data: &poolv1.LeaseRequest_Data{Data: []byte(msg)}}})
		var got []byte
		for len(got) < len(msg) {
			m, err := ls.Recv()
			if err != nil {
				t.Fatalf("echo %q: %v", msg, err)
			}
			got = append(got, m.GetData().GetData()...)
		}
		if string(got) != msg {
			t.Fatalf("echo %q, got %q", msg, got)
		}
	}
	send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Open_{Open: &poolv1.LeaseRequest_Open{Pool: "echo"}}})
	if m, err := ls.Recv(); err != nil || m.GetGranted() == nil {
		t.Fatalf("granted: %v %v", m, err)
	}
	echo("before reload")

	// Rotate the certificate and SIGHUP: new handshakes get the new one,
	// the open lease keeps relaying.
	if got := servedSerial(t, p.grpcAddr, pki.Pool()); got != serial1 {
		t.Fatalf("serving serial %d, want %d", got, serial1)
	}
	c2, k2, serial2 := pooldCert(t, pki)
	testkit.WriteFile(t, certFile, c2)
	testkit.WriteFile(t, keyFile, k2)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 10*time.Second, func() bool { return servedSerial(t, p.grpcAddr, pki.Pool()) == serial2 },
		func() { t.Fatalf("the new certificate is not served 10s after SIGHUP:\n%s", p.log) })
	echo("after reload")
	send(&poolv1.LeaseRequest{Frame: &poolv1.LeaseRequest_Release_{Release: &poolv1.LeaseRequest_Release{Reusable: true}}})
	if m, err := ls.Recv(); err != nil || m.GetEnded() == nil {
		t.Fatalf("ended: %v %v", m, err)
	}
	_ = ls.CloseSend()
	if _, err := admin.ListPools(ops, &poolv1.ListPoolsRequest{}); err != nil {
		t.Fatalf("a new call after the reload: %v", err)
	}

	// A broken certificate file is refused and the current one stays.
	testkit.WriteFile(t, certFile, []byte("not a certificate"))
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, "reload failed")
	if got := servedSerial(t, p.grpcAddr, pki.Pool()); got != serial2 {
		t.Fatalf("after a bad reload: serial %d, want %d", got, serial2)
	}

	// The auth file reloads too: a new principal can call.
	testkit.WriteFile(t, authFile, []byte("principals:\n- {name: ops2, token_sha256: "+server.HashToken("new-token")+", role: viewer}\n"))
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	newTok := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer new-token")
	var lastErr error
	pollUntil(t, 10*time.Second, func() bool {
		_, lastErr = admin.ListPools(newTok, &poolv1.ListPoolsRequest{})
		return lastErr == nil
	}, func() { t.Fatalf("the reloaded auth file is not in force: %v\n%s", lastErr, p.log) })
	if _, err := admin.ListPools(ops, &poolv1.ListPoolsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a removed principal: %v", err)
	}
	if strings.Contains(p.log.String(), "ops-token") || strings.Contains(p.log.String(), "new-token") {
		t.Fatal("a token reached the log")
	}
}

// waitLog waits until poold's log contains s.
func waitLog(t *testing.T, p *poold, s string) {
	t.Helper()
	pollUntil(t, 10*time.Second, func() bool { return strings.Contains(p.log.String(), s) },
		func() { t.Fatalf("log lacks %q:\n%s", s, p.log) })
}

// pollUntil checks cond every 10ms until it holds; after d (or near the
// test's deadline) it calls fail. For state outside the process's reach
// (files reloaded, certificates served), where nothing can be waited on.
func pollUntil(t *testing.T, d time.Duration, cond func() bool, fail func()) {
	t.Helper()
	if !testkit.Poll(t, d, cond) {
		fail()
	}
}

func TestPooldCertFileChangeReloads(t *testing.T) {
	dir := t.TempDir()
	pki := testkit.NewCA(t)
	certFile, keyFile, authFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "auth.yaml")
	c1, k1, _ := pooldCert(t, pki)
	testkit.WriteFile(t, certFile, c1)
	testkit.WriteFile(t, keyFile, k1)
	testkit.WriteFile(t, authFile, []byte("principals:\n- {name: a, token_sha256: "+server.HashToken("t")+", role: admin}\n"))
	p := startPoold(t, filepath.Join(dir, "data"), "--tls-cert", certFile, "--tls-key", keyFile, "--auth-file", authFile, "--reload-interval", "50ms")
	c2, k2, serial2 := pooldCert(t, pki)
	// Key first, then certificate: a poll in between fails and retries.
	testkit.WriteFile(t, keyFile, k2)
	testkit.WriteFile(t, certFile, c2)
	pollUntil(t, 10*time.Second, func() bool { return servedSerial(t, p.grpcAddr, pki.Pool()) == serial2 },
		func() { t.Fatalf("the changed certificate is not served:\n%s", p.log) })
}

func TestPooldAllowlistAndSecrets(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	keyFile := filepath.Join(dir, "secret.key")
	testkit.WriteFile(t, keyFile, []byte(hex.EncodeToString(bytes.Repeat([]byte{7}, 32))+"\n"))
	up := testkit.EchoServer(t)
	pki := testkit.NewCA(t)
	cClient := pki.Client(t, "client")
	certPEM, keyPEM := cClient.CertPEM, cClient.KeyPEM

	p := startPoold(t, data, "--allow-upstream", "127.0.0.0/8", "--allow-upstream", "*.internal:443")
	admin := poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr))
	ctx := context.Background()
	_, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "far", Pool: &poolv1.Pool{Endpoints: []string{"10.0.0.1:80"}}})
	if status.Code(err) != codes.PermissionDenied || reason(err) != "UPSTREAM_NOT_ALLOWED" {
		t.Fatalf("outside the allowlist: %v", err)
	}
	mtls := &poolv1.Pool{Endpoints: []string{up}, Tls: &poolv1.UpstreamTLS{Enabled: true, ClientCertPem: string(certPEM), ClientKeyPem: string(keyPEM)}}
	_, err = admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "m", Pool: mtls})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "--secret-key-file") {
		t.Fatalf("inline key without --secret-key-file: %v", err)
	}
	p.stop(t)

	p = startPoold(t, data, "--secret-key-file", keyFile)
	admin = poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr))
	if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "m", Pool: mtls}); err != nil {
		t.Fatalf("inline key with --secret-key-file: %v", err)
	}
	p.stop(t)
	db, err := os.ReadFile(filepath.Join(data, "poolplane.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(strings.Split(string(keyPEM), "\n")[1])) {
		t.Fatal("the database holds the client key in clear")
	}

	// Without the key file the sealed pool cannot load, and poold says why.
	var out testkit.SyncBuffer
	code := run(context.Background(), []string{"--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", data}, &out, nil)
	if code != 1 || !strings.Contains(out.String(), "secret-key-file") {
		t.Fatalf("restart without the key: exit %d:\n%s", code, out.String())
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr                    string
		insecure, tlsOn, authOn bool
		want                    string // "" for allowed
	}{
		{"127.0.0.1:7700", false, false, false, ""},
		{"[::1]:7700", false, false, false, ""},
		{"localhost:7700", false, false, false, ""},
		{"unix:///run/poold.sock", false, false, false, ""},
		{"0.0.0.0:7700", false, true, true, ""},
		{"0.0.0.0:7700", true, false, false, ""},
		{"0.0.0.0:7700", false, false, false, "without TLS (--tls-cert, --tls-key) or authentication (--auth-file)"},
		{"10.0.0.5:7700", false, true, false, "without authentication (--auth-file)"},
		{"10.0.0.5:7700", false, false, true, "without TLS (--tls-cert, --tls-key):"},
	} {
		err := checkListen(tc.addr, tc.insecure, tc.tlsOn, tc.authOn)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkListen(%s, insecure=%v, tls=%v, auth=%v) = %v, want %q", tc.addr, tc.insecure, tc.tlsOn, tc.authOn, err, tc.want)
		}
	}
}

func TestSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "x.crt"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-client-ca", "ca.pem"}, "--tls-client-ca needs"},
		{[]string{"--allow-upstream", "example.com"}, "--allow-upstream"},
		{[]string{"--max-recv-msg-size", "1024"}, "--max-recv-msg-size"},
		{[]string{"--max-stats-watchers", "0"}, "--max-stats-watchers"},
		{[]string{"--max-procs", "-1"}, "--max-procs must not be negative"},
		{[]string{"--reload-interval", "0s"}, "--reload-interval"},
	} {
		var out bytes.Buffer
		args := append([]string{"--data-dir", filepath.Join(dir, "d"), "--metrics-listen", "off"}, tc.args...)
		if code := run(context.Background(), args, &out, nil); code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v: exit %d, output %q, want 2 and %q", tc.args, code, out.String(), tc.want)
		}
	}
	// POOLPLANE_ALLOW_UPSTREAM takes a comma-separated list.
	t.Setenv("POOLPLANE_ALLOW_UPSTREAM", "10.0.0.0/8, *.internal:443")
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || len(o.allowUpstream) != 2 || o.allowlist.AllowEndpoint("a.internal:443") != nil {
		t.Fatalf("env allowlist: %v %v", o.allowUpstream, err)
	}
	// A bad auth file stops poold with the reason.
	bad := filepath.Join(dir, "auth.yaml")
	testkit.WriteFile(t, bad, []byte("principals:\n- {name: a, token_sha256: plain-token, role: admin}\n"))
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--data-dir", filepath.Join(dir, "d2"), "--metrics-listen", "off", "--listen", "127.0.0.1:0", "--auth-file", bad}, &out, nil); code != 1 ||
		!strings.Contains(out.String(), "not the token") {
		t.Fatalf("bad auth file: exit %d:\n%s", code, out.String())
	}
}

func TestHashToken(t *testing.T) {
	var out bytes.Buffer
	if err := hashToken(strings.NewReader("s3cret\n"), &out); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != server.HashToken("s3cret") {
		t.Fatalf("hash-token printed %q", out.String())
	}
	if err := hashToken(strings.NewReader(""), &out); err == nil {
		t.Fatal("an empty token was hashed")
	}
}

func TestReadSecretKey(t *testing.T) {
	dir := t.TempDir()
	key := bytes.Repeat([]byte{0xab}, 32)
	var warned []string
	warn := func(s string) { warned = append(warned, s) }
	for name, content := range map[string][]byte{
		"raw": key,
		"hex": []byte(hex.EncodeToString(key) + "\n"),
		"b64": []byte(base64.StdEncoding.EncodeToString(key)),
	} {
		f := filepath.Join(dir, name)
		testkit.WriteFile(t, f, content)
		got, err := readSecretKey(f, warn)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %x %v", name, got, err)
		}
	}
	if len(warned) != 0 {
		t.Fatalf("warned about mode 0600 files: %v", warned)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("too short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSecretKey(short, warn); err == nil || len(warned) != 1 {
		t.Fatalf("short key: %v, warnings %v", err, warned)
	}
}
