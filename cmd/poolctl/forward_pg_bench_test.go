package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// startPgBouncer runs /usr/sbin/pgbouncer (or pgbouncer from PATH) in
// session mode in front of the PostgreSQL at pg: 8 server connections per
// user and database, DISCARD ALL at release, clients authenticated with
// authType ("scram-sha-256" against app's password in its auth_file, or
// "trust": no password asked), TCP on a free loopback port, no Unix
// socket. PgBouncer refuses to run as root: as root it runs as the
// "postgres" user, in a directory it can read. It is stopped by PID at
// cleanup. It skips without pgbouncer. It returns PgBouncer's address and
// PID.
func startPgBouncer(t testing.TB, pg, authType string) (string, int) {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = "/usr/sbin/pgbouncer"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("pgbouncer not found in PATH nor /usr/sbin: install it (apt-get install pgbouncer) to compare with PgBouncer")
		}
	}
	dir, cred := testkit.PostgresUserDir(t, "pgbouncer-")
	pgHost, pgPort, _ := net.SplitHostPort(pg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = lis.Close()
	files := map[string]string{
		"users.txt": fmt.Sprintf("%q %q\n", testkit.PostgresUser, testkit.PostgresPassword),
		"pgbouncer.ini": fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s user=%s password=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = %s
auth_file = %s
pool_mode = session
default_pool_size = 8
max_client_conn = 200
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
`, testkit.PostgresDatabase, pgHost, pgPort, testkit.PostgresDatabase, testkit.PostgresUser, testkit.PostgresPassword,
			port, authType, filepath.Join(dir, "users.txt")),
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if cred != nil {
			_ = os.Chown(p, int(cred.Uid), int(cred.Gid))
		}
	}
	logf, err := os.Create(filepath.Join(dir, "pgbouncer.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		t.Fatalf("start pgbouncer: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // by PID: immediate shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	testkit.WaitWithin(t, 10*time.Second, "pgbouncer to listen on "+addr, func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer exited:\n%s", b)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
	return addr, cmd.Process.Pid
}

// BenchmarkPgbenchPooling: pgbench, select-only, 8 clients for 10 s, on
// loopback, against PostgreSQL directly (with the password), through
// PgBouncer in session mode (8 server connections; the client
// authenticated with SCRAM-SHA-256, as a deployment would, and with trust,
// presenting no password as poolplane's client does), through the pool's
// listener and through poolctl forward, on a POSTGRES pool of 8
// connections (no password from the client); each once with connections
// held for the run and once with -C (a new client connection per
// transaction). It reports the tps of each, the CPU per transaction of
// the process that relays (PgBouncer's; poold's, in this process), and
// the listener's and forward's ratios to direct and to PgBouncer in both
// modes (x-pgbouncer against SCRAM, x-pgbouncer-trust against trust):
// medians over 3 rounds, each running every target in turn (in an order
// rotated round by round, so that none always follows another), the ratios
// taken within each round. Run it with -benchtime 1x: one iteration is
// the whole procedure.
func BenchmarkPgbenchPooling(b *testing.B) {
	bin := lookTool(b, "pgbench", "postgresql-client")
	ts, pg := startPgServer(b, "bench", 8)
	bouncer, bouncerPid := startPgBouncer(b, pg, "scram-sha-256")
	trust, trustPid := startPgBouncer(b, pg, "trust")
	pgbench(b, bin, pg, testkit.PostgresPassword, "-i", "-s", "1", "-q")
	lis := ts.listen(b, "bench")
	fwd, _ := ts.startForward(b, "bench")
	targets := []struct {
		benchTarget
		password string
	}{
		{benchTarget{"direct", pg, -1}, testkit.PostgresPassword},
		{benchTarget{"pgbouncer", bouncer, bouncerPid}, testkit.PostgresPassword},
		{benchTarget{"pgbouncer-trust", trust, trustPid}, ""},
		{benchTarget{"listener", lis, 0}, ""},
		{benchTarget{"forward", fwd, 0}, ""},
	}
	const rounds = 3
	tps := map[string][]float64{}
	cpu := map[string][]float64{}
	ratio := map[string][]float64{}
	for range b.N {
		clear(tps)
		clear(cpu)
		clear(ratio)
		for round := range rounds {
			for _, mode := range []string{"", "-C"} {
				got := map[string]float64{}
				for i := range targets {
					tg := targets[(i+round)%len(targets)] // rotate the order round by round
					args := []string{"-S", "-n", "-T", "10", "-c", "8"}
					if mode != "" {
						args = append(args, mode)
					}
					start := testkit.ProcCPU(b, 0)
					if tg.pid > 0 {
						start = testkit.ProcCPU(b, tg.pid)
					}
					v := pgbench(b, bin, tg.addr, tg.password, args...)
					used := time.Duration(0)
					switch {
					case tg.pid > 0:
						used = testkit.ProcCPU(b, tg.pid) - start
					case tg.pid == 0:
						used = testkit.ProcCPU(b, 0) - start
					}
					name := tg.name + mode
					perTx := float64(used.Nanoseconds()) / 1e3 / (v * 10)
					b.Logf("round %d: %-18s %8.0f tps %6.1f µs CPU/tx", round, name, v, perTx)
					got[tg.name] = v
					tps[name] = append(tps[name], v)
					cpu[name] = append(cpu[name], perTx)
				}
				for _, p := range []string{"listener", "forward"} {
					for _, ref := range []string{"direct", "pgbouncer", "pgbouncer-trust"} {
						k := p + "-x-" + ref + mode
						ratio[k] = append(ratio[k], got[p]/got[ref])
					}
				}
			}
		}
	}
	for _, mode := range []string{"", "-C"} {
		for _, tg := range targets {
			b.ReportMetric(median(tps[tg.name+mode]), tg.name+mode+"-tps")
			if tg.pid >= 0 {
				b.ReportMetric(median(cpu[tg.name+mode]), tg.name+mode+"-cpu-µs/tx")
			}
		}
		for _, p := range []string{"listener", "forward"} {
			for _, ref := range []string{"direct", "pgbouncer", "pgbouncer-trust"} {
				k := p + "-x-" + ref + mode
				b.ReportMetric(median(ratio[k]), k)
			}
		}
	}
	var groups []barGroup
	for _, mode := range []string{"", "-C"} {
		g := barGroup{label: strings.TrimSpace("pgbench -S -c 8 " + mode)}
		for _, tg := range targets {
			g.values = append(g.values, median(tps[tg.name+mode]))
		}
		groups = append(groups, g)
	}
	writeBarChart(b, "benchmarks-listener-postgres.svg", "pgbench select-only, 8 clients, 10 s, median of 3 rounds", "transactions/s",
		[]string{"direct", "PgBouncer (SCRAM)", "PgBouncer (trust)", "pool listener", "poolctl forward"}, groups)
}
