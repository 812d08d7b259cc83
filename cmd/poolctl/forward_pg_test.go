package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// startPgServer starts poold in-process with a secret key (a POSTGRES pool
// stores its password sealed) and PostgreSQL, and applies a POSTGRES pool
// id of maxConns connections that holds app's password.
func startPgServer(t testing.TB, id string, maxConns int) (ts *testServer, pg string) {
	t.Helper()
	ts = startServerWith(t, serverOptions{
		manager: func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{7}, 32) },
	})
	pg = testkit.Postgres(t)
	ts.ok(t, fmt.Sprintf(`pools:
- id: %s
  endpoints: [%s]
  protocol: postgres
  limits: {max_connections: %d, acquire_timeout: 10s}
  postgres:
    database: %s
    user: %s
    password: %s
`, id, pg, maxConns, testkit.PostgresDatabase, testkit.PostgresUser, testkit.PostgresPassword), "apply", "-f", "-")
	return ts, pg
}

// pgEnv is the environment for psql and pgbench: none of the caller's PG*
// variables, no psqlrc, no password file; with password set, PGPASSWORD.
func pgEnv(password string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "PSQLRC=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PSQLRC=/dev/null", "PGPASSFILE=/nonexistent/pgpass")
	if password != "" {
		env = append(env, "PGPASSWORD="+password)
	}
	return env
}

// conninfo is a libpq connection string for app on addr.
func conninfo(addr, dbname string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", host, port, testkit.PostgresUser, dbname)
}

type toolRun struct {
	stdout, stderr string
	code           int
}

// runTool runs bin with args and env, bounded by timeout, and returns its
// output and exit code (a failure to start fails the test).
func runTool(t testing.TB, timeout time.Duration, env []string, bin string, args ...string) toolRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := toolRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("%s %s: %v\n%s%s", bin, strings.Join(args, " "), err, r.stdout, r.stderr)
	}
	return r
}

// psqlOK runs psql with no password against addr's appdb and returns its
// output lines; it fails the test unless psql exits 0 with nothing on
// stderr.
func psqlOK(t testing.TB, bin, addr string, args ...string) []string {
	t.Helper()
	r := runTool(t, 20*time.Second, pgEnv(""), bin, append([]string{conninfo(addr, testkit.PostgresDatabase)}, args...)...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("psql %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
}

// TestPsql: the real psql, with no password, through each front on a
// POSTGRES pool of one connection, many times in a row. Every psql gets
// the same backend (its Terminate ends the lease, not the backend), and
// what one psql leaves in its session (a search_path, a temp table) is
// gone for the next. A psql asking for another database is refused with
// the pool's FATAL 3D000 and exits 2, and the backend is still reused.
func TestPsql(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testPsql(t, f) })
	}
}

func testPsql(t *testing.T, f front) {
	psql := lookTool(t, "psql", "postgresql-client")
	ts, _ := startPgServer(t, "pg", 1)
	addr, stop := f.open(t, ts, "pg")

	const trials = 15 // two psql runs each
	pid := ""
	checkPid := func(run int, got string) {
		t.Helper()
		if _, err := strconv.Atoi(got); err != nil {
			t.Fatalf("run %d: pg_backend_pid %q", run, got)
		}
		if pid == "" {
			pid = got
		}
		if got != pid {
			t.Fatalf("run %d: backend %s, want %s (the pool's one connection, reused)", run, got, pid)
		}
	}
	runs := 0
	for trial := range trials {
		// A: leaves a search_path and a temp table in its session.
		got := psqlOK(t, psql, addr, "-Atc", "SELECT pg_backend_pid()")
		checkPid(runs, got[0])
		runs++
		psqlOK(t, psql, addr, "-Atc", "SET search_path TO nowhere; CREATE TEMP TABLE t(x int)")
		runs++
		// B: finds neither.
		got = psqlOK(t, psql, addr, "-At",
			"-c", "SELECT pg_backend_pid()",
			"-c", "SHOW search_path",
			"-c", "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
			"-c", "SELECT to_regclass('pg_temp.t') IS NULL")
		runs++
		if len(got) != 4 {
			t.Fatalf("trial %d: psql printed %q", trial, got)
		}
		checkPid(runs, got[0])
		if got[1] != `"$user", public` || got[2] != "0" || got[3] != "t" {
			t.Fatalf("trial %d: after a psql that set search_path and created a temp table: search_path %q, %s temp relations, to_regclass('pg_temp.t') IS NULL %q; want the default, 0, t",
				trial, got[1], got[2], got[3])
		}
	}

	// Another database: the pool's FATAL, exit 2, and the backend stays.
	r := runTool(t, 20*time.Second, pgEnv(""), psql, conninfo(addr, "otherdb"), "-Atc", "SELECT 1")
	want := `FATAL:  this pool serves database "` + testkit.PostgresDatabase + `", not "otherdb"`
	if r.code != 2 || !strings.Contains(r.stderr, want) || r.stdout != "" {
		t.Fatalf("psql dbname=otherdb: exit %d, stdout %q, stderr %q; want exit 2 and %q", r.code, r.stdout, r.stderr, want)
	}
	checkPid(runs, psqlOK(t, psql, addr, "-Atc", "SELECT pg_backend_pid()")[0])
	runs++

	ts.waitNoLeases(t, "pg")
	var st *poolv1.PoolStats
	testkit.WaitFor(t, "the connection to be idle", func() bool {
		st = unmarshal(t, ts.ok(t, "", "stats", "pg", "-o", "json"), &poolv1.PoolStats{})
		return st.GetIdle() == 1
	})
	t.Logf("%d psql runs and a refused one: dials %d created %d reused %d acquires %d closes %v",
		runs, st.GetDials(), st.GetCreated(), st.GetReused(), st.GetAcquires(), st.GetCloses())
	if st.GetDials() != 1 || st.GetCreated() != 1 || len(st.GetCloses()) != 0 {
		t.Fatalf("dials %d created %d closes %v; want one connection, never closed", st.GetDials(), st.GetCreated(), st.GetCloses())
	}
	stop()
}

