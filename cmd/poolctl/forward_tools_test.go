package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
)

// lookTool returns the path of an external client the test drives, or
// skips the test when it is not installed.
func lookTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found in PATH: install it (apt-get install %s) to run this test", name, pkg)
	}
	return p
}

// redisCmd builds a redis-cli command against addr, bounded by ctx.
func redisCmd(ctx context.Context, bin, addr string, args ...string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	return exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port}, args...)...)
}

// redisOut runs redis-cli against addr with stdin as its commands (one a
// line) and returns its output lines.
func redisOut(t testing.TB, bin, addr, stdin string, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := redisCmd(ctx, bin, addr, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s <<%q: %v\n%s", strings.Join(args, " "), stdin, err, out)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// matchLines checks got against want, line by line, each want a regexp
// matched against the whole line.
func matchLines(got, want []string) error {
	if len(got) != len(want) {
		return fmt.Errorf("got %d lines %q, want %d matching %q", len(got), got, len(want), want)
	}
	for i := range want {
		if !regexp.MustCompile(`^(?:` + want[i] + `)$`).MatchString(got[i]) {
			return fmt.Errorf("line %d: got %q, want %q (all: %q)", i, got[i], want[i], got)
		}
	}
	return nil
}

// waitNoLeases waits until pool has no lease out.
func (ts *testServer) waitNoLeases(t testing.TB, pool string) {
	t.Helper()
	testkit.WaitFor(t, "the lease on "+pool+" to be released", func() bool {
		l := unmarshal(t, ts.ok(t, "", "leases", pool, "-o", "json"), &poolv1.ListLeasesResponse{})
		return len(l.GetLeases()) == 0
	})
}

// redisAdmin is a direct connection to Redis, outside any pool, for
// CLIENT LIST.
type redisAdmin struct {
	nc net.Conn
	br *bufio.Reader
}

func dialRedisAdmin(t testing.TB, redis string) *redisAdmin {
	t.Helper()
	nc, err := net.Dial("tcp", redis)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &redisAdmin{nc: nc, br: bufio.NewReader(nc)}
}

// clientLine returns the CLIENT LIST line of the connection with this id,
// or "" when there is none.
func (r *redisAdmin) clientLine(t testing.TB, id string) string {
	t.Helper()
	_ = r.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.nc, "CLIENT LIST ID "+id+"\r\n"); err != nil {
		t.Fatal(err)
	}
	head, err := r.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		t.Fatalf("CLIENT LIST: %q, %v", head, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(head[1:]))
	if err != nil {
		t.Fatalf("CLIENT LIST: %q: %v", head, err)
	}
	body := make([]byte, n+2)
	if _, err := io.ReadFull(r.br, body); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(body))
}

// TestRedisCLI: the real redis-cli, through each front (forward and the
// pool's listener), on a REDIS pool of one connection. Client A, one redis-cli process, leaves state on the
// connection (or is killed while blocked); client B, the next redis-cli,
// finds it clean and gets its own replies. CLIENT ID shows whether B got
// A's connection (reset and reused) or a new one (A's was closed).
func TestRedisCLI(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testRedisCLI(t, f) })
	}
}

