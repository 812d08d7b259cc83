package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/internal/servertest"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
)

// The held-leases scale test runs the server in a process of its own (this
// test binary again, as TestScaleServerProcess), so that its memory is the
// server's alone, and holds leases from one client.New in the test's
// process. By default it holds a few hundred leases; set
// POOLPLANE_SCALE_LEASES for more:
//
//	POOLPLANE_SCALE_LEASES=10000 go test -count=1 -run TestHeldLeasesAtScale -v -timeout 10m ./server/
//
// It raises RLIMIT_NOFILE for itself and the server (each holds one socket
// per lease) and skips when the hard limit is too low. POOLPLANE_SCALE_HEAP,
// set to a path, has the server write a heap profile there while the
// leases are held (its goroutines' stacks when the path ends in .txt).
const (
	scaleLeasesEnv = "POOLPLANE_SCALE_LEASES"
	scaleChildEnv  = "POOLPLANE_SCALE_CHILD"  // "held-upstream,probe-upstream,max"
	scaleHeapEnv   = "POOLPLANE_SCALE_HEAP"   // heap profile path
	scaleDefault   = 300                      // leases held in the default run
	scaleProbes    = 1000                     // probe round trips while they are held
	scaleWorkers   = 32                       // leases taken at once
	scaleProbeSize = 64                       // bytes each way per probe
	scaleFDSlack   = 512                      // descriptors besides one per lease
	scaleStatsCmd  = "stats"                  // the parent's request to the child
	scaleHeapCmd   = "heap"                   // ... for a heap profile
	scaleAddrLine  = "poolplane-scale-addr: " // the child's first line
)

// scaleStats is the server process's report, after a GC.
type scaleStats struct {
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	RSS        uint64 `json:"rss"` // VmRSS after the GC and FreeOSMemory
}

// TestScaleServerProcess is the server of TestHeldLeasesAtScale; it skips
// unless that test started it. It prints the address it serves on, then
// answers each "stats" line on stdin with a JSON scaleStats line, until
// stdin ends.
func TestScaleServerProcess(t *testing.T) {
	spec := os.Getenv(scaleChildEnv)
	if spec == "" {
		t.Skip("the server process of TestHeldLeasesAtScale")
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		t.Fatalf("%s=%q", scaleChildEnv, spec)
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	srv := servertest.Start(t, servertest.Options{})
	ctx := context.Background()
	for _, p := range []struct {
		id  string
		up  string
		max int
	}{{"held", parts[0], n + 64}, {"probe", parts[1], 64}} {
		if _, err := srv.Manager.Create(ctx, p.id, poolmgr.Config{
			Endpoints: []string{p.up},
			Limits:    poolmgr.Limits{MaxConnections: p.max, MaxIdle: 1, MaxWaiters: n},
		}, poolmgr.WriteOptions{Actor: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("%s%s\n", scaleAddrLine, srv.Addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case scaleStatsCmd:
			b, err := json.Marshal(readScaleStats(t))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println(string(b))
		case scaleHeapCmd:
			runtime.GC()
			f, err := os.Create(arg)
			if err != nil {
				t.Fatal(err)
			}
			prof, level := "heap", 0
			if strings.HasSuffix(arg, ".txt") {
				prof, level = "goroutine", 2 // every goroutine's stack
			}
			if err := pprof.Lookup(prof).WriteTo(f, level); err != nil {
				t.Error(err)
			}
			_ = f.Close()
			fmt.Println("{}")
		}
	}
}

// scaleGCs is how many GCs run before a report: each may halve a
// goroutine's stack that uses less than a quarter of it, as the periodic
// GCs of a server whose leases sit idle do.
const scaleGCs = 4

func readScaleStats(t *testing.T) scaleStats {
	for range scaleGCs {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return scaleStats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse,
		RSS: vmRSS(t, os.Getpid())}
}

// vmRSS reads a process's resident set size from /proc.
func vmRSS(t testing.TB, pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// scaleChild is the running server process.
type scaleChild struct {
	t    *testing.T
	addr string
	in   io.WriteCloser
	out  *bufio.Scanner
}

func (c *scaleChild) ask(cmd string) string {
	c.t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		c.t.Fatal(err)
	}
	if !c.out.Scan() {
		c.t.Fatalf("server process: %q unanswered: %v", cmd, c.out.Err())
	}
	return c.out.Text()
}

func (c *scaleChild) stats() scaleStats {
	c.t.Helper()
	var s scaleStats
	if err := json.Unmarshal([]byte(c.ask(scaleStatsCmd)), &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// raiseNoFile raises RLIMIT_NOFILE to at least n, or skips the test.
func raiseNoFile(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d descriptors needed: raise it (ulimit -Hn) or hold fewer leases (%s)", lim.Max, n, scaleLeasesEnv)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("raising RLIMIT_NOFILE to %d: %v", n, err)
	}
}

func startScaleChild(t *testing.T, held, probe string, n int) *scaleChild {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestScaleServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), scaleChildEnv+"="+held+","+probe+","+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = in.Close() // the server process ends with its stdin
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(testkit.DefaultWait):
			cancel()
			<-done
		}
		cancel()
	})
	c := &scaleChild{t: t, in: in, out: bufio.NewScanner(out)}
	for c.out.Scan() {
		if a, ok := strings.CutPrefix(c.out.Text(), scaleAddrLine); ok {
			c.addr = a
			return c
		}
	}
	t.Fatalf("server process exited before serving: %v", c.out.Err())
	return nil
}

