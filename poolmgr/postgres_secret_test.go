package poolmgr

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/poolmgr/internal/seal"
)

// TestPostgresPasswordAtRest is TestRedisPasswordAtRest for a POSTGRES
// pool: the password is sealed in the bbolt file (every revision of it),
// under its own label, reads back under the same secret key, and survives
// a write that omits it by the rule of keepStoredKey.
func TestPostgresPasswordAtRest(t *testing.T) {
	ctx := context.Background()
	const password = "s3cret-postgres-password-9876543210"
	secret := bytes.Repeat([]byte{5}, 32)
	path := filepath.Join(t.TempDir(), "poold.db")
	st := openBolt(t, path)
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), SecretKey: secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })

	cfg := cfgFor("127.0.0.1:1")
	cfg.Protocol = ProtocolPostgres
	cfg.Postgres = PostgresSetup{Database: "app", User: "pool", Password: password, SSLMode: PostgresSSLRequire,
		Params: map[string]string{"application_name": "web"}, CloseOpenTransactions: true}
	mustCreate(t, m, "db", cfg)
	info, err := m.Get(ctx, "db")
	if err != nil || info.Config.Postgres.Password != password || info.Config.Postgres.ResetQuery != "DISCARD ALL" ||
		info.Config.Postgres.Params["application_name"] != "web" || !info.Config.Postgres.CloseOpenTransactions {
		t.Fatalf("Get: the setup does not round-trip: %+v, %v", info.Config.Postgres, err)
	}

	// Read back (no password) and written whole: the password stays.
	readBack := cfg
	readBack.Postgres.Password = ""
	readBack.Limits.MaxWaiters = 3
	info, err = m.Update(ctx, "db", readBack, 0, WriteOptions{KeepPostgresPassword: true})
	if err != nil || info.Config.Postgres.Password != password || info.Config.Limits.MaxWaiters != 3 {
		t.Fatalf("update of a pool read back dropped the password: %v", err)
	}
	// A new user does not take the old user's password.
	newUser := readBack
	newUser.Postgres.User = "other"
	if info, err := m.Update(ctx, "db", newUser, 0, WriteOptions{Actor: "t", ValidateOnly: true, KeepPostgresPassword: true}); err != nil ||
		info.Config.Postgres.Password != "" {
		t.Fatalf("a new user kept the old password: %v", err)
	}
	// Without the option the empty password is meant (trust): validated
	// only, so the password stays for what follows.
	if info, err := m.Update(ctx, "db", readBack, 0, WriteOptions{ValidateOnly: true}); err != nil || info.Config.Postgres.Password != "" {
		t.Fatalf("an explicitly empty password was kept: %v", err)
	}
	// Apply keeps it by the same rule.
	readBack.Limits.MaxWaiters = 4
	plan, err := m.Apply(ctx, []PoolSpec{{ID: "db", Config: readBack}}, ApplyOptions{})
	if err != nil || len(plan.Actions) != 1 || !slices.Equal(plan.Actions[0].ChangedFields, []string{"limits.max_waiters"}) {
		t.Fatalf("Apply of a pool read back: %+v, %v", plan, err)
	}
	if info, err := m.Get(ctx, "db"); err != nil || info.Config.Postgres.Password != password {
		t.Fatalf("Apply dropped the password: %v", err)
	}
	if readBack.Postgres.Password != "" {
		t.Fatal("Apply wrote into the caller's spec")
	}
	revs, err := m.History(ctx, "db")
	if err != nil || len(revs) < 3 {
		t.Fatalf("History: %d revisions, %v", len(revs), err)
	}
	for _, r := range revs {
		if r.Config.Postgres.Password != password {
			t.Fatalf("revision %d lost the password", r.Revision)
		}
	}

	m.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(password)) {
		t.Fatal("the bbolt file holds the PostgreSQL password in clear")
	}
	if !bytes.Contains(b, []byte(`"postgres":{`)) || !bytes.Contains(b, []byte(`"password_sealed":"v1.`)) {
		t.Fatal("the bbolt file holds no sealed PostgreSQL password")
	}
}

// TestPostgresPasswordOwnLabel: the password is sealed under its own
// label, so a sealed PostgreSQL password does not open as a Redis password
// or a client key, and a record read without the secret key is refused.
func TestPostgresPasswordOwnLabel(t *testing.T) {
	s, err := seal.New(bytes.Repeat([]byte{5}, 32))
	if err != nil {
		t.Fatal(err)
	}
	cfg := cfgFor("127.0.0.1:1")
	cfg.Protocol = ProtocolPostgres
	cfg.Postgres = PostgresSetup{Database: "app", User: "pool", Password: "pw-label", SSLMode: PostgresSSLVerifyFull}
	b, err := encodeRecord(record{Config: cfg}, s)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(b, s)
	if err != nil || r.Config.Postgres.Password != "pw-label" || r.Config.Postgres.SSLMode != PostgresSSLVerifyFull {
		t.Fatalf("decode: %+v, %v", r.Config.Postgres, err)
	}
	if _, err := decodeRecord(b, nil); !errors.Is(err, errRecord) || !strings.Contains(err.Error(), "PostgreSQL password") {
		t.Fatalf("decode without a secret key: %v", err)
	}
	j := postgresJSONOf(t, cfg, s)
	if _, err := s.Open(j.PasswordSealed, passwordAAD); err == nil {
		t.Fatal("a sealed PostgreSQL password opens as a Redis password")
	}
	if _, err := s.Open(j.PasswordSealed, keyAAD); err == nil {
		t.Fatal("a sealed PostgreSQL password opens as a client key")
	}
}

func postgresJSONOf(t *testing.T, cfg Config, s *seal.Sealer) *postgresJSON {
	t.Helper()
	j, err := postgresToJSON(cfg.Postgres, s)
	if err != nil || j == nil || j.PasswordSealed == "" || j.Password != "" {
		t.Fatalf("postgresToJSON: %+v, %v", j, err)
	}
	return j
}

// TestPostgresPasswordNeedsSecretKey: without a secret key a password cannot
// be stored sealed, so it is refused, like the Redis password.
func TestPostgresPasswordNeedsSecretKey(t *testing.T) {
	m := newTestManager(t, newMemStore())
	cfg := cfgFor("127.0.0.1:1")
	cfg.Protocol = ProtocolPostgres
	cfg.Postgres = PostgresSetup{Database: "app", User: "pool", Password: "pw"}
	_, err := m.Create(context.Background(), "db", cfg, WriteOptions{})
	var verr *ValidationError
	if !errors.As(err, &verr) || verr.Violations[0].Field != "postgres.password" || !strings.Contains(err.Error(), "secret-key-file") {
		t.Fatalf("a password without a secret key: %v", err)
	}
	_, err = m.Apply(context.Background(), []PoolSpec{{ID: "db", Config: cfg}}, ApplyOptions{})
	if !errors.As(err, &verr) || !strings.Contains(verr.Violations[0].Field, "postgres.password") {
		t.Fatalf("Apply of a password without a secret key: %v", err)
	}
	cfg.Postgres.Password = ""
	if _, err := m.Create(context.Background(), "trust", cfg, WriteOptions{}); err != nil {
		t.Fatalf("a POSTGRES pool without a password: %v", err)
	}
}
