package poolmgr

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/poolmgr/internal/keytest"
)

func mustAllowlist(t *testing.T, entries ...string) *Allowlist {
	t.Helper()
	a, err := NewAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	return a
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

func TestManagerSecretsAtRest(t *testing.T) {
	ctx := context.Background()
	certPEM, keyPEM := keytest.KeyPair(t)
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
	certPEM, keyPEM := keytest.KeyPair(t)
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
	certPEM, keyPEM := keytest.KeyPair(t)
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
