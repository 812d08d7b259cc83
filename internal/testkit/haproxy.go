package testkit

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// HAProxy starts haproxy in TCP mode on a free loopback port in front of
// backend, in the foreground (so that the PID returned is the process
// that relays, for its CPU time), and returns its address and PID. It
// skips the test when haproxy is not installed. The process is killed at
// cleanup.
func HAProxy(t testing.TB, backend string) (addr string, pid int) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		bin = "/usr/sbin/haproxy"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("haproxy not found in PATH nor /usr/sbin: install it (apt-get install haproxy) to compare with HAProxy")
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = lis.Addr().String()
	_ = lis.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m

frontend front
    bind %s
    default_backend back

backend back
    server up %s
`, addr, backend)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", cfgPath)
	runServer(t, "haproxy on "+addr, cmd, cfgPath, func() bool { return accepts(addr) })
	return addr, cmd.Process.Pid
}
