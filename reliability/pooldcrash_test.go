package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// crashWriter is one of the 16 writers of TestPooldCrash: writers 0-7 call
// UpdatePool on their pool "u<i>"; writers 8-15 call ApplyPools on their
// pair "a<i>" and "b<i>", which must change together. Each write sets the
// label seq to the writer's next number and max_connections from it.
type crashWriter struct {
	pools []string // one pool (UpdatePool) or a pair (ApplyPools)
	// Acknowledged writes of the current round, and the last one before.
	acked    []ackedWrite
	last     ackedWrite
	nextSeq  int
	updating bool
}

type ackedWrite struct {
	seq int
	rev int64
}

func maxConnsFor(seq int) int32 { return int32(1 + seq%50) }

func crashPool(name, upstream string, seq int) *poolv1.Pool {
	return &poolv1.Pool{
		Name:      "pools/" + name,
		Endpoints: []string{upstream},
		Limits:    &poolv1.Limits{MaxConnections: maxConnsFor(seq)},
		Labels:    map[string]string{"seq": strconv.Itoa(seq)},
	}
}

// write sends the writer's next change and returns it once acknowledged.
func (w *crashWriter) write(ctx context.Context, admin poolv1.PoolAdminServiceClient, upstream string) (ackedWrite, error) {
	seq := w.nextSeq
	w.nextSeq++
	if w.updating {
		p, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{
			Pool:       crashPool(w.pools[0], upstream, seq),
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels", "limits.max_connections"}},
		})
		if err != nil {
			return ackedWrite{}, err
		}
		return ackedWrite{seq: seq, rev: p.GetRevision()}, nil
	}
	resp, err := admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{
		crashPool(w.pools[0], upstream, seq), crashPool(w.pools[1], upstream, seq),
	}})
	if err != nil {
		return ackedWrite{}, err
	}
	return ackedWrite{seq: seq, rev: resp.GetRevision()}, nil
}

// TestPooldCrash: the real poold binary is SIGKILLed at a random moment
// while 16 writers send up to 1,000 UpdatePool and ApplyPools calls, then
// restarted on the same data directory; 10 rounds (POOLPLANE_CRASH_ROUNDS).
// The kill comes at a uniformly random time within the first second of a
// round (POOLPLANE_CRASH_WINDOW_MS, default 1000): writes are fsynced, so
// a CI machine acknowledges some tens to hundreds per round; raise the
// window to let the whole 1,000 run.
// After each restart:
//   - every acknowledged change is present with its revision (in the
//     pool's revisions), and the current value is the last acknowledged
//     one or the single write in flight at the kill;
//   - nothing is half-applied: both pools of an ApplyPools pair carry the
//     same change at the same revision;
//   - the pools run with the stored config: the live max_connections is
//     the stored one, and a lease through a pool works.
//
// Figure: acknowledged writes lost (must be 0).
func TestPooldCrash(t *testing.T) {
	rounds := envInt(t, "POOLPLANE_CRASH_ROUNDS", 10)
	killWindow := time.Duration(envInt(t, "POOLPLANE_CRASH_WINDOW_MS", 1000)) * time.Millisecond
	const writers, callsPerRound = 16, 1000
	up := startUpstream(t, "127.0.0.1:0", echoLines)
	dataDir := t.TempDir()
	// History holds every revision of a pool across all rounds.
	extra := []string{"--history", strconv.Itoa(rounds*callsPerRound/writers*2 + 100)}
	pd := spawnPoold(t, dataDir, extra...)
	ctx := testCtx(t)

	ws := make([]*crashWriter, writers)
	admin, _, closeConn := adminClient(t, pd.addr)
	for i := range ws {
		w := &crashWriter{updating: i < writers/2, nextSeq: 1}
		if w.updating {
			w.pools = []string{fmt.Sprintf("u%d", i)}
		} else {
			w.pools = []string{fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)}
		}
		if w.updating {
			p, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: w.pools[0], Pool: crashPool(w.pools[0], up.addr, 0)})
			if err != nil {
				t.Fatalf("create %s: %v", w.pools[0], err)
			}
			w.last = ackedWrite{seq: 0, rev: p.GetRevision()}
		} else {
			// A pair is created as it is changed: both pools in one
			// ApplyPools, at one revision.
			w.nextSeq = 0
			a, err := w.write(ctx, admin, up.addr)
			if err != nil {
				t.Fatalf("create %v: %v", w.pools, err)
			}
			w.last = a
		}
		ws[i] = w
	}
	closeConn()

	var totalAcked, lost, inFlightCommitted int
	start := time.Now()
	for round := range rounds {
		admin, _, closeConn := adminClient(t, pd.addr)
		killAt := time.Duration(rand.Int64N(int64(killWindow)))
		var (
			budget atomic.Int64 // calls left this round
			acks   atomic.Int64
			wg     sync.WaitGroup
		)
		budget.Store(callsPerRound)
		for _, w := range ws {
			w.acked = w.acked[:0]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for budget.Add(-1) >= 0 {
					a, err := w.write(ctx, admin, up.addr)
					if err != nil {
						return // poold is gone
					}
					w.acked = append(w.acked, a)
					acks.Add(1)
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-time.After(killAt):
		case <-done:
		}
		pd.kill()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatalf("round %d: writers stuck after the kill", round)
		}
		closeConn()
		killed := time.Now()

		pd = spawnPoold(t, dataDir, extra...)
		restartTime := time.Since(killed)
		admin, stats, closeConn := adminClient(t, pd.addr)
		for _, w := range ws {
			l, c := w.verify(ctx, t, admin, stats)
			lost += l
			inFlightCommitted += c
			totalAcked += len(w.acked)
		}
		if round == 0 || round == rounds-1 {
			leaseThrough(t, pd.addr, ws[0].pools[0])
		}
		closeConn()
		t.Logf("round %d: killed %v into the round, after %d acknowledged writes; restarted in %v, verified in %v",
			round, killAt.Round(time.Millisecond), acks.Load(), restartTime.Round(time.Millisecond), time.Since(killed.Add(restartTime)).Round(time.Millisecond))
	}
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	t.Logf("FIGURE: poold SIGKILL: %d acknowledged writes lost of %d, over %d kill/restart rounds of 16 writers (%d unacknowledged writes in flight at a kill were committed whole, none half-applied) in %v",
		lost, totalAcked, rounds, inFlightCommitted, time.Since(start).Round(time.Millisecond))
}