func testRedisCLI(t *testing.T, f front) {
	cli := lookTool(t, "redis-cli", "redis-tools")
	const trials = 30
	scenarios := []struct {
		name string
		// a is client A's stdin after CLIENT ID; aOut its expected output
		// after the id, all of it, or what it prints before it blocks.
		a    string
		aOut []string
		// blocked, when set, means A does not exit: it is killed once its
		// connection's CLIENT LIST line matches this.
		blocked string
		// mayExit: a blocked A may also exit by itself.
		mayExit bool
		b       string // client B's stdin after CLIENT ID
		bOut    []string
		reused  bool // B gets A's connection back
	}{
		{name: "select", a: "SELECT 5\n", aOut: []string{"OK"},
			b: "CLIENT INFO\n", bOut: []string{`id=\d+ .* db=0 .*`}, reused: true},
		{name: "setname", a: "CLIENT SETNAME alice\nCLIENT GETNAME\n", aOut: []string{"OK", "alice"},
			b: "CLIENT GETNAME\n", bOut: []string{""}, reused: true},
		{name: "multi", a: "MULTI\nSET k a\n", aOut: []string{"OK", "QUEUED"},
			b: "SET k b\nGET k\n", bOut: []string{"OK", "b"}, reused: true},
		{name: "subscribe", a: "SUBSCRIBE ch\n", aOut: []string{"subscribe", "ch", "1"}, blocked: ` sub=1 `,
			b: "PUBLISH ch x\n", bOut: []string{"0"}, reused: true},
		// redis-cli 7.0 waits for a reply to CLIENT REPLY OFF: killed too
		// (a redis-cli that knows there is none exits at the end of stdin).
		{name: "reply-off", a: "CLIENT REPLY OFF\n", blocked: ` cmd=client\|reply `, mayExit: true,
			b: "PING\nECHO hi\n", bOut: []string{"PONG", "hi"}, reused: true},
		// The pool waits reset_timeout for BLPOP's reply, then closes.
		{name: "blpop", a: "BLPOP q 0\n", blocked: ` flags=b .* cmd=blpop `,
			b: "RPUSH q job\nLPOP q\n", bOut: []string{"1", "job"}},
	}
	ts := startServer(t)
	redis := testkit.Redis(t)
	var yaml strings.Builder
	yaml.WriteString("pools:\n")
	for _, sc := range scenarios {
		fmt.Fprintf(&yaml, "- id: cli-%s\n  endpoints: [%s]\n  protocol: redis\n  limits: {max_connections: 1, acquire_timeout: 10s}\n", sc.name, redis)
		if !sc.reused {
			yaml.WriteString("  reset_timeout: 0.1s\n")
		}
	}
	ts.ok(t, yaml.String(), "apply", "-f", "-")

	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel() // each on its own pool; a redis-cli process takes tens of ms to start
			pool := "cli-" + sc.name
			addr, stop := f.open(t, ts, pool)
			admin := dialRedisAdmin(t, redis)
			for trial := range trials {
				idA := runClientA(t, cli, addr, admin, "CLIENT ID\n"+sc.a, sc.aOut, sc.blocked, sc.mayExit)
				ts.waitNoLeases(t, pool)
				if sc.blocked != "" && !sc.reused {
					testkit.WaitFor(t, "the pool to close A's connection", func() bool {
						return admin.clientLine(t, idA) == ""
					})
				}
				got := redisOut(t, cli, addr, "CLIENT ID\n"+sc.b)
				if err := matchLines(got, append([]string{`\d+`}, sc.bOut...)); err != nil {
					t.Fatalf("trial %d: client B: %v", trial, err)
				}
				if idB := got[0]; (idB == idA) != sc.reused {
					t.Fatalf("trial %d: client A on connection %s, B on %s; want reused=%v", trial, idA, idB, sc.reused)
				}
			}
			ts.waitNoLeases(t, pool)
			testkit.WaitFor(t, "the connection to be idle", func() bool {
				st := unmarshal(t, ts.ok(t, "", "stats", pool, "-o", "json"), &poolv1.PoolStats{})
				return st.GetInUse() == 0 && st.GetIdle() == 1
			})
			st := unmarshal(t, ts.ok(t, "", "stats", pool, "-o", "json"), &poolv1.PoolStats{})
			if sc.reused {
				// One connection for every lease, A's and B's in
				// every trial.
				if st.GetCreated() != 1 || st.GetReused() != 2*trials-1 || len(st.GetCloses()) != 0 {
					t.Fatalf("created %d reused %d closes %v; want 1, %d, none", st.GetCreated(), st.GetReused(), st.GetCloses(), 2*trials-1)
				}
			} else {
				// Every A's connection closed for its outstanding
				// reply; every B on a new one that the next A reuses.
				if st.GetCreated() != trials+1 || st.GetReused() != trials-1 || st.GetCloses()["outstanding_reply"] != trials {
					t.Fatalf("created %d reused %d closes %v; want %d, %d, outstanding_reply %d",
						st.GetCreated(), st.GetReused(), st.GetCloses(), trials+1, trials-1, trials)
				}
			}
			stop()
		})
	}
}

