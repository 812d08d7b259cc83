package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serverSide are module path prefixes of poolplane's server-side
// requirements, and the root module itself: none may be in the module graph
// of a service that imports only the SDK.
var serverSide = []string{
	"github.com/poolplane/poolplane@", // the root module: poold, poolctl and everything they require
	"go.etcd.io/",                     // etcd server and client, bbolt, raft
	"github.com/prometheus/",
	"gonum.org/",
	"github.com/redis/go-redis/",
	"github.com/grpc-ecosystem/go-grpc-middleware/",
	"github.com/jackc/puddle/",
}

// notLinked are module path prefixes no package of which may be compiled
// into an SDK user's binary. OpenTelemetry is named only here: grpc's own
// go.mod requires it, so its modules are in any grpc user's graph, but the
// SDK must not build any of it.
var notLinked = append([]string{"go.opentelemetry.io/"}, serverSide...)

// TestSDKConsumerModuleGraph checks that this module, a service that imports
// github.com/poolplane/poolplane/client and nothing else of poolplane, gets
// none of the server's requirements in its module graph (go mod graph) nor
// in its binary (go list -deps), and that it builds.
//
// The go command runs on copies of go.mod and go.sum (-modfile), with
// -mod=mod so that a requirement of the SDK newer than this module's go.sum
// is looked up through GOPROXY rather than failing the test; the module's
// own files are never written.
func TestSDKConsumerModuleGraph(t *testing.T) {
	gobin, err := exec.LookPath("go") // go test puts its own GOROOT/bin first in PATH
	if err != nil {
		t.Skip("no go command to inspect the module graph with")
	}
	tmp := t.TempDir()
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	modfile := filepath.Join(tmp, "go.mod")
	if strings.ContainsAny(modfile, " \t") {
		t.Skipf("GOFLAGS cannot carry -modfile=%s: the temporary directory's path has spaces", modfile)
	}
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-5*time.Second))
		defer cancel()
	}
	goCmd := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, gobin, args...)
		cmd.Env = append(os.Environ(),
			"GOWORK=off", // a developer's go.work must not stand in for the requirements
			"GOFLAGS="+os.Getenv("GOFLAGS")+" -mod=mod -modfile="+modfile,
		)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return string(out)
	}

	graph := goCmd("mod", "graph")
	modules := map[string]bool{}
	for _, line := range strings.Split(graph, "\n") {
		for _, m := range strings.Fields(line) {
			modules[m] = true
		}
	}
	if !hasPrefix(modules, "github.com/poolplane/poolplane/client@") {
		t.Fatalf("go mod graph does not list the SDK; is this module still a consumer of it?\n%s", graph)
	}
	for m := range modules {
		for _, p := range serverSide {
			if strings.HasPrefix(m, p) {
				t.Errorf("an SDK user's module graph holds %s, required by:\n%s", m, why(graph, m))
			}
		}
	}

	linked := map[string]bool{}
	for _, m := range strings.Fields(goCmd("list", "-deps", "-f", "{{with .Module}}{{.Path}}@{{end}}", ".")) {
		linked[m] = true
	}
	if !linked["github.com/poolplane/poolplane/client@"] || !linked["github.com/poolplane/poolplane/gen@"] {
		t.Fatalf("the consumer's packages do not come from the SDK's modules: %v", linked)
	}
	for m := range linked {
		for _, p := range notLinked {
			if strings.HasPrefix(m, p) {
				t.Errorf("an SDK user's binary compiles packages of %s", strings.TrimSuffix(m, "@"))
			}
		}
	}

	goCmd("build", "-o", filepath.Join(tmp, "sdkconsumer"), ".")
}

func hasPrefix(set map[string]bool, prefix string) bool {
	for m := range set {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// why returns the edges of graph that lead to module m.
func why(graph, m string) string {
	var b strings.Builder
	for _, line := range strings.Split(graph, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == m {
			b.WriteString("\t" + line + "\n")
		}
	}
	return b.String()
}
