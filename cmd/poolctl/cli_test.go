package main

import (
	"encoding/json"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/testkit"
)

func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "__start_poolctl",
		"zsh":  "#compdef poolctl",
		"fish": "complete -c poolctl",
	} {
		r := runCLI(t, "", "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, stdout does not contain %q; stderr %q", shell, r.code, want, r.stderr)
		}
	}
	// Commands and the values of -o complete.
	r := runCLI(t, "", "__complete", "dr")
	if r.code != 0 || !strings.Contains(r.stdout, "drain") {
		t.Errorf("__complete dr: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCLI(t, "", "__complete", "list", "-o", "")
	for _, f := range outputFormats {
		if !strings.Contains(r.stdout, f+"\n") {
			t.Errorf("__complete -o: %q lacks %s", r.stdout, f)
		}
	}
}

func TestCompletePools(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: alpha\n  endpoints: ["+echo+"]\n- id: beta\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	out := ts.ok(t, "", "__complete", "drain", "")
	if !strings.Contains(out, "alpha\n") || !strings.Contains(out, "beta\n") {
		t.Fatalf("__complete drain: %q", out)
	}
}

func TestUnreachable(t *testing.T) {
	addr := closedAddr(t)
	r := runCLI(t, "", "--server", addr, "--timeout", "5s", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "is poold running at "+addr+"?") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestOutputFormats(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: alpha\n  endpoints: ["+echo+"]\n  labels: {team: a}\n- id: beta\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")

	if out := ts.ok(t, "", "list", "-o", "name"); out != "pools/alpha\npools/beta\n" {
		t.Errorf("list -o name: %q", out)
	}
	if out := ts.ok(t, "", "get", "alpha", "beta", "-o", "name"); out != "pools/alpha\npools/beta\n" {
		t.Errorf("get alpha beta -o name: %q", out)
	}
	out := ts.ok(t, "", "get", "alpha", "beta")
	if !regexp.MustCompile(`(?m)^pools/alpha\s+ACTIVE`).MatchString(out) || !regexp.MustCompile(`(?m)^pools/beta\s+ACTIVE`).MatchString(out) {
		t.Errorf("get alpha beta:\n%s", out)
	}
	if out := ts.ok(t, "", "list", "-o", "wide"); !strings.Contains(out, "LABELS") || !strings.Contains(out, "team=a") {
		t.Errorf("list -o wide:\n%s", out)
	}
	ts.fails(t, "NOT_FOUND", "get", "alpha", "nosuch")

	// JSON and YAML: the same field names, zero values included.
	var js map[string]any
	if err := json.Unmarshal([]byte(ts.ok(t, "", "stats", "alpha", "-o", "json")), &js); err != nil {
		t.Fatal(err)
	}
	var ys map[string]any
	if err := yaml.Unmarshal([]byte(ts.ok(t, "", "stats", "alpha", "-o", "yaml")), &ys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"in_use", "waiters", "timeouts", "max_connections", "acquire_wait"} {
		if _, ok := js[k]; !ok {
			t.Errorf("stats -o json lacks %s: %v", k, js)
		}
		if _, ok := ys[k]; !ok {
			t.Errorf("stats -o yaml lacks %s: %v", k, ys)
		}
	}
	if js["in_use"] != float64(0) {
		t.Errorf("in_use = %v", js["in_use"])
	}
	for k, v := range js {
		if v == nil {
			t.Errorf("stats -o json has %s: null", k)
		}
	}
	// The stats table shows wait percentiles, not buckets.
	if out := ts.ok(t, "", "stats", "alpha", "beta"); !strings.Contains(out, "WAIT_P99") || !strings.Contains(out, "pools/beta") {
		t.Errorf("stats alpha beta:\n%s", out)
	}
	// What list -o yaml and get -o yaml of several pools print applies
	// back unchanged.
	for _, args := range [][]string{{"list", "-o", "yaml"}, {"get", "alpha", "beta", "-o", "yaml"}, {"list", "-o", "json"}} {
		out := ts.ok(t, ts.ok(t, "", args...), "apply", "-f", "-")
		if !strings.Contains(out, "no changes") {
			t.Errorf("%v | apply -f -:\n%s", args, out)
		}
	}
	// What get -o json prints parses back.
	p := &poolv1.Pool{}
	if err := protojson.Unmarshal([]byte(ts.ok(t, "", "get", "alpha", "-o", "json")), p); err != nil || p.GetLabels()["team"] != "a" {
		t.Errorf("get -o json: %v, %v", p, err)
	}
}

func TestConfigContexts(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: alpha\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("current_context: dead\ncontexts:\n"+
		"- name: dead\n  server: "+closedAddr(t)+"\n  timeout: 5s\n"+
		"- name: test\n  server: "+ts.addr+"\n  token_file: token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POOLCTL_CONFIG", cfg)

	// --context picks a context; its token file is read, relative to the
	// config file.
	r := runCLI(t, "", "--context", "test", "list", "-o", "name")
	if r.code != 0 || r.stdout != "pools/alpha\n" {
		t.Fatalf("--context test: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// current_context is the default, and --server overrides it.
	if r := runCLI(t, "", "list"); r.code != 1 || !strings.Contains(r.stderr, "is poold running at") {
		t.Errorf("current context: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, "", "--server", ts.addr, "list", "-o", "name"); r.code != 0 {
		t.Errorf("--server over the context: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Setenv("POOLCTL_CONTEXT", "test")
	if r := runCLI(t, "", "list", "-o", "name"); r.code != 0 {
		t.Errorf("POOLCTL_CONTEXT: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, "", "--context", "nope", "list"); r.code != 2 || !strings.Contains(r.stderr, `no context "nope"`) {
		t.Errorf("--context nope: exit %d, stderr %q", r.code, r.stderr)
	}

	// config lists the contexts and switches the current one, keeping the
	// file's comments.
	if out := runCLI(t, "", "config", "get-contexts").stdout; !regexp.MustCompile(`(?m)^\*\s+test\s+` + regexp.QuoteMeta(ts.addr)).MatchString(out) {
		t.Errorf("config get-contexts (POOLCTL_CONTEXT=test):\n%s", out)
	}
	t.Setenv("POOLCTL_CONTEXT", "")
	if err := os.WriteFile(cfg, append([]byte("# mine\n"), mustRead(t, cfg)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, "", "config", "use-context", "test"); r.code != 0 {
		t.Fatalf("config use-context: exit %d, stderr %q", r.code, r.stderr)
	}
	if out := runCLI(t, "", "config", "current-context").stdout; out != "test\n" {
		t.Errorf("config current-context = %q", out)
	}
	if !strings.Contains(mustRead(t, cfg), "# mine") {
		t.Errorf("use-context lost the file's comment:\n%s", mustRead(t, cfg))
	}
	if r := runCLI(t, "", "list", "-o", "name"); r.code != 0 {
		t.Errorf("after use-context: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, "", "config", "use-context", "nope"); r.code != 1 || !strings.Contains(r.stderr, `no context "nope"`) {
		t.Errorf("use-context nope: exit %d, stderr %q", r.code, r.stderr)
	}

	e := &env{}
	if err := e.g.envDefaults(); err != nil {
		t.Fatal(err)
	}
	e.g.context = "test"
	if err := e.applyConfig(); err != nil {
		t.Fatal(err)
	}
	if err := e.g.readTokenFile(); err != nil {
		t.Fatal(err)
	}
	if e.g.token != "s3cret" || e.g.server != ts.addr || e.g.contextName != "test" {
		t.Errorf("globals from the context: %+v", e.g)
	}
}

func TestQuantile(t *testing.T) {
	h := &poolv1.Histogram{Bounds: []float64{0.001, 0.01, 0.1}, Counts: []uint64{50, 40, 9, 1}, Count: 100}
	for _, tt := range []struct {
		q, want float64
	}{
		{0.5, 0.001},
		{0.9, 0.01},
		{0.99, 0.1},
		{1, 0.1},
	} {
		got, ok := quantile(h, tt.q)
		if !ok || math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, %v; want %v", tt.q, got, ok, tt.want)
		}
	}
	if _, ok := quantile(&poolv1.Histogram{Bounds: []float64{1}, Counts: []uint64{0, 0}}, 0.5); ok {
		t.Error("quantile of an empty histogram")
	}
	prev := &poolv1.Histogram{Bounds: h.Bounds, Counts: []uint64{50, 0, 0, 0}, Count: 50}
	d := histDelta(h, prev)
	if got, _ := quantile(d, 0.5); math.Abs(got-0.006625) > 1e-9 {
		t.Errorf("quantile of the delta = %v", got)
	}
	if quantileString(h, 0.5) != "1ms" {
		t.Errorf("quantileString = %q", quantileString(h, 0.5))
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestReplicaList(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	ts.ok(t, "pools:\n- id: alpha\n  endpoints: ["+echo+"]\n", "apply", "-f", "-")
	// Calls go to the replicas that answer; one that is down is skipped.
	for _, server := range []string{ts.addr + "," + ts.addr, closedAddr(t) + "," + ts.addr} {
		r := runCLI(t, "", "--server", server, "list", "-o", "name")
		if r.code != 0 || r.stdout != "pools/alpha\n" {
			t.Errorf("--server %s: exit %d, stdout %q, stderr %q", server, r.code, r.stdout, r.stderr)
		}
	}
}

func TestTokenFile(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", "--server", closedAddr(t), "--token-file", empty, "list")
	if r.code != 1 || !strings.Contains(r.stderr, "want one line holding the token") {
		t.Errorf("empty --token-file: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "", "--server", closedAddr(t), "--token-file", filepath.Join(t.TempDir(), "none"), "list")
	if r.code != 1 || !strings.Contains(r.stderr, "--token-file") {
		t.Errorf("missing --token-file: exit %d, stderr %q", r.code, r.stderr)
	}
}
