package server_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/poolmgr"

	"github.com/poolplane/poolplane/internal/testkit"
)

// startRedis starts a throwaway redis-server on a free loopback port.
func startRedis(t *testing.T) string {
	t.Helper()
	return testkit.Redis(t)
}

// TestSDKGoRedis drives a real redis-server with go-redis v9 whose Dialer
// leases from a pool.
func TestSDKGoRedis(t *testing.T) {
	addr := startRedis(t)
	e := startSDKEnv(t)
	// go-redis v9.23 may hold one connection beyond PoolSize after a
	// pipeline (it dials 9 for PoolSize 8 and tracks 8, without closing the
	// ninth, also on plain TCP): the pool needs headroom above PoolSize, or
	// go-redis's extra dial waits for the acquire timeout.
	const poolSize, maxConns = 8, 16
	e.createPool(t, "redis", poolmgr.Config{
		Endpoints: []string{addr},
		Limits:    poolmgr.Limits{MaxConnections: maxConns},
	})
	rdb := redis.NewClient(&redis.Options{
		Addr:                  "redis.pool", // unused: the Dialer picks the pool
		Dialer:                e.c.Dialer("redis"),
		PoolSize:              poolSize,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := ctxSDK(t)

	t.Run("SetGet", func(t *testing.T) {
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
			t.Fatalf("GET = %q, %v", v, err)
		}
		if _, err := rdb.Get(ctx, "absent").Result(); !errors.Is(err, redis.Nil) {
			t.Fatalf("GET absent: %v", err)
		}
	})

	t.Run("Pipeline", func(t *testing.T) {
		cmds, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range 100 {
				p.Set(ctx, "p"+strconv.Itoa(i), i, 0)
			}
			for i := range 100 {
				p.Get(ctx, "p"+strconv.Itoa(i))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cmds[100:] {
			if v, err := c.(*redis.StringCmd).Int(); err != nil || v != i {
				t.Fatalf("GET p%d = %d, %v", i, v, err)
			}
		}
	})

	t.Run("MultiExec", func(t *testing.T) {
		var incr *redis.IntCmd
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "tx", 10, 0)
			incr = p.IncrBy(ctx, "tx", 5)
			return nil
		})
		if err != nil || incr.Val() != 15 {
			t.Fatalf("MULTI/EXEC: %d, %v", incr.Val(), err)
		}
		// WATCH: an optimistic transaction on one leased connection.
		err = rdb.Watch(ctx, func(tx *redis.Tx) error {
			n, err := tx.Get(ctx, "tx").Int()
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "tx", n*2, 0)
				return nil
			})
			return err
		}, "tx")
		if v, _ := rdb.Get(ctx, "tx").Int(); err != nil || v != 30 {
			t.Fatalf("WATCH/MULTI/EXEC: %d, %v", v, err)
		}
	})

	t.Run("BlockingPop", func(t *testing.T) {
		// A BLPOP that outlives its deadline fails with a timeout; go-redis
		// then closes the connection, which is released dirty.
		before, err := e.c.PoolStats(ctx, "redis")
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		_, err = rdb.BLPop(short, 5*time.Second, "empty").Result()
		cancel()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("BLPOP past its deadline: %v, want a timeout", err)
		}
		testkit.WaitFor(t, "the timed-out connection to be closed dirty", func() bool {
			after, err := e.c.PoolStats(ctx, "redis")
			return err == nil && after.GetCloses()["dirty"] > before.GetCloses()["dirty"]
		})
		// A BLPOP woken by a push from another goroutine.
		res := make(chan []string, 1)
		go func() {
			v, err := rdb.BLPop(ctx, 10*time.Second, "queue").Result()
			if err != nil {
				t.Errorf("BLPOP: %v", err)
			}
			res <- v
		}()
		testkit.WaitFor(t, "a blocked client", func() bool {
			n, err := rdb.Do(ctx, "INFO", "clients").Text()
			return err == nil && containsLine(n, "blocked_clients:1")
		})
		if err := rdb.RPush(ctx, "queue", "job").Err(); err != nil {
			t.Fatal(err)
		}
		if v := testkit.Recv(t, res); len(v) != 2 || v[1] != "job" {
			t.Fatalf("BLPOP = %v", v)
		}
		if err := rdb.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING after the timeout: %v", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		const goroutines, total = 32, 10000
		if err := rdb.Del(ctx, "counter").Err(); err != nil {
			t.Fatal(err)
		}
		var (
			wg    sync.WaitGroup
			incrs atomic.Int64
		)
		for g := range goroutines {
			wg.Go(func() {
				key := "g" + strconv.Itoa(g)
				// Commands g, g+32, ... of the 10,000: INCR, SET key j, GET key (== j-1), ...
				for j, i := 0, g; i < total; j, i = j+1, i+goroutines {
					var err error
					switch j % 3 {
					case 0:
						err = rdb.Incr(ctx, "counter").Err()
						incrs.Add(1)
					case 1:
						err = rdb.Set(ctx, key, j, 0).Err()
					default:
						var v int
						v, err = rdb.Get(ctx, key).Int()
						if err == nil && v != j-1 {
							t.Errorf("GET %s = %d, want %d", key, v, j-1)
						}
					}
					if err != nil {
						t.Errorf("command %d: %v", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		if n, err := rdb.Get(ctx, "counter").Int64(); err != nil || n != incrs.Load() {
			t.Fatalf("counter = %d, %v; want %d", n, err, incrs.Load())
		}
		st, err := e.c.PoolStats(ctx, "redis")
		if err != nil {
			t.Fatal(err)
		}
		if st.GetMaxConnections() != maxConns || st.GetTotal() > maxConns {
			t.Errorf("pool total %d above %d", st.GetTotal(), maxConns)
		}
		t.Logf("pool: %d dials, %d acquires, %d reused", st.GetDials(), st.GetAcquires(), st.GetReused())
	})
}

func containsLine(text, line string) bool {
	for len(text) > 0 {
		i := 0
		for i < len(text) && text[i] != '\n' {
			i++
		}
		l := text[:i]
		if len(l) > 0 && l[len(l)-1] == '\r' {
			l = l[:len(l)-1]
		}
		if l == line {
			return true
		}
		if i == len(text) {
			break
		}
		text = text[i+1:]
	}
	return false
}

func ctxSDK(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
