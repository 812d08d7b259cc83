package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

const holderEnv = "RELIABILITY_LEASE_HOLDER" // "addr pool n"

// TestHelperLeaseHolder is not a test: TestClientCrash runs it in a child
// process that leases n connections, does a round trip on each, prints
// "HELD n" and holds them until its stdin closes (or a minute passes).
func TestHelperLeaseHolder(t *testing.T) {
	spec := os.Getenv(holderEnv)
	if spec == "" {
		t.Skip("helper process of TestClientCrash")
	}
	f := strings.Fields(spec)
	n, _ := strconv.Atoi(f[2])
	c, err := client.New(f[0], client.WithInsecure(), client.WithClientName("crashing-holder"))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := c.Lease(ctx, f[1])
		cancel()
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = roundTrip(conn, bufio.NewReader(conn), fmt.Sprintf("held %d\n", i))
		}
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(2)
		}
	}
	fmt.Println("HELD", n)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
	}
	os.Exit(0) // the leases die with the process: that is the point
}

// holder is a running TestHelperLeaseHolder process.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	donec chan struct{} // closed once the process was waited for
}

func startHolder(t *testing.T, addr, pool string, n int) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLeaseHolder$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", holderEnv, addr, pool, n))
	setPdeathsig(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin, donec: make(chan struct{})}
	linec := make(chan string, 1) // the first line
	go func() {
		defer close(h.donec)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			if first {
				linec <- sc.Text()
				first = false
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait() // killed on purpose
	}()
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Signal(syscall.SIGKILL) // it may be gone already
		<-h.donec
	})
	select {
	case line := <-linec:
		if line != fmt.Sprintf("HELD %d", n) {
			t.Fatalf("lease holder: %q", line)
		}
	case <-h.donec:
		t.Fatal("lease holder exited before holding its leases")
	case <-time.After(30 * time.Second):
		t.Fatal("lease holder did not hold its leases within 30s")
	}
	return h
}

// TestClientCrash: a client process holding leases dies.
//   - SIGKILL: the kernel closes its sockets, the server sees the
//     transport end at once;
//   - SIGSTOP (a hung process, or a vanished network): nothing is closed,
//     and the server's keepalive (time 1s, timeout 1s here) ends the
//     transport.
//
// Either way in-use returns to 0 within the keepalive bound, and the
// upstream connections of those leases are closed, not reused: the next
// lease gets a new connection. Figure: seconds to reclaim.
func TestClientCrash(t *testing.T) {
	const (
		leases           = 4
		keepaliveTime    = time.Second
		keepaliveTimeout = time.Second
		slack            = 2 * time.Second
	)
	bound := keepaliveTime + keepaliveTimeout + slack
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGKILL", syscall.SIGKILL}, {"SIGSTOP", syscall.SIGSTOP}} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, "127.0.0.1:0", echoLines)
			srv := startServer(t, srvOptions{keepaliveTime: keepaliveTime, keepaliveTimeout: keepaliveTimeout})
			p := srv.create(t, "crash", poolmgr.Config{
				Endpoints: []string{up.addr},
				Limits:    poolmgr.Limits{MaxConnections: 2 * leases, AcquireTimeout: 10 * time.Second},
			})
			h := startHolder(t, srv.addr, "crash", leases)
			if st := p.Stats(); st.InUse != leases || up.open.Load() != leases {
				t.Fatalf("before the crash: in use %d, upstream open %d, want %d", st.InUse, up.open.Load(), leases)
			}
			if err := h.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			reclaim := testkit.WaitWithin(t, 30*time.Second, "leases reclaimed", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Total == 0 && up.open.Load() == 0
			})
			st := p.Stats()
			if reclaim > bound {
				t.Errorf("reclaimed after %v, want within the keepalive bound %v (+%v)", reclaim, keepaliveTime+keepaliveTimeout, slack)
			}
			if st.Idle != 0 || st.Reused != 0 {
				t.Errorf("a crashed client's connection went back to the pool: %+v", st)
			}
			c := newClient(t, srv.addr)
			conn, err := c.Lease(testCtx(t), "crash")
			if err != nil {
				t.Fatal(err)
			}
			if conn.Info().Reused {
				t.Errorf("the next lease reused a connection: %+v", conn.Info())
			}
			// The dial returns once the kernel has the connection; the
			// upstream's Accept may come a moment later.
			testkit.WaitWithin(t, 10*time.Second, "a new upstream connection for the next lease", func() bool { return up.accepted.Load() == leases+1 })
			conn.Close()
			t.Logf("FIGURE: client crash (%s, %d leases held): in-use back to 0 and upstream connections closed after %s (keepalive bound %v); closes %v",
				tc.name, leases, secs(reclaim), keepaliveTime+keepaliveTimeout, st.Closes)
		})
	}
}
