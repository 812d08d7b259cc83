package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// helperArgsEnv carries the poold arguments of TestHelperPoold, separated
// by newlines.
const helperArgsEnv = "POOLPLANE_TEST_HELPER_POOLD_ARGS"

// TestHelperPoold is not a test: TestScaleOutReplicaKilled runs it in a
// child process as one poold replica, which it then SIGKILLs. It prints
// "ADDR <grpc address>" once serving and runs until killed or until its
// standard input closes (so a dying parent leaves no orphan).
func TestHelperPoold(t *testing.T) {
	raw, ok := os.LookupEnv(helperArgsEnv)
	if !ok {
		t.Skip("helper process for TestScaleOutReplicaKilled")
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	code := run(ctx, strings.Split(raw, "\n"), os.Stderr, func(g, _ string) {
		fmt.Printf("ADDR %s\n", g)
	})
	os.Exit(code)
}

// childPoold is a poold replica in a child process.
type childPoold struct {
	addr  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startChildPoold(t *testing.T, args ...string) *childPoold {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPoold$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperArgsEnv+"="+strings.Join(args, "\n"))
	logf, err := os.Create(filepath.Join(t.TempDir(), "poold.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childPoold{cmd: cmd, stdin: stdin}
	t.Cleanup(c.kill)
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrc <- a
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case c.addr = <-addrc:
	case <-time.After(30 * time.Second):
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("child poold did not start:\n%s", b)
	}
	return c
}

// kill SIGKILLs the child and reaps it; idempotent.
func (c *childPoold) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Kill()
	_ = c.stdin.Close()
	_ = c.cmd.Wait()
}

// Three poold processes over one embedded etcd, a fleet-scoped pool and
// clients leasing through all three; one replica is SIGKILLed mid-load.
// Only leases in flight on it fail (at most one per client worker), the
// clients carry on through the other two, which take its share once its
// etcd lease expires, and the upstream never sees more than the fleet's
// max_connections.
func TestScaleOutReplicaKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three poold processes")
	}
	srv := etcdtest.Start(t)
	storeURL := "etcd://" + srv.Endpoint() + "/killed"
	up := newCountingEcho(t)
	var rs []*childPoold
	for i := range 3 {
		rs = append(rs, startChildPoold(t, "--listen", "127.0.0.1:0", "--metrics-listen", "off",
			"--data-dir", t.TempDir(), "--store", storeURL, "--replica-id", fmt.Sprint("r", i)))
	}
	ctx := t.Context()
	const fleetMax = 6
	if _, err := poolv1.NewPoolAdminServiceClient(dial(t, rs[0].addr)).CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: "fleet", Pool: &poolv1.Pool{
		Endpoints: []string{up.addr},
		Limits:    &poolv1.Limits{MaxConnections: fleetMax, Scope: poolv1.LimitScope_LIMIT_SCOPE_FLEET}}}); err != nil {
		t.Fatal(err)
	}
	shares := func(rs ...*childPoold) string {
		var s []int32
		for _, r := range rs {
			s = append(s, maxConnsOn(t, r.addr))
		}
		return fmt.Sprint(s)
	}
	testkit.WaitWithin(t, 5*time.Second, "6 divided by 3 replicas", func() bool { return shares(rs...) == "[2 2 2]" })

	c, err := client.New(rs[0].addr+","+rs[1].addr+","+rs[2].addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	// Leases take turns over the replicas, each on a warm stream of its
	// replica.
	t.Cleanup(func() { _ = c.Close() })
	const workers = 6
	var (
		killed   atomic.Bool
		ok, fail [2]atomic.Int64 // before and after the kill
		firstErr [2]atomic.Value // string
	)
	stopWorkers := leaseLoad(ctx, t, c, workers, func(err error) {
		phase := 0 // by when the lease ended: one in flight at the kill counts after
		if killed.Load() {
			phase = 1
		}
		if err != nil {
			if fail[phase].Add(1) == 1 {
				firstErr[phase].Store(err.Error())
			}
			return
		}
		ok[phase].Add(1)
	})
	var seen []uint64
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("acquires per replica %v; leases ok %d/%d, failed %d/%d (first errors %v / %v)", seen,
				ok[0].Load(), ok[1].Load(), fail[0].Load(), fail[1].Load(), firstErr[0].Load(), firstErr[1].Load())
		}
	})
	// The replica to kill must hold leases; the balancer spreads the rest.
	testkit.WaitWithin(t, 20*time.Second, "load on the replica to kill", func() bool {
		seen = seen[:0]
		for _, r := range rs {
			seen = append(seen, acquires(t, r.addr, "fleet"))
		}
		return seen[2] >= 10 && seen[0]+seen[1] >= 10
	})
	killed.Store(true)
	rs[2].kill()
	testkit.WaitWithin(t, 10*time.Second, "leases carry on through r0 and r1", func() bool { return ok[1].Load() >= 100 })
	testkit.WaitWithin(t, 15*time.Second, "the survivors take the killed replica's share", func() bool { return shares(rs[0], rs[1]) == "[3 3]" })
	base := ok[1].Load()
	testkit.WaitWithin(t, 10*time.Second, "leases after the re-division", func() bool { return ok[1].Load() >= base+100 })
	stopWorkers()

	t.Logf("leases ok before/after the kill: %d/%d; failed: %d/%d; upstream max open %d",
		ok[0].Load(), ok[1].Load(), fail[0].Load(), fail[1].Load(), up.max.Load())
	if fail[0].Load() != 0 {
		t.Errorf("%d leases failed before the kill", fail[0].Load())
	}
	if f := fail[1].Load(); f > workers {
		t.Errorf("%d leases failed after the kill, want at most %d (the ones in flight on it)", f, workers)
	}
	if m := up.max.Load(); m > fleetMax {
		t.Errorf("upstream saw %d connections at once, fleet max_connections is %d", m, fleetMax)
	}
}
