package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
)

const midReplyEnv = "RELIABILITY_MID_REPLY" // "addr pool"

// TestHelperMidReply is not a test: TestProtocolClientKilledMidReply runs
// it in a child process that leases from a REDIS pool, sends GET big,
// reads a few bytes of the reply, prints "MID <connection id>" and waits
// to be killed.
func TestHelperMidReply(t *testing.T) {
	spec := os.Getenv(midReplyEnv)
	if spec == "" {
		t.Skip("helper process of TestProtocolClientKilledMidReply")
	}
	f := strings.Fields(spec)
	fail := func(err error) {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	c, err := client.New(f[0], client.WithInsecure())
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Lease(ctx, f[1])
	if err != nil {
		fail(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	id, err := redisLine(conn, br, "CLIENT ID")
	if err != nil {
		fail(err)
	}
	if _, err := io.WriteString(conn, "GET big\r\n"); err != nil {
		fail(err)
	}
	if _, err := br.Peek(64); err != nil {
		fail(err)
	}
	fmt.Println("MID", strings.TrimPrefix(id, ":"))
	// Wait to be killed: the parent never writes to stdin, and closes it
	// only after the kill (or dies, closing it, and PDEATHSIG ends us).
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// redisLine sends an inline command and returns its one-line reply.
func redisLine(w io.Writer, br *bufio.Reader, cmd string) (string, error) {
	if _, err := io.WriteString(w, cmd+"\r\n"); err != nil {
		return "", err
	}
	line, err := br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestProtocolClientKilledMidReply: a client process is killed (SIGKILL)
// halfway through reading a large Redis reply. On a REDIS pool the lease's
// end is not a reason to lose the connection: the pool reads the rest of
// the reply, resets, and the next client gets the same connection, clean,
// reading only its own replies. Ten processes in a row.
func TestProtocolClientKilledMidReply(t *testing.T) {
	addr := testkit.Redis(t)
	srv := startServer(t, srvOptions{})
	p := srv.create(t, "redis", poolmgr.Config{
		Endpoints:    []string{addr},
		Limits:       poolmgr.Limits{MaxConnections: 1, AcquireTimeout: 10 * time.Second},
		Protocol:     poolmgr.ProtocolRedis,
		ResetTimeout: 5 * time.Second,
	})
	c := newClient(t, srv.addr)
	setup, err := c.Lease(testCtx(t), "redis")
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 4<<20)
	if _, err := fmt.Fprintf(setup, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n", len(big), big); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(setup).ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("SET big: %q, %v", line, err)
	}
	setup.Close()

	for trial := range 10 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMidReply$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s", midReplyEnv, srv.addr, "redis"))
		setPdeathsig(cmd)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		idA, ok := strings.CutPrefix(strings.TrimSpace(line), "MID ")
		if err != nil || !ok {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = stdin.Close()
			t.Fatalf("trial %d: the child said %q, %v", trial, line, err)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		_ = stdin.Close()

		conn, err := c.Lease(testCtx(t), "redis")
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		id, err := redisLine(conn, br, "CLIENT ID")
		if err != nil {
			t.Fatal(err)
		}
		if id != ":"+idA {
			t.Fatalf("trial %d: the next client got connection %s, the killed one had %s: the pool closed a connection it could reset (closes %v)",
				trial, id, idA, p.Stats().Closes)
		}
		echo := fmt.Sprintf("after-kill-%d", trial)
		if got, err := redisLine(conn, br, "PING "+echo); err != nil || got != "$"+fmt.Sprint(len(echo)) {
			t.Fatalf("trial %d: PING answered %q, %v: the killed client's reply leaked", trial, got, err)
		}
		if got, _ := br.ReadString('\n'); strings.TrimSpace(got) != echo {
			t.Fatalf("trial %d: PING's payload %q", trial, got)
		}
		conn.Close()
	}
	if st := p.Stats(); st.New != 1 {
		t.Fatalf("%d connections created, want 1 (closes %v)", st.New, st.Closes)
	}
}
