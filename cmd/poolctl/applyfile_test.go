package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// mustPools parses protojson pools for want values.
func mustPools(t *testing.T, js ...string) []*poolv1.Pool {
	t.Helper()
	out := make([]*poolv1.Pool, 0, len(js))
	for _, j := range js {
		p := &poolv1.Pool{}
		if err := protojson.Unmarshal([]byte(j), p); err != nil {
			t.Fatalf("bad want %s: %v", j, err)
		}
		out = append(out, p)
	}
	return out
}

func TestParseApplyFile(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // protojson of each pool
	}{
		{
			name: "pools list, snake_case",
			in: `
pools:
  - name: pools/api
    endpoints: [127.0.0.1:8080]
    limits: {max_connections: 5, acquire_timeout: 2s}
    health_check: {kind: HEALTH_CHECK_KIND_HTTP, http_path: /h}
`,
			want: []string{`{"name":"pools/api","endpoints":["127.0.0.1:8080"],
				"limits":{"maxConnections":5,"acquireTimeout":"2s"},
				"healthCheck":{"kind":"HEALTH_CHECK_KIND_HTTP","httpPath":"/h"}}`},
		},
		{
			name: "camelCase and id",
			in: `
pools:
  - id: cache
    endpoints: [127.0.0.1:6379]
    healthCheck: {kind: HEALTH_CHECK_KIND_REDIS_PING}
    limits: {minIdle: 2}
    dnsRefresh: 1m
`,
			want: []string{`{"name":"pools/cache","endpoints":["127.0.0.1:6379"],
				"healthCheck":{"kind":"HEALTH_CHECK_KIND_REDIS_PING"},"limits":{"minIdle":2},"dnsRefresh":"60s"}`},
		},
		{
			name: "short and lowercase enums",
			in: `
pools:
  - name: a
    endpoints: [h:1]
    health_check: {kind: redis_ping}
    reuse_policy: single-use
    idle_order: FIFO
`,
			want: []string{`{"name":"pools/a","endpoints":["h:1"],"healthCheck":{"kind":"HEALTH_CHECK_KIND_REDIS_PING"},
				"reusePolicy":"REUSE_POLICY_SINGLE_USE","idleOrder":"IDLE_ORDER_FIFO"}`},
		},
		{
			name: "json document",
			in: `{"pools": [{"name": "pools/a", "endpoints": ["h:1"]},
	{"id": "b", "endpoints": ["h:2"], "tls": {"enabled": true, "serverName": "x"}}]}`,
			want: []string{
				`{"name":"pools/a","endpoints":["h:1"]}`,
				`{"name":"pools/b","endpoints":["h:2"],"tls":{"enabled":true,"serverName":"x"}}`,
			},
		},
		{
			name: "bare list and several documents",
			in:   "- {id: a, endpoints: [h:1]}\n---\nid: b\nendpoints: [h:2]\n---\npools:\n  - {id: c, endpoints: [h:3]}\n",
			want: []string{
				`{"name":"pools/a","endpoints":["h:1"]}`,
				`{"name":"pools/b","endpoints":["h:2"]}`,
				`{"name":"pools/c","endpoints":["h:3"]}`,
			},
		},
		{
			name: "merge keys in a list",
			in: `
pools:
  - &a
    id: a
    endpoints: [h:1]
    limits: {max_connections: 7}
  - <<: *a
    id: b
    labels: {env: dev}
`,
			want: []string{
				`{"name":"pools/a","endpoints":["h:1"],"limits":{"maxConnections":7}}`,
				`{"name":"pools/b","endpoints":["h:1"],"limits":{"maxConnections":7},"labels":{"env":"dev"}}`,
			},
		},
		{
			name: "output-only fields from get -o yaml",
			in: `
name: pools/a
endpoints: [h:1]
state: POOL_STATE_ACTIVE
generation: "3"
revision: "12"
etag: "12"
create_time: "2025-01-02T03:04:05Z"
update_time: 2025-01-02T03:04:05Z
`,
			want: []string{`{"name":"pools/a","endpoints":["h:1"],"state":"POOL_STATE_ACTIVE","generation":"3",
				"revision":"12","etag":"12","createTime":"2025-01-02T03:04:05Z","updateTime":"2025-01-02T03:04:05Z"}`},
		},
		{
			name: "explicit empty set",
			in:   "pools: []\n",
			want: []string{},
		},
		{
			name: "null pools",
			in:   "pools:\n",
			want: []string{},
		},
		{
			name: "numbers as strings and labels",
			in:   "pools:\n- id: a\n  endpoints: [h:1]\n  limits: {max_connections: \"9\"}\n  labels: {a: \"1\", b: x}\n",
			want: []string{`{"name":"pools/a","endpoints":["h:1"],"limits":{"maxConnections":9},"labels":{"a":"1","b":"x"}}`},
		},
		{
			name: "postgres",
			in: `
pools:
  - id: db
    endpoints: [127.0.0.1:5432]
    protocol: postgres
    postgres:
      database: app
      user: pool
      password: pw
      ssl_mode: verify-full
      params: {application_name: web, statement_timeout: 5000, jit: false}
      reset_query: DISCARD ALL
      close_open_transactions: true
`,
			want: []string{`{"name":"pools/db","endpoints":["127.0.0.1:5432"],"protocol":"PROTOCOL_POSTGRES",
				"postgres":{"database":"app","user":"pool","password":"pw","sslMode":"POSTGRES_SSL_MODE_VERIFY_FULL",
				"params":{"application_name":"web","statement_timeout":"5000","jit":"false"},"resetQuery":"DISCARD ALL",
				"closeOpenTransactions":true}}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseApplyFile([]byte(tt.in))
			if err != nil {
				t.Fatalf("parseApplyFile: %v", err)
			}
			want := mustPools(t, tt.want...)
			if len(got) != len(want) {
				t.Fatalf("got %d pools, want %d: %v", len(got), len(want), got)
			}
			for i := range got {
				if !proto.Equal(got[i], want[i]) {
					t.Errorf("pool %d:\n got %v\nwant %v", i, got[i], want[i])
				}
			}
		})
	}
}

func TestParseApplyFileErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "no pools in file"},
		{"comments only", "# nothing\n", "no pools in file"},
		{"scalar", "hello\n", `line 1: expected a mapping with a "pools:" list, got "hello"`},
		{"syntax", "pools: [\n", "parse:"},
		{"pools not a list", "pools: {id: a}\n", `line 1: "pools" must be a list`},
		{"extra top-level key", "defaults: {}\npools: []\n", `line 1: unknown top-level key "defaults"`},
		{"item not a mapping", "pools: [a]\n", "pools[0]: line 1: expected a mapping"},
		{"no name", "pools:\n- endpoints: [h:1]\n", "pools[0]: missing name"},
		{"empty name", "pools:\n- name: \"\"\n", "pools[0]: line 2: name must be a non-empty string"},
		{"bad id", "pools:\n- id: pools/a\n", `id "pools/a" must be a bare pool ID`},
		{"name and id disagree", "pools:\n- {name: pools/a, id: b}\n", `id "b" disagrees with name "pools/a"`},
		{"name prefix only", "pools:\n- name: pools/\n", "has no pool ID"},
		{"duplicate", "pools:\n- {id: a}\n- {name: pools/a}\n", "pools[1]: pools/a is also pools[0]"},
		{"unknown field", "pools:\n- id: a\n  endpoint: [h:1]\n", `pools[0] (pools/a): line 3: unknown field "endpoint" in Pool`},
		{"unknown nested field", "pools:\n- id: a\n  limits:\n    max_conns: 3\n", `line 4: unknown field "max_conns" in Limits`},
		{"bad enum", "pools:\n- id: a\n  health_check: {kind: ping}\n", `line 3: invalid HealthCheckKind "ping"; want one of HEALTH_CHECK_KIND_UNSPECIFIED`},
		{"bad duration", "pools:\n- id: a\n  limits: {acquire_timeout: soon}\n", "pools[0] (pools/a): line 2:"},
		{"duration as number", "pools:\n- id: a\n  dns_refresh: 30\n", "pools[0] (pools/a):"},
		{"bad int", "pools:\n- id: a\n  limits: {max_connections: lots}\n", "pools[0] (pools/a):"},
		{"endpoints not a list", "pools:\n- id: a\n  endpoints: h:1\n", "line 3: endpoints: expected a list"},
		{"duplicate key", "pools:\n- id: a\n  labels: {}\n  labels: {}\n", `line 4: duplicate key "labels"`},
		{"infinity", "pools:\n- id: a\n  limits: {max_connections: .inf}\n", "not a valid number"},
		{"non-string key", "pools:\n- id: a\n  labels: {[x]: y}\n", "mapping keys must be strings"},
		{"limits not a mapping", "pools:\n- id: a\n  limits: 3\n", "line 3: Limits: expected a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseApplyFile([]byte(tt.in))
			if err == nil {
				t.Fatalf("parseApplyFile succeeded, want error %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestParseApplyFileAliasBomb(t *testing.T) {
	// endpoints: [&a0 [x x ...], &a1 [*a0 *a0 ...], ..., &a8 [*a7 ...]]
	// expands to 10^9 values.
	var b strings.Builder
	b.WriteString("pools:\n- id: a\n  endpoints:\n    - &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		_, _ = fmt.Fprintf(&b, "    - &a%d [", i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			_, _ = fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	_, err := parseApplyFile([]byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "expands to more than") {
		t.Fatalf("parseApplyFile = %v, want the expansion limit", err)
	}
}

// TestExamplePoolsFile parses examples/pools.yaml; TestEndToEnd applies it.
func TestExamplePoolsFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", "pools.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pools, err := parseApplyFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 2 {
		t.Fatalf("got %d pools, want 2", len(pools))
	}
	api, cache := pools[0], pools[1]
	if api.GetName() != "pools/api" || api.GetEndpoints()[0] != "127.0.0.1:7701" || api.GetTls().GetEnabled() {
		t.Errorf("api = %v", api)
	}
	if cache.GetName() != "pools/cache" || cache.GetEndpoints()[0] != "127.0.0.1:6379" ||
		cache.GetHealthCheck().GetKind() != poolv1.HealthCheckKind_HEALTH_CHECK_KIND_REDIS_PING ||
		cache.GetLimits().GetMinIdle() != 2 {
		t.Errorf("cache = %v", cache)
	}
}

// FuzzParseApplyFile checks that the parser never panics and that what it
// accepts is well formed: unique names under pools/, and every pool
// round-trips through protojson.
func FuzzParseApplyFile(f *testing.F) {
	seeds := []string{
		"pools:\n- id: a\n  endpoints: [h:1]\n",
		"pools:\n  - name: pools/api\n    endpoints: [127.0.0.1:8080]\n    limits: {max_connections: 5, acquire_timeout: 2s}\n",
		`{"pools":[{"name":"pools/a","endpoints":["h:1"],"healthCheck":{"kind":"REDIS_PING"}}]}`,
		"- {id: a}\n---\nid: b\n",
		"pools:\n- &a {id: a, labels: {x: y}}\n- <<: *a\n  id: b\n",
		"pools: []\n",
		"name: pools/a\nstate: POOL_STATE_ACTIVE\ncreate_time: 2025-01-02T03:04:05Z\n",
		"pools:\n- id: a\n  tls: {enabled: true, ca_pem: |\n    -----BEGIN CERTIFICATE-----\n    x\n    -----END CERTIFICATE-----\n  }\n",
		"a: &a [*a]\n",
		"pools: [{id: a, limits: {max_connections: .inf}}]",
	}
	if data, err := os.ReadFile(filepath.Join("..", "..", "examples", "pools.yaml")); err == nil {
		seeds = append(seeds, string(data))
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pools, err := parseApplyFile(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range pools {
			id, ok := strings.CutPrefix(p.GetName(), poolsPrefix)
			if !ok || id == "" {
				t.Fatalf("accepted pool name %q", p.GetName())
			}
			if seen[p.GetName()] {
				t.Fatalf("accepted duplicate %q", p.GetName())
			}
			seen[p.GetName()] = true
			js, err := protojson.Marshal(p)
			if err != nil {
				t.Fatalf("protojson.Marshal(%v): %v", p, err)
			}
			back := &poolv1.Pool{}
			if err := protojson.Unmarshal(js, back); err != nil || !proto.Equal(p, back) {
				t.Fatalf("round trip of %s: %v", js, err)
			}
		}
	})
}
