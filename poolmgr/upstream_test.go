package poolmgr

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustAllowlist(t *testing.T, entries ...string) *Allowlist {
	t.Helper()
	a, err := NewAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAllowlistEndpoints(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		allow   []string
		refuse  []string
	}{
		{"open", nil,
			[]string{"10.0.0.1:80", "example.com:443", "127.0.0.1:6379", "[::1]:80", "169.254.169.254.nip.io:80"},
			[]string{"169.254.169.254:80", "169.254.1.1:443", "[fd00:ec2::254]:80", "[fe80::1]:80", "0.0.0.0:80", "[::]:80", "[::ffff:169.254.169.254]:80"}},
		{"cidrs", []string{"10.0.0.0/8", "fd00::/8", "192.168.1.7"},
			[]string{"10.1.2.3:6379", "[fd00::5]:443", "192.168.1.7:22"},
			[]string{"11.0.0.1:80", "192.168.1.8:22", "db.internal:5432", "[fd00:ec2::254]:80"}},
		{"hosts", []string{"*.internal:443", "redis.local:6379", "db.internal:*", "10.9.9.9:53"},
			[]string{"api.internal:443", "a.b.internal:443", "API.Internal:443", "redis.local:6379", "db.internal:1", "10.9.9.9:53"},
			[]string{"api.internal:80", "redis.local:6380", "internal:443", "evil.com:443", "10.9.9.9:54", "10.0.0.1:443"}},
		{"explicit metadata", []string{"169.254.169.254/32"},
			[]string{"169.254.169.254:80"},
			[]string{"169.254.169.253:80"}},
		{"broad CIDR is not explicit", []string{"0.0.0.0/0", "::/0"},
			[]string{"8.8.8.8:53", "[2001:db8::1]:443"},
			[]string{"169.254.169.254:80", "[fd00:ec2::254]:80", "[fe80::1]:80"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustAllowlist(t, tt.entries...)
			for _, ep := range tt.allow {
				if err := a.AllowEndpoint(ep); err != nil {
					t.Errorf("AllowEndpoint(%s) = %v, want allowed", ep, err)
				}
			}
			for _, ep := range tt.refuse {
				if err := a.AllowEndpoint(ep); !errors.Is(err, ErrUpstreamNotAllowed) {
					t.Errorf("AllowEndpoint(%s) = %v, want ErrUpstreamNotAllowed", ep, err)
				}
			}
		})
	}
}

func TestAllowlistDial(t *testing.T) {
	ip := netip.MustParseAddr
	hosts := mustAllowlist(t, "*.internal:443")
	both := mustAllowlist(t, "*.internal:443", "10.0.0.0/8")
	open := mustAllowlist(t)
	for _, tc := range []struct {
		a    *Allowlist
		host string
		ip   netip.Addr
		port int
		ok   bool
	}{
		{hosts, "api.internal", ip("10.1.1.1"), 443, true},
		{hosts, "api.internal", ip("203.0.113.9"), 443, true}, // host patterns alone do not pin addresses
		{hosts, "api.internal", ip("169.254.169.254"), 443, false},
		{hosts, "api.internal", ip("fd00:ec2::254"), 443, false},
		{hosts, "api.internal", ip("::ffff:169.254.169.254"), 443, false},
		{hosts, "api.internal", ip("10.1.1.1"), 80, false},
		{hosts, "evil.com", ip("10.1.1.1"), 443, false}, // written under an older allowlist
		{both, "api.internal", ip("10.1.1.1"), 443, true},
		{both, "api.internal", ip("192.168.0.1"), 443, false}, // rebound outside the CIDRs
		{both, "10.2.2.2", ip("10.2.2.2"), 5432, true},
		{open, "x.example", ip("192.0.2.1"), 80, true},
		{open, "x.example", ip("169.254.169.254"), 80, false},
		{open, "x.example", ip("0.0.0.0"), 80, false},
	} {
		err := tc.a.AllowDial(tc.host, tc.ip, tc.port)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUpstreamNotAllowed)) {
			t.Errorf("AllowDial(%s, %s, %d) = %v, want ok=%v", tc.host, tc.ip, tc.port, err, tc.ok)
		}
	}
}