// TestHeldLeasesAtScale holds many idle leases (each used for one echo
// round trip, then left idle) from one client.New on a
// server in its own process and reports the server's memory and
// goroutines per idle held lease and per idle warm stream, and the round
// trips of probe leases (a lease per request, 64 bytes each way) while
// the leases are held.
func TestHeldLeasesAtScale(t *testing.T) {
	n := scaleDefault
	if v := os.Getenv(scaleLeasesEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("%s: %v", scaleLeasesEnv, err)
		}
	} else if testing.Short() {
		t.Skip("short")
	}
	raiseNoFile(t, uint64(n+scaleFDSlack))

	held := testkit.Serve(t, smallEcho)
	probe := testkit.Serve(t, testkit.EchoConn)
	child := startScaleChild(t, held, probe, n)
	c, err := client.New(child.addr, client.WithInsecure(), client.WithClientName("scale"), client.WithIdleStreams(n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := ctxT(t)
	probeOnce(ctx, t, c) // connected, and the probe pool warm

	base := child.stats()
	cbase := clientStats()
	conns := make([]*client.Conn, n)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for w := range scaleWorkers {
		wg.Go(func() {
			for i := w; i < n; i += scaleWorkers {
				conn, err := c.Lease(ctx, "held")
				if err == nil {
					conns[i] = conn
					err = echo(conn) // used once, then idle
				}
				if err != nil {
					select {
					case errc <- fmt.Errorf("lease %d: %w", i, err):
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, conn := range conns {
			if conn != nil {
				_ = conn.Discard()
			}
		}
	})
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	heldStats := child.stats()
	cheld := clientStats()
	if p := os.Getenv(scaleHeapEnv); p != "" {
		child.ask(scaleHeapCmd + " " + p)
	}

	rtts := make([]time.Duration, 0, scaleProbes)
	for range scaleProbes {
		rtts = append(rtts, probeOnce(ctx, t, c))
	}
	slices.Sort(rtts)

	for i, conn := range conns {
		if err := conn.Close(); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
		conns[i] = nil
	}
	// Every stream is warm now (WithIdleStreams(n)); the held pool keeps
	// one idle connection and closes the rest.
	warm := child.stats()

	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) / 1024 }
	t.Logf("%d leases held from one client.New; server in its own process, after GC", n)
	t.Logf("server per idle held lease: RSS %.1f KiB, heap %.1f KiB, stacks %.1f KiB, goroutines %.2f",
		per(base.RSS, heldStats.RSS), per(base.HeapInuse, heldStats.HeapInuse), per(base.StackInuse, heldStats.StackInuse),
		float64(heldStats.Goroutines-base.Goroutines)/float64(n))
	t.Logf("server per idle warm stream: RSS %.1f KiB, heap %.1f KiB, stacks %.1f KiB, goroutines %.2f",
		per(base.RSS, warm.RSS), per(base.HeapInuse, warm.HeapInuse), per(base.StackInuse, warm.StackInuse),
		float64(warm.Goroutines-base.Goroutines)/float64(n))
	t.Logf("test process (client, and the upstream's echo goroutine) per idle held lease: heap %.1f KiB, stacks %.1f KiB, goroutines %.2f",
		per(cbase.HeapInuse, cheld.HeapInuse), per(cbase.StackInuse, cheld.StackInuse),
		float64(cheld.Goroutines-cbase.Goroutines)/float64(n))
	t.Logf("probe lease round trip (lease, %d B each way, release) while held, %d probes: p50 %v p99 %v max %v",
		scaleProbeSize, len(rtts), rtts[len(rtts)/2], rtts[len(rtts)*99/100], rtts[len(rtts)-1])
}

// smallEcho echoes with a small buffer of its own: testkit.EchoConn's
// io.Copy splices through a pipe, two more descriptors per connection.
func smallEcho(c net.Conn) {
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = c.Close()
}

// echo writes scaleProbeSize bytes to conn and reads them back.
func echo(conn net.Conn) error {
	if err := conn.SetDeadline(time.Now().Add(testkit.DefaultWait)); err != nil {
		return err
	}
	defer func() { _ = conn.SetDeadline(time.Time{}) }()
	msg := make([]byte, scaleProbeSize)
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(conn, msg)
	return err
}

// probeOnce leases from the probe pool, exchanges scaleProbeSize bytes and
// releases, returning the time it took.
func probeOnce(ctx context.Context, t *testing.T, c *client.Client) time.Duration {
	t.Helper()
	start := time.Now()
	conn, err := c.Lease(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(conn); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// clientStats is scaleStats of this process, without RSS (it holds the
// upstreams too).
func clientStats() scaleStats {
	for range scaleGCs {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return scaleStats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse}
}