var (
	pgbenchTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+) `)
	pgbenchFailed = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	pgbenchTxns   = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
)

// pgbench runs pgbench (with password, when set) against addr's appdb
// and returns its tps. It fails the test on a non-zero exit, an error on
// stderr, or a failed transaction.
func pgbench(t testing.TB, bin, addr, password string, args ...string) float64 {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	all := append([]string{"-h", host, "-p", port, "-U", testkit.PostgresUser}, args...)
	all = append(all, testkit.PostgresDatabase)
	r := runTool(t, 2*time.Minute, pgEnv(password), bin, all...)
	out := r.stdout + r.stderr
	if r.code != 0 || strings.Contains(r.stderr, "error") || strings.Contains(r.stderr, "FATAL") {
		t.Fatalf("pgbench %s: exit %d\n%s", strings.Join(all, " "), r.code, out)
	}
	if slices.Contains(args, "-i") {
		return 0
	}
	m, f, n := pgbenchTPS.FindStringSubmatch(out), pgbenchFailed.FindStringSubmatch(out), pgbenchTxns.FindStringSubmatch(out)
	if m == nil || f == nil || n == nil || f[1] != "0" || n[1] == "0" {
		t.Fatalf("pgbench %s: want tps, transactions processed and 0 failed:\n%s", strings.Join(all, " "), out)
	}
	tps, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("pgbench tps %q: %v", m[1], err)
	}
	return tps
}

// TestPgbench: the real pgbench, with no password, through each front
// on a POSTGRES pool of 4 connections: 4 clients reconnecting for every
// transaction (-C), then 4 clients each holding its connection, 3 s each,
// select-only. No transaction fails, the pool never opens more than its 4
// connections and reuses them.
func TestPgbench(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testPgbench(t, f) })
	}
}

func testPgbench(t *testing.T, f front) {
	bin := lookTool(t, "pgbench", "postgresql-client")
	const maxConns = 4
	ts, pg := startPgServer(t, "bench", maxConns)
	pgbench(t, bin, pg, testkit.PostgresPassword, "-i", "-s", "1", "-q")
	addr, stop := f.open(t, ts, "bench")
	var reused uint64
	for _, mode := range [][]string{{"-C"}, nil} {
		tps := pgbench(t, bin, addr, "", append(mode, "-c", "4", "-T", "3", "-S", "-n")...)
		ts.waitNoLeases(t, "bench")
		st := unmarshal(t, ts.ok(t, "", "stats", "bench", "-o", "json"), &poolv1.PoolStats{})
		t.Logf("pgbench %v -c 4 -T 3 -S -n: %.0f tps; dials %d created %d reused %d acquires %d closes %v",
			mode, tps, st.GetDials(), st.GetCreated(), st.GetReused(), st.GetAcquires(), st.GetCloses())
		if st.GetCreated() > maxConns || st.GetDials() > maxConns || st.GetReused() <= reused || len(st.GetCloses()) != 0 {
			t.Fatalf("pgbench %v: dials %d created %d reused %d (%d before) closes %v; want at most %d connections, reused, none closed",
				mode, st.GetDials(), st.GetCreated(), st.GetReused(), reused, st.GetCloses(), maxConns)
		}
		reused = st.GetReused()
	}
	stop()
}

// TestPostgresDocExample: the YAML pool of docs/postgres.md applies as
// written, and reads back with its password write-only.
func TestPostgresDocExample(t *testing.T) {
	doc := mustRead(t, filepath.Join("..", "..", "docs", "postgres.md"))
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("docs/postgres.md has no yaml block")
	}
	ts := startServerWith(t, serverOptions{
		manager: func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{7}, 32) },
	})
	ts.ok(t, m[1], "apply", "-f", "-")
	p := unmarshal(t, ts.ok(t, "", "get", "appdb", "-o", "json"), &poolv1.Pool{})
	pg := p.GetPostgres()
	if p.GetProtocol() != poolv1.Protocol_PROTOCOL_POSTGRES || pg.GetDatabase() != "appdb" || pg.GetUser() != "app" ||
		pg.GetPassword() != "" || !pg.GetPasswordSet() || pg.GetParams()["statement_timeout"] != "5000" ||
		pg.GetResetQuery() != "DISCARD ALL" || pg.GetSslMode() != poolv1.PostgresSSLMode_POSTGRES_SSL_MODE_DISABLE {
		t.Fatalf("the pool of docs/postgres.md reads back as %v", p)
	}
	// Without a secret key, poold refuses the password.
	plain := startServer(t)
	if r := plain.cli(t, m[1], "apply", "-f", "-"); r.code == 0 {
		t.Fatalf("apply without a secret key: exit 0\n%s", r.stdout)
	}
}
