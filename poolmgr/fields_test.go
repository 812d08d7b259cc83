package poolmgr

import (
	"bytes"
	"context"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/poolmgr/internal/keytest"
)

// setLeaf sets the leaf of c at path (a FieldPaths entry) to a value that
// differs from its zero value and is a valid member of its type (an enum's
// second constant, one second, "x"...).
func setLeaf(t *testing.T, c *Config, path string) {
	t.Helper()
	v := reflect.ValueOf(c).Elem()
	for seg := range strings.SplitSeq(path, ".") {
		found := false
		for i := range v.NumField() {
			if v.Type().Field(i).Tag.Get("field") == seg {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			t.Fatalf("%s: no Config field tagged %q", path, seg)
		}
	}
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		v.SetInt(int64(time.Second))
	case v.Kind() == reflect.Bool:
		v.SetBool(true)
	case v.Kind() == reflect.String:
		v.SetString("x")
	case v.Kind() == reflect.Int:
		v.SetInt(1)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		v.Set(reflect.ValueOf([]string{"x:1"}))
	case v.Kind() == reflect.Map:
		v.Set(reflect.ValueOf(map[string]string{"k": "v"}))
	case v.Type() == reflect.TypeFor[[]Listener]():
		// Every field of a listener set, so each must survive the record.
		v.Set(reflect.ValueOf([]Listener{{Address: "unix:///run/x.sock", Mode: 0o600, Group: "g", TLS: true}}))
	default:
		t.Fatalf("%s: setLeaf knows no value for a %v: teach it one", path, v.Type())
	}
}

// TestEveryConfigFieldIsStored adds up what a Config field needs in this
// package: a field tag (FieldPaths, DiffFields) and a place in the record.
// A field missing from encodeRecord or decodeRecord fails here, named.
// server's TestEveryPoolFieldIsWired checks the same paths against the Pool
// message.
func TestEveryConfigFieldIsStored(t *testing.T) {
	paths := FieldPaths()
	if len(paths) == 0 || len(slices.Compact(slices.Sorted(slices.Values(paths)))) != len(paths) {
		t.Fatalf("field paths empty or repeated: %v", paths)
	}
	for _, path := range paths {
		var c Config
		setLeaf(t, &c, path)
		if d := (Config{}).DiffFields(c); !slices.Equal(d, []string{path}) {
			t.Errorf("%s: DiffFields reports %v, want just the field", path, d)
			continue
		}
		b, err := encodeRecord(record{Config: c, Op: ActionCreate}, nil)
		if err != nil {
			t.Errorf("%s: record encode: %v", path, err)
			continue
		}
		r, err := decodeRecord(b, nil)
		if err != nil {
			t.Errorf("%s: record decode: %v", path, err)
			continue
		}
		if d := c.DiffFields(r.Config); len(d) != 0 {
			t.Errorf("%s: not in the record (encodeRecord/decodeRecord lose %v)", path, d)
		}
	}
}

// TestStoredClientKeySurvives checks the one rule by which a stored client
// key survives a write that omits it (keepStoredKey), through Update with
// KeepClientKey and through Apply.
func TestStoredClientKeySurvives(t *testing.T) {
	ctx := context.Background()
	certPEM, keyPEM := keytest.KeyPair(t)
	otherCert, _ := keytest.KeyPair(t)
	m, err := NewManager(ManagerConfig{Store: newMemStore(), Logger: slog.New(slog.DiscardHandler), SecretKey: bytes.Repeat([]byte{1}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cfg := cfgFor("127.0.0.1:1")
	cfg.TLS = TLSConfig{Enabled: true, ClientCertPEM: certPEM, ClientKeyPEM: keyPEM}
	mustCreate(t, m, "mtls", cfg)

	readBack := cfg
	readBack.TLS.ClientKeyPEM = "" // as a client reads it back
	readBack.Limits.MaxWaiters = 3
	info, err := m.Update(ctx, "mtls", readBack, 0, WriteOptions{KeepClientKey: true})
	if err != nil || info.Config.TLS.ClientKeyPEM != keyPEM || info.Config.Limits.MaxWaiters != 3 {
		t.Fatalf("full replace with unchanged cert dropped the key: %v", err)
	}
	if _, err := m.Update(ctx, "mtls", readBack, 0, WriteOptions{}); err == nil {
		t.Fatal("an explicitly empty key was kept")
	}
	newCert := readBack
	newCert.TLS.ClientCertPEM = otherCert
	if _, err := m.Update(ctx, "mtls", newCert, 0, WriteOptions{KeepClientKey: true}); err == nil {
		t.Fatal("a new certificate kept the old key")
	}

	readBack.Limits.MaxWaiters = 4
	plan, err := m.Apply(ctx, []PoolSpec{{ID: "mtls", Config: readBack}}, ApplyOptions{})
	if err != nil || len(plan.Actions) != 1 || !slices.Equal(plan.Actions[0].ChangedFields, []string{"limits.max_waiters"}) {
		t.Fatalf("Apply of a pool read back: %+v, %v", plan, err)
	}
	if info, err := m.Get(ctx, "mtls"); err != nil || info.Config.TLS.ClientKeyPEM != keyPEM {
		t.Fatalf("Apply dropped the key: %v", err)
	}
	if readBack.TLS.ClientKeyPEM != "" {
		t.Fatal("Apply wrote into the caller's spec")
	}
	if _, err := m.Apply(ctx, []PoolSpec{{ID: "mtls", Config: newCert}}, ApplyOptions{}); err == nil {
		t.Fatal("Apply: a new certificate kept the old key")
	}
}
