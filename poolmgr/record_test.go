package poolmgr

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func fullRecord() record {
	return record{
		Config: Config{
			Endpoints: []string{"db.internal:5432", "10.0.0.7:5432"},
			TLS:       TLSConfig{Enabled: true, ServerName: "db", CAPEM: "ca", ClientCertPEM: "cert", ClientKeyPEM: "key"},
			Limits: Limits{MaxConnections: 50, MinIdle: 5, MaxIdle: 20, MaxWaiters: 7,
				AcquireTimeout: 1500 * time.Millisecond, DialTimeout: 3 * time.Second},
			Lifecycle: Lifecycle{MaxLifetime: time.Hour, LifetimeJitter: time.Minute, IdleTimeout: 90 * time.Second,
				ValidateAfterIdle: time.Second, MaxLeaseDuration: 10 * time.Minute, TCPKeepAlive: -1},
			HealthCheck: HealthCheck{Kind: HealthHTTP, Interval: 10 * time.Second, Timeout: time.Second, HTTPPath: "/healthz"},
			DNSRefresh:  time.Minute,
			Reuse:       SingleUse,
			IdleOrder:   FIFO,
			Labels:      map[string]string{"team": "data", "tier": "1"},
		},
		State:      StatePaused,
		CreateTime: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		UpdateTime: time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC),
		Op:         ActionPause,
	}
}

func TestRecordRoundTrip(t *testing.T) {
	minimal := record{Config: Config{Endpoints: []string{"a:1"}}.WithDefaults(), State: StateActive, Op: ActionCreate}
	draining := fullRecord()
	draining.State = StateDraining
	draining.Config.HealthCheck = HealthCheck{Kind: HealthRedisPing, Interval: time.Second, Timeout: time.Millisecond}
	tests := map[string]record{
		"minimal":  minimal,
		"full":     fullRecord(),
		"draining": draining,
		"zero":     {},
	}
	for name, r := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := encodeRecord(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeRecord(b, nil)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
			}
		})
	}
}

// TestRecordFormat pins the version-1 format: a record written by an
// earlier build must keep decoding to the same pool.
func TestRecordFormat(t *testing.T) {
	const v1 = `{"v":1,"state":"PAUSED","create_time":"2026-01-02T03:04:05.000000006Z","update_time":"2026-02-03T04:05:06.000000007Z","op":"PAUSE",
"config":{"endpoints":["db.internal:5432","10.0.0.7:5432"],
"tls":{"enabled":true,"server_name":"db","ca_pem":"ca","client_cert_pem":"cert","client_key_pem":"key"},
"limits":{"max_connections":50,"min_idle":5,"max_idle":20,"max_waiters":7,"acquire_timeout_ns":1500000000,"dial_timeout_ns":3000000000},
"lifecycle":{"max_lifetime_ns":3600000000000,"lifetime_jitter_ns":60000000000,"idle_timeout_ns":90000000000,"validate_after_idle_ns":1000000000,"max_lease_duration_ns":600000000000,"tcp_keepalive_ns":-1},
"health_check":{"kind":"HTTP","interval_ns":10000000000,"timeout_ns":1000000000,"http_path":"/healthz"},
"dns_refresh_ns":60000000000,"reuse_policy":"SINGLE_USE","idle_order":"FIFO","labels":{"team":"data","tier":"1"}}}`
	got, err := decodeRecord([]byte(v1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := fullRecord(); !reflect.DeepEqual(got, want) {
		t.Fatalf("decode v1:\n got %+v\nwant %+v", got, want)
	}
	b, err := encodeRecord(fullRecord(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.ReplaceAll(v1, "\n", ""); string(b) != want {
		t.Fatalf("encode changed the v1 format:\n got %s\nwant %s", b, want)
	}
}

func TestRecordDecodeErrors(t *testing.T) {
	good, err := encodeRecord(fullRecord(), nil)
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) string {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q not in %s", old, good)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	tests := map[string]struct {
		in, want string
	}{
		"newer version":  {replace(`"v":1`, `"v":2`), "schema version 2 is newer"},
		"no version":     {replace(`"v":1,`, ``), "no schema version"},
		"zero version":   {replace(`"v":1`, `"v":0`), "invalid schema version 0"},
		"unknown field":  {replace(`"op":`, `"shiny":1,"op":`), "unknown field"},
		"unknown state":  {replace(`"PAUSED"`, `"SLEEPING"`), `state: unknown value "SLEEPING"`},
		"unknown reuse":  {replace(`"SINGLE_USE"`, `"SOMETIMES"`), "reuse_policy"},
		"unknown order":  {replace(`"FIFO"`, `"RANDOM"`), "idle_order"},
		"unknown kind":   {replace(`"HTTP"`, `"GOPHER"`), "health_check.kind"},
		"wrong type":     {replace(`"max_connections":50`, `"max_connections":"50"`), "max_connections"},
		"trailing data":  {string(good) + `{}`, "after top-level value"},
		"not json":       {"\x00garbage", "bad pool record"},
		"empty":          {"", "bad pool record"},
		"bad time":       {replace(`"2026-01-02T03:04:05.000000006Z"`, `"yesterday"`), "bad pool record"},
		"year below 0":   {replace(`"2026-01-02T03:04:05.000000006Z"`, `"0000-01-01T00:00:00+01:00"`), "out of range"},
		"not an object":  {`[1]`, "bad pool record"},
		"version string": {replace(`"v":1`, `"v":"1"`), "bad pool record"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := decodeRecord([]byte(tt.in), nil)
			if err == nil {
				t.Fatalf("decode %s: no error", tt.in)
			}
			if !errors.Is(err, errRecord) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("decode: got %v, want an errRecord containing %q", err, tt.want)
			}
		})
	}
}

func TestRecordEncodeRefusesUnknownEnums(t *testing.T) {
	for name, r := range map[string]record{
		"state": {State: State(9)},
		"reuse": {Config: Config{Reuse: ReusePolicy(9)}},
		"order": {Config: Config{IdleOrder: IdleOrder(9)}},
		"kind":  {Config: Config{HealthCheck: HealthCheck{Kind: HealthCheckKind(9)}}},
	} {
		if _, err := encodeRecord(r, nil); err == nil {
			t.Errorf("%s: encode succeeded", name)
		}
	}
}

// FuzzDecodeRecord checks that decoding never panics and that whatever
// decodes re-encodes to a stable form that decodes to the same record.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []record{fullRecord(), {}, {Config: Config{Endpoints: []string{"a:1"}}.WithDefaults()}} {
		b, err := encodeRecord(r, nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{"v":1,"state":"ACTIVE","config":{"labels":{}}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		r1, err := decodeRecord(in, nil)
		if err != nil {
			if !errors.Is(err, errRecord) {
				t.Fatalf("decode error %v does not wrap errRecord", err)
			}
			return
		}
		b1, err := encodeRecord(r1, nil)
		if err != nil {
			t.Fatalf("decoded %q but cannot re-encode: %v", in, err)
		}
		r2, err := decodeRecord(b1, nil)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", b1, err)
		}
		if !r1.Config.Equal(r2.Config) || r1.State != r2.State || r1.Op != r2.Op ||
			!r1.CreateTime.Equal(r2.CreateTime) || !r1.UpdateTime.Equal(r2.UpdateTime) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r1, r2)
		}
		b2, err := encodeRecord(r2, nil)
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s (%v)", b1, b2, err)
		}
	})
}