// runClientA runs client A: one redis-cli process with stdin as its
// commands, the first CLIENT ID. It checks its output and returns the id.
// When blocked is set, A does not exit by itself: once it printed its
// output and Redis shows its connection matching blocked, it is killed
// (SIGKILL, by PID); with mayExit, it may also exit by itself first.
func runClientA(t *testing.T, cli, addr string, admin *redisAdmin, stdin string, want []string, blocked string, mayExit bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := redisCmd(ctx, cli, addr)
	cmd.Stdin = strings.NewReader(stdin)
	var errb testkit.SyncBuffer
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	var got []string
	if blocked == "" {
		b, err := io.ReadAll(stdout)
		waited = true
		if werr := cmd.Wait(); err != nil || werr != nil {
			t.Fatalf("client A: %v, %v\n%s%s", err, werr, b, errb.String())
		}
		got = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	} else {
		br := bufio.NewReader(stdout)
		for len(got) < 1+len(want) {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("client A: after %q: %v\n%s", got, err, errb.String())
			}
			got = append(got, strings.TrimSuffix(line, "\n"))
		}
	}
	if err := matchLines(got, append([]string{`\d+`}, want...)); err != nil {
		t.Fatalf("client A: %v", err)
	}
	id := got[0]
	if blocked != "" {
		re := regexp.MustCompile(blocked)
		// The rest of A's output is not read: Wait may close the pipe.
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		waited = true
		testkit.WaitFor(t, "client A's connection to match "+blocked, func() bool {
			select {
			case <-exited:
				if mayExit {
					return true
				}
				t.Fatalf("client A exited before it was killed: %s", errb.String())
			default:
			}
			return re.MatchString(admin.clientLine(t, id))
		})
		_ = cmd.Process.Kill() // by PID; an error if it exited meanwhile
		<-exited
	}
	return id
}

// redisBenchmark runs redis-benchmark against addr and returns its
// output; it fails the test on an error reply or a non-zero exit.
func redisBenchmark(t testing.TB, bin, addr string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(strings.ToLower(string(out)), "err") {
		t.Fatalf("redis-benchmark %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRedisBenchmark: the real redis-benchmark, 50 clients at once,
// through each front on a REDIS pool of up to 64 connections. Every
// benchmark client is a lease. The first run warms the pool up with SET
// then GET: redis-benchmark closes its 50 SET clients and opens 50 GET
// clients at once, and a connection still being reset when a new client
// leases is not idle, so the pool may dial a few more than 50 (up to its
// limit). The second run, GET alone, starts with every connection idle:
// it is served by the first run's connections, but for the one
// redis-benchmark's CONFIG GET connection may leave in its reset as the
// 50 clients arrive. Connections are counted by dials: created counts only
// the acquires a new connection served.
func TestRedisBenchmark(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testRedisBenchmark(t, f) })
	}
}

func testRedisBenchmark(t *testing.T, f front) {
	bench := lookTool(t, "redis-benchmark", "redis-tools")
	ts := startServer(t)
	redis := testkit.Redis(t)
	ts.ok(t, "pools:\n- id: bench\n  endpoints: ["+redis+"]\n  protocol: redis\n  limits: {max_connections: 64, acquire_timeout: 10s}\n", "apply", "-f", "-")
	addr, stop := f.open(t, ts, "bench")
	const clients, maxConns = 50, 64
	var dials [2]uint64 // upstream connections opened (created counts only the acquires a new one served)
	var st *poolv1.PoolStats
	for run, tests := range [][]string{{"SET", "GET"}, {"GET"}} {
		out := redisBenchmark(t, bench, addr, "-c", strconv.Itoa(clients), "-n", "4000", "-t", strings.ToLower(strings.Join(tests, ",")), "-q")
		for _, test := range tests {
			if !regexp.MustCompile(`(?m)^` + test + `: [0-9.]+ requests per second`).MatchString(strings.ReplaceAll(out, "\r", "\n")) {
				t.Fatalf("run %d: no %s result:\n%s", run, test, out)
			}
		}
		ts.waitNoLeases(t, "bench")
		testkit.WaitFor(t, "every connection to be idle", func() bool {
			st = unmarshal(t, ts.ok(t, "", "stats", "bench", "-o", "json"), &poolv1.PoolStats{})
			return st.GetInUse() == 0
		})
		t.Logf("run %d: dials %d total %d created %d reused %d acquires %d closes %v",
			run, st.GetDials(), st.GetTotal(), st.GetCreated(), st.GetReused(), st.GetAcquires(), st.GetCloses())
		dials[run] = st.GetDials()
		if dials[run] < clients || dials[run] > maxConns || st.GetDialFailures() != 0 || len(st.GetCloses()) != 0 || uint64(st.GetIdle()) != dials[run] {
			t.Fatalf("run %d: dials %d (failed %d) idle %d closes %v; want %d..%d dials, all idle, none closed",
				run, dials[run], st.GetDialFailures(), st.GetIdle(), st.GetCloses(), clients, maxConns)
		}
	}
	if more := dials[1] - dials[0]; more > 1 {
		t.Fatalf("the second run dialled %d more connections; want it served by the first run's %d (and at most one more)", more, dials[0])
	}
	if st.GetReused() < clients {
		t.Fatalf("after two runs: %d leases reused a connection, want at least %d", st.GetReused(), clients)
	}
	stop()
}

