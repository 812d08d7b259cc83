package testkit

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// runServer starts cmd, a server a test needs, dying with the test and
// killed at cleanup, and waits until ready reports that it serves. A
// server that exits first fails the test with what it wrote to its log
// (logPath) and to its output.
func runServer(t testing.TB, name string, cmd *exec.Cmd, logPath string, ready func() bool) {
	t.Helper()
	cmd.SysProcAttr = dieWithTest(cmd.SysProcAttr)
	var out SyncBuffer
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	WaitFor(t, name+" to serve", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited early: %s\n%s", name, out.String(), b)
		default:
		}
		return ready()
	})
}

// accepts reports whether addr accepts a TCP connection.
func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
