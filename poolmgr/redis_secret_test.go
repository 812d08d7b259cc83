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
)

// TestRedisPasswordAtRest checks that a Redis password is sealed in the
// bbolt file (every revision of it), reads back under the same secret key,
// and survives a write that omits it by the rule of keepStoredKey.
func TestRedisPasswordAtRest(t *testing.T) {
	ctx := context.Background()
	const password = "s3cret-redis-password-0123456789"
	path := filepath.Join(t.TempDir(), "poold.db")
	st := openBolt(t, path)
	m, err := NewManager(ManagerConfig{Store: st, Logger: slog.New(slog.DiscardHandler), SecretKey: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })

	cfg := cfgFor("127.0.0.1:1")
	cfg.Protocol = ProtocolRedis
	cfg.Redis = RedisSetup{Username: "app", Password: password, Database: 2}
	mustCreate(t, m, "cache", cfg)
	if info, err := m.Get(ctx, "cache"); err != nil || info.Config.Redis.Password != password || info.Config.ResetTimeout != DefaultResetTimeout || info.Config.Redis.ProtocolVersion != 2 {
		t.Fatalf("Get: the setup does not round-trip: %+v, %v", info.Config.Redis, err)
	}

	// Read back (no password) and written whole: the password stays.
	readBack := cfg
	readBack.Redis.Password = ""
	readBack.Limits.MaxWaiters = 3
	info, err := m.Update(ctx, "cache", readBack, 0, WriteOptions{KeepRedisPassword: true})
	if err != nil || info.Config.Redis.Password != password || info.Config.Limits.MaxWaiters != 3 {
		t.Fatalf("update of a pool read back dropped the password: %v", err)
	}
	// Without the option the empty password is meant: a username needs one.
	if _, err := m.Update(ctx, "cache", readBack, 0, WriteOptions{}); err == nil {
		t.Fatal("an explicitly empty password was kept")
	}
	// A new username does not take the old user's password.
	newUser := readBack
	newUser.Redis.Username = "other"
	if _, err := m.Update(ctx, "cache", newUser, 0, WriteOptions{KeepRedisPassword: true}); err == nil {
		t.Fatal("a new username kept the old password")
	}
	// Apply keeps it by the same rule.
	readBack.Limits.MaxWaiters = 4
	plan, err := m.Apply(ctx, []PoolSpec{{ID: "cache", Config: readBack}}, ApplyOptions{})
	if err != nil || len(plan.Actions) != 1 || !slices.Equal(plan.Actions[0].ChangedFields, []string{"limits.max_waiters"}) {
		t.Fatalf("Apply of a pool read back: %+v, %v", plan, err)
	}
	if info, err := m.Get(ctx, "cache"); err != nil || info.Config.Redis.Password != password {
		t.Fatalf("Apply dropped the password: %v", err)
	}
	if readBack.Redis.Password != "" {
		t.Fatal("Apply wrote into the caller's spec")
	}
	revs, err := m.History(ctx, "cache")
	if err != nil || len(revs) < 3 {
		t.Fatalf("History: %d revisions, %v", len(revs), err)
	}
	for _, r := range revs {
		if r.Config.Redis.Password != password {
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
		t.Fatal("the bbolt file holds the Redis password in clear")
	}
	if !bytes.Contains(b, []byte(`"password_sealed":"v1.`)) {
		t.Fatal("the bbolt file holds no sealed Redis password")
	}
}

// TestRedisPasswordNeedsSecretKey: without a secret key a password cannot
// be stored sealed, so it is refused, like an inline client key.
func TestRedisPasswordNeedsSecretKey(t *testing.T) {
	m := newTestManager(t, newMemStore())
	cfg := cfgFor("127.0.0.1:1")
	cfg.Protocol = ProtocolRedis
	cfg.Redis = RedisSetup{Password: "pw"}
	_, err := m.Create(context.Background(), "cache", cfg, WriteOptions{})
	var verr *ValidationError
	if !errors.As(err, &verr) || verr.Violations[0].Field != "redis.password" || !strings.Contains(err.Error(), "secret-key-file") {
		t.Fatalf("a password without a secret key: %v", err)
	}
	cfg.Redis = RedisSetup{Database: 1}
	if _, err := m.Create(context.Background(), "nopw", cfg, WriteOptions{}); err != nil {
		t.Fatalf("a REDIS pool without a password: %v", err)
	}
}