// verify checks the writer's pools after a restart and returns the
// acknowledged writes lost and whether an unacknowledged write committed.
func (w *crashWriter) verify(ctx context.Context, t *testing.T, admin poolv1.PoolAdminServiceClient, stats poolv1.StatsServiceClient) (lost, inFlight int) {
	t.Helper()
	if len(w.acked) > 0 {
		w.last = w.acked[len(w.acked)-1]
	}
	var seq0 int
	var rev0 int64
	for i, name := range w.pools {
		p, err := admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/" + name})
		if err != nil {
			t.Fatalf("get %s after restart: %v", name, err)
		}
		seq, err := strconv.Atoi(p.GetLabels()["seq"])
		if err != nil {
			t.Fatalf("%s: label seq %q", name, p.GetLabels()["seq"])
		}
		switch {
		case seq == w.last.seq && p.GetRevision() == w.last.rev:
		case seq == w.last.seq+1 && p.GetRevision() > w.last.rev:
			inFlight = 1 // the write in flight at the kill committed
		default:
			t.Errorf("%s after restart: seq %d at revision %d; last acknowledged seq %d at revision %d", name, seq, p.GetRevision(), w.last.seq, w.last.rev)
			lost++
		}
		if got := p.GetLimits().GetMaxConnections(); got != maxConnsFor(seq) {
			t.Errorf("%s: stored max_connections %d with seq %d: a half-applied change", name, got, seq)
		}
		if i == 0 {
			seq0, rev0 = seq, p.GetRevision()
		} else if seq != seq0 || p.GetRevision() != rev0 {
			t.Errorf("ApplyPools pair half-applied: %s at seq %d revision %d, %s at seq %d revision %d", w.pools[0], seq0, rev0, name, seq, p.GetRevision())
		}
		st, err := stats.GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/" + name})
		if err != nil {
			t.Fatalf("stats of %s after restart: %v", name, err)
		}
		if st.GetMaxConnections() != p.GetLimits().GetMaxConnections() {
			t.Errorf("%s runs with max_connections %d, stored %d", name, st.GetMaxConnections(), p.GetLimits().GetMaxConnections())
		}
		// Every acknowledged write of the round, with its revision.
		hist := revisions(ctx, t, admin, name)
		for _, a := range w.acked {
			if got, ok := hist[a.rev]; !ok || got != a.seq {
				t.Errorf("%s: acknowledged seq %d at revision %d: history has %d (present %v)", name, a.seq, a.rev, got, ok)
				lost++
			}
		}
	}
	w.last = ackedWrite{seq: seq0, rev: rev0}
	w.nextSeq = seq0 + 1
	return lost, inFlight
}

// revisions maps a pool's retained revisions to their seq label.
func revisions(ctx context.Context, t *testing.T, admin poolv1.PoolAdminServiceClient, name string) map[int64]int {
	t.Helper()
	out := make(map[int64]int)
	token := ""
	for range 100 {
		resp, err := admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/" + name, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("revisions of %s: %v", name, err)
		}
		for _, r := range resp.GetRevisions() {
			seq, _ := strconv.Atoi(r.GetPool().GetLabels()["seq"])
			out[r.GetRevision()] = seq
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
	t.Fatalf("revisions of %s: too many pages", name)
	return nil
}

// leaseThrough checks that a pool of a restarted poold serves a lease with
// its stored max_connections.
func leaseThrough(t *testing.T, addr, pool string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := poolv1.NewPoolAdminServiceClient(cc).GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/" + pool})
	if err != nil {
		t.Fatal(err)
	}
	st, err := poolv1.NewStatsServiceClient(cc).GetPoolStats(ctx, &poolv1.GetPoolStatsRequest{Name: "pools/" + pool})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetMaxConnections() != p.GetLimits().GetMaxConnections() {
		t.Errorf("%s runs with max_connections %d, stored %d", pool, st.GetMaxConnections(), p.GetLimits().GetMaxConnections())
	}
	c := newClient(t, addr)
	conn, err := c.Lease(ctx, pool)
	if err != nil {
		t.Fatalf("lease %s after restart: %v", pool, err)
	}
	defer conn.Close()
	if got, err := roundTrip(conn, bufio.NewReader(conn), "after crash\n"); err != nil || got != "after crash\n" {
		t.Fatalf("round trip through %s after restart: %q, %v", pool, got, err)
	}
}

func adminClient(t *testing.T, addr string) (poolv1.PoolAdminServiceClient, poolv1.StatsServiceClient, func()) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return poolv1.NewPoolAdminServiceClient(cc), poolv1.NewStatsServiceClient(cc), func() { cc.Close() }
}

// envInt reads a positive integer knob from the environment.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
