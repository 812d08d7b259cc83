package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestMain runs the process as the bench's upstream when the bench under
// test started it as one (see childMain), and otherwise runs the tests and
// checks that none leaks a goroutine.
func TestMain(m *testing.M) {
	if code, ok := childMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}

// result is one poolbench run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs poolbench with args.
func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb testkit.SyncBuffer
	code := run(ctx, args, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// TestHelp checks that -h lists every flag of the bench and of the soak,
// and exits 0.
func TestHelp(t *testing.T) {
	r := runCLI(t, "-h")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("poolbench -h: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, flag := range []string{"--cases", "--clients LIST", "--duration", "--haproxy", "--max-requests", "--max-procs N", "-o",
		"--output", "--poold PATH", "--profile DIR", "--report DIR", "--rounds", "--size BYTES", "--soak DURATION",
		"--soak-clients", "--soak-holders", "--soak-sample", "--timeout", "--warmup"} {
		if !strings.Contains(r.stdout, "\n  "+flag) {
			t.Errorf("poolbench -h lacks %s:\n%s", flag, r.stdout)
		}
	}
}

// TestUpstreamCommand checks the hidden command the bench starts its
// upstream with: it needs the certificate directory.
func TestUpstreamCommand(t *testing.T) {
	if _, ok := childMain([]string{"--soak", "1s"}, strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{}); ok {
		t.Error("childMain took a bench command line")
	}
	var errb bytes.Buffer
	if code, ok := childMain([]string{upstreamCommand}, strings.NewReader(""), &bytes.Buffer{}, &errb); !ok || code != 2 {
		t.Errorf("upstream without a directory: exit %d, ran %v, stderr %q", code, ok, errb.String())
	}
	errb.Reset()
	if code, ok := childMain([]string{upstreamCommand, t.TempDir()}, strings.NewReader(""), &bytes.Buffer{}, &errb); !ok || code != 1 {
		t.Errorf("upstream without certificates: exit %d, ran %v, stderr %q", code, ok, errb.String())
	}
}
