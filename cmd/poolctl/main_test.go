package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestMain checks that no test leaks a goroutine.
func TestMain(m *testing.M) {
	// No test reads the config file of the user running the tests.
	_ = os.Setenv("XDG_CONFIG_HOME", "/nonexistent/poolctl-test-config")
	_ = os.Unsetenv("POOLCTL_CONFIG")
	_ = os.Unsetenv("POOLCTL_CONTEXT")
	goleak.VerifyTestMain(m)
}

// result is one poolctl run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs poolctl with args and stdin.
func runCLI(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb testkit.SyncBuffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func TestUsageErrors(t *testing.T) {
	t.Setenv("POOLPLANE_SERVER", "127.0.0.1:1") // never dialled: usage errors come first
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "missing command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown global flag", []string{"--bogus", "list"}, "unknown flag: --bogus"},
		{"unknown command flag", []string{"list", "--bogus"}, "list: unknown flag: --bogus"},
		{"did you mean", []string{"lsit"}, "Did you mean this?\n\tlist"},
		{"backup with the old -o FILE", []string{"backup", "-o", "snap.db"}, "write the snapshot with --file FILE"},
		{"missing pool", []string{"get"}, "get: missing argument; usage: poolctl get POOL"},
		{"extra argument", []string{"history", "a", "b"}, `history: unexpected argument "b"`},
		{"list takes none", []string{"list", "x"}, `list: unexpected argument "x"`},
		{"bad output", []string{"-o", "xml", "list"}, `-o "xml": want table, wide, name, json or yaml`},
		{"bad output after command", []string{"list", "--output=csv"}, `-o "csv"`},
		{"apply without file", []string{"apply"}, "apply: -f FILE is required"},
		{"apply stdin twice", []string{"apply", "-f", "-", "-f", "-"}, "-f - given twice"},
		{"rollback without revision", []string{"rollback", "a"}, "rollback: --revision N is required"},
		{"bad revision", []string{"rollback", "a", "--revision", "x"}, `invalid argument "x" for "--revision"`},
		{"bad duration", []string{"--timeout", "soon", "list"}, `invalid argument "soon" for "--timeout"`},
		{"zero timeout", []string{"--timeout", "0s", "list"}, "--timeout must be positive"},
		{"stats interval", []string{"stats", "--interval", "1ms"}, "at least 100ms"},
		{"backup without file", []string{"backup"}, "backup: --file FILE (-f FILE) is required"},
		{"token and token file", []string{"--token", "t", "--token-file", "/nonexistent", "list"}, "--token and --token-file are exclusive"},
		{"bad replica list", []string{"--server", "a:1,,b:2", "list"}, "empty address"},
		{"revoke not a lease", []string{"revoke", "abc"}, "want a lease name"},
		{"cert without key", []string{"--cert-file", "c.pem", "list"}, "--cert-file and --key-file go together"},
		{"help for unknown", []string{"help", "nope"}, `help: unknown command "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, "", tt.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.want)
			}
			if !strings.HasPrefix(r.stderr, "poolctl: ") && !strings.HasPrefix(r.stderr, "poolctl manages") {
				t.Errorf("stderr %q does not start with poolctl:", r.stderr)
			}
		})
	}
}

func TestUsageEnvErrors(t *testing.T) {
	t.Setenv("POOLPLANE_TLS", "maybe")
	if r := runCLI(t, "", "list"); r.code != 2 || !strings.Contains(r.stderr, "POOLPLANE_TLS") {
		t.Errorf("bad POOLPLANE_TLS: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Setenv("POOLPLANE_TLS", "")
	t.Setenv("POOLPLANE_TIMEOUT", "long")
	if r := runCLI(t, "", "list"); r.code != 2 || !strings.Contains(r.stderr, "POOLPLANE_TIMEOUT") {
		t.Errorf("bad POOLPLANE_TIMEOUT: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"help", "apply"}, {"apply", "-h"}, {"forward", "--help"}} {
		r := runCLI(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: poolctl") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	r := runCLI(t, "", "help")
	for _, c := range commands() {
		if !strings.Contains(r.stdout, "  "+c.name+" ") {
			t.Errorf("help does not list %s", c.name)
		}
	}
	r = runCLI(t, "", "help", "delete")
	if !strings.Contains(r.stdout, "--etag ETAG") || strings.Contains(r.stdout, "--server") {
		t.Errorf("help delete:\n%s", r.stdout)
	}
}

func TestGlobalFlagsAnywhere(t *testing.T) {
	t.Setenv("POOLPLANE_SERVER", "env:1")
	var g globals
	if err := g.envDefaults(); err != nil {
		t.Fatal(err)
	}
	if g.server != "env:1" || g.timeout != defaultTimeout || g.output != "table" {
		t.Fatalf("envDefaults = %+v", g)
	}
	// Flags before the command win over the environment; flags after it
	// win over flags before it; positional arguments may come anywhere.
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
	if err := e.g.envDefaults(); err != nil {
		t.Fatal(err)
	}
	root := e.newRoot(context.Background())
	var pos []string
	var etag string
	for _, c := range root.Commands() {
		if c.Name() == "delete" {
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				pos = args
				etag, _ = cmd.Flags().GetString("etag")
				return nil
			}
		}
	}
	root.SetArgs([]string{"--server=y:1", "delete", "a", "-o", "json", "--etag", "e1", "--server=x:2", "--", "-b"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pos) != "[a -b]" || e.g.output != "json" || etag != "e1" || e.g.server != "x:2" {
		t.Errorf("pos %v, globals %+v, etag %q", pos, e.g, etag)
	}
}

func TestIsLocalTarget(t *testing.T) {
	for target, want := range map[string]bool{
		"127.0.0.1:7700":          true,
		"localhost:7700":          true,
		"[::1]:7700":              true,
		"unix:///run/poold.sock":  true,
		"dns:///127.0.0.1:7700":   true,
		"poold.internal:7700":     false,
		"10.0.0.1:7700":           false,
		"dns:///poold.example:80": false,
	} {
		if got := isLocalTarget(target); got != want {
			t.Errorf("isLocalTarget(%q) = %v, want %v", target, got, want)
		}
	}
	g := globals{server: "/run/poold.sock"}
	if g.target() != "unix:///run/poold.sock" {
		t.Errorf("target() = %q", g.target())
	}
}

func TestFormatError(t *testing.T) {
	withDetails := func(st *status.Status, details ...any) error {
		t.Helper()
		var ms []any
		ms = append(ms, details...)
		for _, d := range ms {
			var err error
			switch d := d.(type) {
			case *errdetails.ErrorInfo:
				st, err = st.WithDetails(d)
			case *errdetails.BadRequest:
				st, err = st.WithDetails(d)
			case *errdetails.RetryInfo:
				st, err = st.WithDetails(d)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		return st.Err()
	}
	notFound := withDetails(status.New(codes.NotFound, `pool "x" not found`),
		&errdetails.ErrorInfo{Reason: "POOL_NOT_FOUND", Domain: "poolplane.dev", Metadata: map[string]string{"pool": "x"}})
	tests := []struct {
		name string
		err  error
		want string
	}{
		{
			name: "error info with metadata",
			err:  notFound,
			want: "poolctl: NOT_FOUND POOL_NOT_FOUND: pool \"x\" not found\n  pool: x\n",
		},
		{
			name: "bad request",
			err: withDetails(status.New(codes.InvalidArgument, "invalid pools"),
				&errdetails.ErrorInfo{Reason: "INVALID_ARGUMENT", Domain: "poolplane.dev"},
				&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
					{Field: "pools[0].limits.max_connections", Description: "must be 1..100000"},
					{Field: "pools[1].endpoints", Description: "required"},
				}}),
			want: "poolctl: INVALID_ARGUMENT INVALID_ARGUMENT: invalid pools\n" +
				"  pools[0].limits.max_connections: must be 1..100000\n  pools[1].endpoints: required\n",
		},
		{
			name: "retry info and sorted metadata",
			err: withDetails(status.New(codes.Unavailable, "circuit open"),
				&errdetails.ErrorInfo{Reason: "UPSTREAM_UNAVAILABLE", Metadata: map[string]string{"pool": "a", "last_dial_error": "refused"}},
				&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)}),
			want: "poolctl: UNAVAILABLE UPSTREAM_UNAVAILABLE: circuit open\n  last_dial_error: refused\n  pool: a\n  retry after: 1.5s\n",
		},
		{
			name: "no details",
			err:  status.Error(codes.Unavailable, "connection refused"),
			want: "poolctl: UNAVAILABLE: connection refused\n",
		},
		{
			name: "wrapped status keeps the context",
			err:  fmt.Errorf("pools/x: %w", notFound),
			want: "poolctl: pools/x: NOT_FOUND POOL_NOT_FOUND: pool \"x\" not found\n  pool: x\n",
		},
		{
			name: "plain error",
			err:  errors.New("apply: f.yaml: line 3: unknown field"),
			want: "poolctl: apply: f.yaml: line 3: unknown field\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := formatError(tt.err)
			if got != tt.want {
				t.Errorf("formatError:\n got %q\nwant %q", got, tt.want)
			}
			if strings.Contains(got, "rpc error") {
				t.Errorf("formatError leaks the raw status: %q", got)
			}
		})
	}
}

func TestRedrawer(t *testing.T) {
	var b bytes.Buffer
	var r redrawer
	if err := r.draw(&b, "a\nb\n"); err != nil {
		t.Fatal(err)
	}
	if err := r.draw(&b, "c\n"); err != nil {
		t.Fatal(err)
	}
	want := "\r\x1b[2Ka\n\r\x1b[2Kb\n\x1b[J" + "\x1b[2A\r\x1b[2Kc\n\x1b[J"
	if b.String() != want {
		t.Errorf("draw wrote %q, want %q", b.String(), want)
	}
}

func TestVersion(t *testing.T) {
	r := runCLI(t, "", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "poolctl ") {
		t.Errorf("version: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCLI(t, "", "version", "-o", "json")
	if r.code != 0 || !strings.Contains(r.stdout, `"go": "go`) {
		t.Errorf("version -o json: exit %d, stdout %q", r.code, r.stdout)
	}
}