func TestNewAllowlistErrors(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "example.com", "example.com:0", "example.com:http", "[:443", "a[:443"} {
		if _, err := NewAllowlist([]string{bad}); err == nil {
			t.Errorf("NewAllowlist(%q) accepted", bad)
		}
	}
}

// TestDialRefusesRebinding: an allowlisted name resolving to a forbidden
// address is never dialed, whether it resolves so at once or later.
func TestDialRefusesRebinding(t *testing.T) {
	n := newFakeNet(t, true)
	var names sync.Map
	names.Store("api.internal", []string{"169.254.169.254"})
	env := Env{Dial: n.dial, Resolver: fakeResolver{&names}, Logger: slog.New(slog.DiscardHandler),
		Upstreams: mustAllowlist(t, "*.internal:6379", "10.0.0.0/8")}
	cfg := testConfig(func(c *Config) {
		c.Endpoints = []string{"api.internal:6379"}
		c.Limits.AcquireTimeout = 300 * time.Millisecond
		c.DNSRefresh = time.Second
	})
	p, err := NewPool("rebind", cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	_, err = p.Acquire(context.Background(), "t")
	var aerr *AcquireError
	if !errors.As(err, &aerr) || !errors.Is(aerr.LastDialErr, ErrUpstreamNotAllowed) {
		t.Fatalf("acquire of a name on the metadata address: %v, want a dial refused by the allowlist", err)
	}
	if n.dialCount() != 0 {
		t.Fatalf("%d dials reached the network", n.dialCount())
	}

	// An allowed address works; a later rebinding outside the CIDRs is
	// refused again, and only the allowed address was ever dialed.
	names.Store("api.internal", []string{"10.0.0.7"})
	deadline := time.Now().Add(10 * time.Second)
	var c *Conn
	for c == nil {
		if c, err = p.Acquire(context.Background(), "t"); err != nil && time.Now().After(deadline) {
			t.Fatalf("acquire after the name moved to an allowed address: %v", err)
		}
	}
	c.Release(false)
	names.Store("api.internal", []string{"192.168.9.9", "169.254.169.254"})
	p.Reconnect() // the next connection dials afresh, after the next resolution
	for _, d := range n.allConns() {
		_ = d.Close()
	}
	waitUntilPoolmgr(t, func() bool {
		_, err := p.resolveEndpoint(context.Background(), "api.internal:6379")
		return errors.Is(err, ErrUpstreamNotAllowed)
	})
	if err := p.checkDial("api.internal", "192.168.9.9:6379"); !errors.Is(err, ErrUpstreamNotAllowed) {
		t.Fatalf("dial check of the rebound address: %v", err)
	}
	for _, d := range n.allConns() {
		if !strings.HasPrefix(d.addr, "10.0.0.7:") {
			t.Fatalf("dialed %s", d.addr)
		}
	}
}

// TestDialRefusesLiteral: a pool started directly (no Manager) with a
// metadata literal never dials it.
func TestDialRefusesLiteral(t *testing.T) {
	n := newFakeNet(t, true)
	cfg := testConfig(func(c *Config) {
		c.Endpoints = []string{"169.254.169.254:80"}
		c.Limits.AcquireTimeout = 200 * time.Millisecond
	})
	p, err := NewPool("meta", cfg, Env{Dial: n.dial, Resolver: fakeResolver{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	_, err = p.Acquire(context.Background(), "t")
	var aerr *AcquireError
	if !errors.As(err, &aerr) || !errors.Is(aerr.LastDialErr, ErrUpstreamNotAllowed) || n.dialCount() != 0 {
		t.Fatalf("acquire: %v; %d dials", err, n.dialCount())
	}
}

func waitUntilPoolmgr(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		<-tick.C
	}
}

func TestManagerUpstreamPolicy(t *testing.T) {
	ctx := context.Background()
	m, err := NewManager(ManagerConfig{Store: newMemStore(), Logger: slog.New(slog.DiscardHandler),
		Env: Env{Upstreams: mustAllowlist(t, "127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	_, err = m.Create(ctx, "bad", cfgFor("127.0.0.1:1", "10.0.0.1:80"), WriteOptions{})
	if !errors.Is(err, ErrUpstreamNotAllowed) || !strings.Contains(err.Error(), "endpoints[1]") {
		t.Fatalf("create outside the allowlist: %v", err)
	}
	if _, err := m.Get(ctx, "bad"); !errors.Is(err, ErrPoolNotFound) {
		t.Fatalf("a refused pool was stored: %v", err)
	}
	mustCreate(t, m, "ok", cfgFor("127.0.0.1:1"))
	if _, err := m.Update(ctx, "ok", cfgFor("10.0.0.1:80"), 0, WriteOptions{}); !errors.Is(err, ErrUpstreamNotAllowed) {
		t.Fatalf("update: %v", err)
	}
	_, err = m.Apply(ctx, []PoolSpec{{ID: "ok", Config: cfgFor("127.0.0.1:1")}, {ID: "new", Config: cfgFor("db.internal:5432")}}, ApplyOptions{})
	if !errors.Is(err, ErrUpstreamNotAllowed) || !strings.Contains(err.Error(), "pools[1].endpoints[0]") {
		t.Fatalf("apply: %v", err)
	}

	// The default policy refuses the metadata address.
	def := newTestManager(t, newMemStore())
	if _, err := def.Create(ctx, "meta", cfgFor("169.254.169.254:80"), WriteOptions{}); !errors.Is(err, ErrUpstreamNotAllowed) {
		t.Fatalf("default policy, metadata address: %v", err)
	}
}

// testKeyPair returns a self-signed client certificate and its key, PEM.
func testKeyPair(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

func TestManagerSecretsAtRest(t *testing.T) {
	ctx := context.Background()
	certPEM, keyPEM := testKeyPair(t)
	keyBody := strings.Split(keyPEM, "\n")[1]
	st := newMemStore()
	secret := bytes.Repeat([]byte{1}, 32)
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), SecretKey: secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cfg := cfgFor("127.0.0.1:1")
	cfg.TLS = TLSConfig{Enabled: true, ClientCertPEM: certPEM, ClientKeyPEM: keyPEM}
	mustCreate(t, m, "mtls", cfg)
	if _, err := m.Drain(ctx, "mtls", WriteOptions{Actor: "op"}); err != nil {
		t.Fatal(err)
	}

	kv, err := st.Get(ctx, poolKey("mtls"))
	if err != nil {
		t.Fatal(err)
	}
	hist, err := st.History(ctx, poolKey("mtls"))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range append([][]byte{kv.Value}, func() (vs [][]byte) {
		for _, h := range hist {
			vs = append(vs, h.Value)
		}
		return vs
	}()...) {
		if bytes.Contains(v, []byte(keyBody)) || bytes.Contains(v, []byte("PRIVATE KEY")) || !bytes.Contains(v, []byte(`"client_key_sealed":"v1.`)) {
			t.Fatalf("stored value %d holds the key in clear or unsealed:\n%s", i, v)
		}
	}
	info, err := m.Get(ctx, "mtls")
	if err != nil || info.Config.TLS.ClientKeyPEM != keyPEM {
		t.Fatalf("Get: the key does not round-trip: %v", err)
	}
	revs, err := m.History(ctx, "mtls")
	if err != nil || revs[0].Config.TLS.ClientKeyPEM != keyPEM {
		t.Fatalf("History: %v", err)
	}

	// Another key, or none, cannot read the record.
	other, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), SecretKey: bytes.Repeat([]byte{2}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if _, err := other.Get(ctx, "mtls"); err == nil || !strings.Contains(err.Error(), "secret-key-file") {
		t.Fatalf("Get under another key: %v", err)
	}
	none := newTestManager(t, st)
	if _, err := none.Get(ctx, "mtls"); err == nil || !strings.Contains(err.Error(), "secret-key-file") {
		t.Fatalf("Get without a key: %v", err)
	}

	if _, err := NewManager(ManagerConfig{Store: st, SecretKey: secret[:16]}); err == nil {
		t.Fatal("a 16-byte secret key was accepted")
	}
}

func TestManagerInlineKeyNeedsSecretKey(t *testing.T) {
	ctx := context.Background()
	certPEM, keyPEM := testKeyPair(t)
	st := newMemStore()
	m := newTestManager(t, st)
	cfg := cfgFor("127.0.0.1:1")
	cfg.TLS = TLSConfig{Enabled: true, ClientCertPEM: certPEM, ClientKeyPEM: keyPEM}
	_, err := m.Create(ctx, "inline", cfg, WriteOptions{})
	var verr *ValidationError
	if !errors.As(err, &verr) || verr.Violations[0].Field != "tls.client_key_pem" || !strings.Contains(err.Error(), "client_key_file") {
		t.Fatalf("inline key without a secret key: %v", err)
	}
	_, err = m.Apply(ctx, []PoolSpec{{ID: "inline", Config: cfg}}, ApplyOptions{})
	if !errors.As(err, &verr) || verr.Violations[0].Field != "pools[0].tls.client_key_pem" {
		t.Fatalf("apply: %v", err)
	}

	// A key file is accepted; the store holds its path only.
	keyFile := filepath.Join(t.TempDir(), "client.key")
	if err := os.WriteFile(keyFile, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.TLS.ClientKeyPEM, cfg.TLS.ClientKeyFile = "", keyFile
	mustCreate(t, m, "byfile", cfg)
	kv, err := st.Get(ctx, poolKey("byfile"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) || !bytes.Contains(kv.Value, []byte(keyFile)) {
		t.Fatalf("stored:\n%s", kv.Value)
	}

	for name, mod := range map[string]func(*TLSConfig){
		"relative path": func(t *TLSConfig) { t.ClientKeyFile = "client.key" },
		"missing file":  func(t *TLSConfig) { t.ClientKeyFile = keyFile + ".gone" },
		"both":          func(t *TLSConfig) { t.ClientKeyPEM = keyPEM },
		"no key":        func(t *TLSConfig) { t.ClientKeyFile = "" },
	} {
		c := cfg
		mod(&c.TLS)
		if _, err := m.Create(ctx, "bad", c, WriteOptions{}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestRecordLegacyClearKey(t *testing.T) {
	certPEM, keyPEM := testKeyPair(t)
	r := record{Config: cfgFor("127.0.0.1:1").WithDefaults(), Op: ActionCreate}
	r.Config.TLS = TLSConfig{Enabled: true, ClientCertPEM: certPEM, ClientKeyPEM: keyPEM}
	clear, err := encodeRecord(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(clear, []byte(`"client_key_pem"`)) {
		t.Fatalf("no clear key in a record encoded without a secret key:\n%s", clear)
	}
	m, err := NewManager(ManagerConfig{Store: newMemStore(), SecretKey: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, err := decodeRecord(clear, m.sealer)
	if err != nil || got.Config.TLS.ClientKeyPEM != keyPEM {
		t.Fatalf("a clear (legacy) record does not decode with a secret key: %v", err)
	}
	sealed, err := encodeRecord(got, m.sealer)
	if err != nil || bytes.Contains(sealed, []byte("PRIVATE KEY")) {
		t.Fatalf("re-encoding does not seal: %v\n%s", err, sealed)
	}
}
