package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/internal/unixsock"
)

func TestCheckAllowUpstream(t *testing.T) {
	for _, tc := range []struct {
		listen string
		allow  []string
		ok     bool
	}{
		{"127.0.0.1:7700", nil, true},
		{"[::1]:7700", nil, true},
		{"localhost:7700", nil, true},
		{"unix:///run/poold.sock", nil, true},
		{"0.0.0.0:7700", nil, false},
		{":7700", nil, false},
		{"10.0.0.5:7700", nil, false},
		{"[::]:7700", nil, false},
		{"0.0.0.0:7700", []string{"any"}, true},
		{"0.0.0.0:7700", []string{"10.0.0.0/8"}, true},
	} {
		err := checkAllowUpstream(tc.listen, tc.allow)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "--allow-upstream any")) {
			t.Errorf("checkAllowUpstream(%s, %q) = %v, want ok=%v", tc.listen, tc.allow, err, tc.ok)
		}
	}
}

// TestPooldRequiresAllowUpstreamBeyondLoopback: a poold reachable from
// other hosts does not start with the permissive default, and says how to
// choose; on loopback the default stays.
func TestPooldRequiresAllowUpstreamBeyondLoopback(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0", "--insecure"},
		{"--listen", "[::]:0", "--insecure"},
	} {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		code := run(ctx, append([]string{"--data-dir", filepath.Join(t.TempDir(), "d"), "--metrics-listen", "off"}, args...), &out, nil)
		cancel()
		if code != 2 || !strings.Contains(out.String(), "--allow-upstream") || !strings.Contains(out.String(), "any") {
			t.Errorf("%v: exit %d:\n%s\nwant 2 and a word about --allow-upstream", args, code, out.String())
		}
	}
	up := testkit.EchoServer(t)
	p := startPoold(t, t.TempDir())
	admin := poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr))
	if _, err := admin.CreatePool(context.Background(), &poolv1.CreatePoolRequest{PoolId: "dev", Pool: &poolv1.Pool{Endpoints: []string{up}}}); err != nil {
		t.Fatalf("a loopback poold without --allow-upstream: %v", err)
	}
}

func TestCheckMetricsListen(t *testing.T) {
	base := options{tlsCert: "c.pem", tlsKey: "k.pem"}
	for _, tc := range []struct {
		name string
		mod  func(*options)
		want string // "" for allowed
		mtls bool
	}{
		{"loopback", func(o *options) { o.metricsListen = "127.0.0.1:7701"; o.tlsCert = "" }, "", false},
		{"loopback pprof", func(o *options) { o.metricsListen = "[::1]:7701"; o.pprof = true }, "", false},
		{"localhost pprof", func(o *options) { o.metricsListen = "localhost:7701"; o.pprof = true }, "", false},
		{"wide plain", func(o *options) { o.metricsListen = "0.0.0.0:7701"; o.tlsCert = "" }, "--tls-client-ca", false},
		{"wide TLS without client CA", func(o *options) { o.metricsListen = "0.0.0.0:7701" }, "--tls-client-ca", false},
		{"wide mTLS", func(o *options) { o.metricsListen = "0.0.0.0:7701"; o.tlsClientCA = "ca.pem" }, "", true},
		{"wide pprof with mTLS", func(o *options) { o.metricsListen = ":7701"; o.tlsClientCA = "ca.pem"; o.pprof = true }, "--pprof", true},
		{"wide pprof insecure", func(o *options) { o.metricsListen = "0.0.0.0:7701"; o.pprof = true; o.insecure = true }, "", false},
		{"wide insecure", func(o *options) { o.metricsListen = "10.0.0.1:7701"; o.tlsCert = ""; o.insecure = true }, "", false},
		{"unix", func(o *options) { o.metricsListen = "unix:///tmp/m.sock" }, "host:port", false},
	} {
		o := base
		tc.mod(&o)
		exp, err := checkMetricsListen(o)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if err == nil && exp.mtls != tc.mtls {
			t.Errorf("%s: mtls %v, want %v", tc.name, exp.mtls, tc.mtls)
		}
	}
}

