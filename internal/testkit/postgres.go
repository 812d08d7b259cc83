package testkit

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The role and database Postgres creates for the tests, and the role's
// password (SCRAM-SHA-256 over TCP).
const (
	PostgresUser     = "app"
	PostgresPassword = "app-secret"
	PostgresDatabase = "appdb"
)

// PostgresUserDir makes a temporary directory (removed at cleanup) for a
// server that refuses to run as root, PostgreSQL's or PgBouncer's. As root
// it belongs to the "postgres" user, and cred is that user, to run the
// server as (the test skips when there is none); otherwise cred is nil.
// Not t.TempDir(): its parent is private to root.
func PostgresUserDir(t testing.TB, prefix string) (dir string, cred *syscall.Credential) {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() != 0 {
		return dir, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("running as root and there is no postgres user to run the server as: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// Postgres starts a throwaway PostgreSQL server (initdb, then postgres) on
// a free loopback port and returns its address. TCP connections
// authenticate with SCRAM-SHA-256; the role PostgresUser (password
// PostgresPassword) owns the database PostgresDatabase, and the superuser
// "postgres" has the same password. It skips the test when no PostgreSQL
// server binaries are installed under /usr/lib/postgresql/*/bin. PostgreSQL
// refuses to run as root: as root, the server runs as the "postgres" user
// in a temporary directory it owns. The server is stopped at cleanup.
func Postgres(t testing.TB) string {
	t.Helper()
	return startPostgres(t, nil, nil)
}

// PostgresTLS is Postgres with TLS on (ssl=on), serving the certificate
// and key given in PEM; clients may still connect without TLS.
func PostgresTLS(t testing.TB, certPEM, keyPEM []byte) string {
	t.Helper()
	return startPostgres(t, certPEM, keyPEM)
}

func startPostgres(t testing.TB, certPEM, keyPEM []byte) string {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		t.Skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install them (apt-get install postgresql) to run the tests against a real PostgreSQL")
	}
	sort.Strings(bins)
	binDir := filepath.Dir(bins[len(bins)-1])

	dir, cred := PostgresUserDir(t, "testkit-postgres-")
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, name), args...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(PostgresPassword+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		_ = os.Chown(pwfile, int(cred.Uid), int(cred.Gid))
	}
	data := filepath.Join(dir, "data")
	run("initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--no-sync", "--locale=C",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile="+pwfile)

	var tlsArgs []string
	if certPEM != nil {
		for name, b := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
			f := filepath.Join(data, name)
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if cred != nil {
				_ = os.Chown(f, int(cred.Uid), int(cred.Gid))
			}
		}
		tlsArgs = []string{"-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = lis.Close()
	logPath := filepath.Join(dir, "postgres.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), "-D", data, "-p", port, "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=60")
	cmd.Args = append(cmd.Args, tlsArgs...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = dieWithTest(&syscall.SysProcAttr{Credential: cred})
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		t.Fatalf("start postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		// Immediate shutdown: the postmaster stops its backends and exits.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	psql := func(sql string) error {
		c := exec.Command(filepath.Join(binDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
			"-h", dir, "-p", port, "-U", "postgres", "-d", "postgres", "-c", sql)
		c.Dir = dir
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	WaitFor(t, "postgres to accept connections on "+addr, func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("postgres exited early:\n%s", b)
		default:
		}
		if psql("SELECT 1") != nil {
			time.Sleep(50 * time.Millisecond) // each check runs psql
			return false
		}
		return true
	})
	for _, sql := range []string{
		"CREATE ROLE " + PostgresUser + " LOGIN PASSWORD '" + PostgresPassword + "'",
		"CREATE DATABASE " + PostgresDatabase + " OWNER " + PostgresUser,
	} {
		if err := psql(sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return addr
}
