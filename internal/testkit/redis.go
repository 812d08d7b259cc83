package testkit

import (
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Redis starts a throwaway redis-server on a free loopback port, with
// extra arguments appended to its command line (for example
// "--requirepass", "secret"), and returns its address. It skips the test
// when redis-server is not installed. The server is killed at cleanup.
func Redis(t testing.TB, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not found in PATH: install it (apt-get install redis-server) to run the tests against a real Redis")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = lis.Close()
	logPath := filepath.Join(t.TempDir(), "redis.log")
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--protected-mode", "no", "--logfile", logPath}
	cmd := exec.Command(bin, append(args, extra...)...)
	// Redis listens before it has loaded its configuration (and may still
	// exit over it): ready is a reply to PING, +PONG or -NOAUTH.
	runServer(t, "redis-server on "+addr, cmd, logPath, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		var b [1]byte
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return false
		}
		if _, err := c.Read(b[:]); err != nil {
			return false
		}
		return b[0] == '+' || b[0] == '-'
	})
	return addr
}