// TestCurlKeepAlive: the real curl, fetching one URL 10 times over
// one keep-alive connection, through each front on an HTTP1 pool of one
// connection to nginx, several times in a row. Every body is right, each
// curl opens one local connection (one lease), and nginx serves every
// request of every run on the same connection: the pool reused it.
func TestCurlKeepAlive(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testCurlKeepAlive(t, f) })
	}
}

func testCurlKeepAlive(t *testing.T, f front) {
	curl := lookTool(t, "curl", "curl")
	root := t.TempDir()
	const body = "hello from nginx"
	if err := os.WriteFile(filepath.Join(root, "small.txt"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	web := testkit.Nginx(t, root, "add_header X-Conn $connection always;")
	ts := startServer(t)
	ts.ok(t, "pools:\n- id: web\n  endpoints: ["+web+"]\n  protocol: http1\n  limits: {max_connections: 1, acquire_timeout: 10s}\n", "apply", "-f", "-")
	addr, stop := f.open(t, ts, "web")
	const runs, fetches = 5, 10
	url := "http://" + addr + "/small.txt"
	args := []string{"-s", "--fail", "--max-time", "20", "-w", " %{http_code} %{num_connects} %header{x-conn}\n"}

	for range fetches {
		args = append(args, url)
	}
	conn := ""
	for run := range runs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, curl, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("run %d: curl: %v\n%s", run, err, out)
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if len(lines) != fetches {
			t.Fatalf("run %d: %d responses, want %d:\n%s", run, len(lines), fetches, out)
		}
		for i, l := range lines {
			// One local connection per curl: only the first fetch connects.
			connects := "0"
			if i == 0 {
				connects = "1"
			}
			m := regexp.MustCompile(`^` + regexp.QuoteMeta(body) + ` 200 ` + connects + ` (\d+)$`).FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("run %d fetch %d: %q, want %q, 200, %s new connections, X-Conn", run, i, l, body, connects)
			}
			if conn == "" {
				conn = m[1]
			}
			if m[1] != conn {
				t.Fatalf("run %d fetch %d: nginx connection %s, want %s (the pool's one connection)", run, i, m[1], conn)
			}
		}
		ts.waitNoLeases(t, "web")
	}

	var st *poolv1.PoolStats
	testkit.WaitFor(t, "the connection to be idle", func() bool {
		st = unmarshal(t, ts.ok(t, "", "stats", "web", "-o", "json"), &poolv1.PoolStats{})
		return st.GetIdle() == 1
	})
	if st.GetDials() != 1 || st.GetCreated() != 1 || st.GetReused() != runs-1 || st.GetAcquires() != runs || len(st.GetCloses()) != 0 {
		t.Fatalf("after %d curl runs: dials %d created %d reused %d acquires %d closes %v; want 1, 1, %d, %d, none",
			runs, st.GetDials(), st.GetCreated(), st.GetReused(), st.GetAcquires(), st.GetCloses(), runs-1, runs)
	}
	stop()
}