// TestPooldMetricsExposure: --metrics-listen beyond loopback with --pprof
// does not start silently; without client certificates it does not start
// at all.
func TestPooldMetricsExposure(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--metrics-listen", "0.0.0.0:0", "--pprof"}, "--pprof"},
		{[]string{"--metrics-listen", "0.0.0.0:0"}, "--tls-client-ca"},
		{[]string{"--metrics-listen", "[::]:0", "--pprof"}, "--pprof"},
	} {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		code := run(ctx, append([]string{"--data-dir", filepath.Join(t.TempDir(), "d"), "--listen", "127.0.0.1:0"}, tc.args...), &out, nil)
		cancel()
		if code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v: exit %d:\n%s\nwant 2 and %q", tc.args, code, out.String(), tc.want)
		}
	}
}

// TestMetricsOverMTLS: the metrics listener served beyond loopback takes
// only scrapers with a client certificate of --tls-client-ca, and never
// serves pprof it was not told to.
func TestMetricsOverMTLS(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	dir := t.TempDir()
	pki := testkit.NewCA(t)
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.pem")
	c, k, _ := pooldCert(t, pki)
	testkit.WriteFile(t, certFile, c)
	testkit.WriteFile(t, keyFile, k)
	testkit.WriteFile(t, caFile, pki.PEM)
	certs, err := newCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	close(ready)
	var log testkit.SyncBuffer
	// As checkMetricsListen decides for a wide address with TLS and a
	// client CA; the test listens on loopback.
	ms, err := openMetrics("127.0.0.1:0", metricsExposure{wide: true, tls: true, mtls: true}, caFile, prometheus.NewRegistry(), certs, ready, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.stop(slog.New(slog.NewTextHandler(&log, nil))) })
	get := func(certs ...tls.Certificate) (int, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pki.Pool(), ServerName: "poold.test", Certificates: certs}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + ms.addr() + "/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if code, err := get(); err == nil {
		t.Fatalf("a scraper without a client certificate got %d", code)
	}
	cPrometheus := pki.Client(t, "prometheus")
	cc, ck := cPrometheus.CertPEM, cPrometheus.KeyPEM
	scraper, err := tls.X509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := get(scraper); err != nil || code != http.StatusOK {
		t.Fatalf("a scraper with a client certificate: %d %v", code, err)
	}
	plain, err := net.DialTimeout("tcp", ms.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_ = plain.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(plain, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	b, _ := io.ReadAll(plain)
	if strings.Contains(string(b), "200 OK") {
		t.Fatal("plain HTTP was served")
	}
}

// TestPooldUnixSocketRemovesOnlyStaleSockets: --listen unix://PATH never
// deletes a file, a link or a live socket; a stale socket is replaced.
func TestPooldUnixSocketRemovesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	startAt := func(sock string) (int, string) {
		var out testkit.SyncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		code := run(ctx, []string{"--listen", "unix://" + sock, "--metrics-listen", "off", "--data-dir", filepath.Join(t.TempDir(), "data")}, &out, nil)
		return code, out.String()
	}

	file := filepath.Join(dir, "important.db")
	testkit.WriteFile(t, file, []byte("precious"))
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "subdir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for _, path := range []string{file, link, sub, live} {
		code, out := startAt(path)
		if code != 1 || !strings.Contains(out, path) {
			t.Errorf("listen on %s: exit %d:\n%s", path, code, out)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("%s was removed: %v", path, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("the file: %q %v", b, err)
	}

	// A socket left by a process that died: nobody accepts on it.
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sl.SetUnlinkOnClose(false)
	sl.Close()
	if err := unixsock.RemoveStale(stale); err != nil {
		t.Fatalf("a stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("the stale socket is still there: %v", err)
	}
}
