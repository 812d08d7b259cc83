package engine

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/puddle/v2"

	"github.com/poolplane/poolplane/internal/testkit"
)

// benchConn is a do-nothing net.Conn. It is not a syscall.Conn, so the pool
// skips the checkout and release peeks: the benchmark measures the pool.
type benchConn struct{}

func (benchConn) Read([]byte) (int, error)         { return 0, nil }
func (benchConn) Write(b []byte) (int, error)      { return len(b), nil }
func (benchConn) Close() error                     { return nil }
func (benchConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (benchConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (benchConn) SetDeadline(time.Time) error      { return nil }
func (benchConn) SetReadDeadline(time.Time) error  { return nil }
func (benchConn) SetWriteDeadline(time.Time) error { return nil }

const benchPoolSize = 8

// acquireRelease is one implementation under benchmark: it returns the
// function one goroutine runs per operation, and a cleanup.
type acquireRelease func(b *testing.B) (op func(), cleanup func())

func benchPoolmgr(dial DialFunc) acquireRelease {
	return func(b *testing.B) (func(), func()) {
		b.Helper()
		cfg := Config{Endpoints: []string{"127.0.0.1:1"}}
		cfg.Limits.MaxConnections = benchPoolSize
		cfg.Limits.MinIdle = benchPoolSize
		cfg.Limits.MaxWaiters = 100000
		cfg = cfg.WithDefaults()
		p, err := NewPool("bench", cfg, Env{Dial: dial, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
		for {
			changed := p.Changed()
			if p.Stats().Idle >= benchPoolSize {
				break
			}
			select {
			case <-changed:
			case <-timeout:
				b.Fatal("prewarm did not finish")
			}
		}
		ctx := context.Background()
		return func() {
			c, err := p.Acquire(ctx, "bench")
			if err != nil {
				panic(err)
			}
			c.Release(true)
		}, func() { p.Close() }
	}
}

func benchPuddle(b *testing.B) (func(), func()) {
	b.Helper()
	p, err := puddle.NewPool(&puddle.Config[net.Conn]{
		Constructor: func(context.Context) (net.Conn, error) { return benchConn{}, nil },
		Destructor:  func(net.Conn) {},
		MaxSize:     benchPoolSize,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var rs []*puddle.Resource[net.Conn]
	for range benchPoolSize {
		r, err := p.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		rs = append(rs, r)
	}
	for _, r := range rs {
		r.Release()
	}
	return func() {
		r, err := p.Acquire(ctx)
		if err != nil {
			panic(err)
		}
		r.Release()
	}, p.Close
}

func benchChan(b *testing.B) (func(), func()) {
	b.Helper()
	// A buffered channel of benchPoolSize is the simplest pool, used as the
	// reference floor; its size is the pool size.
	ch := make(chan net.Conn, benchPoolSize)
	for range benchPoolSize {
		ch <- benchConn{}
	}
	return func() {
		c := <-ch
		ch <- c
	}, func() {}
}

// runConcurrent runs b.N operations spread over g goroutines.
func runConcurrent(b *testing.B, g int, op func()) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	n := int64(b.N)
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for next.Add(1) <= n {
				op()
			}
		}()
	}
	b.ReportAllocs()
	b.ResetTimer()
	close(start)
	wg.Wait()
	b.StopTimer()
}

// BenchmarkAcquireRelease compares the idle-hit path (acquire and release on
// a pool of 8 warm connections) of poolmgr, jackc/puddle and a buffered
// channel, with 1 to 512 goroutines contending.
func BenchmarkAcquireRelease(b *testing.B) {
	impls := []struct {
		name string
		fn   acquireRelease
	}{
		{"poolmgr", benchPoolmgr(func(context.Context, string, string) (net.Conn, error) { return benchConn{}, nil })},
		{"puddle", benchPuddle},
		{"chan", benchChan},
	}
	for _, impl := range impls {
		for _, g := range []int{1, 8, 64, 512} {
			b.Run("impl="+impl.name+"/goroutines="+strconv.Itoa(g), func(b *testing.B) {
				op, cleanup := impl.fn(b)
				defer cleanup()
				runConcurrent(b, g, op)
			})
		}
	}
}

// BenchmarkAcquireReleaseTCP is the poolmgr idle-hit path on real loopback
// sockets: each checkout and release includes the MSG_PEEK syscall.
func BenchmarkAcquireReleaseTCP(b *testing.B) {
	addr := testkit.Serve(b, func(net.Conn) {}) // holds each connection until the end
	var d net.Dialer
	for _, g := range []int{1, 8, 64} {
		b.Run("goroutines="+strconv.Itoa(g), func(b *testing.B) {
			op, cleanup := benchPoolmgr(func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			})(b)
			defer cleanup()
			runConcurrent(b, g, op)
		})
	}
}

func TestAcquireReleaseIdleHitAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count")
	}
	for _, tc := range []struct {
		name string
		tcp  bool
	}{{"fake", false}, {"tcp", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Endpoints: []string{"127.0.0.1:1"}}
			dial := func(context.Context, string, string) (net.Conn, error) { return benchConn{}, nil }
			if tc.tcp {
				u := startUpstream(t, "127.0.0.1:0", nil, nil)
				cfg.Endpoints = []string{u.addr()}
				dial = nil
			}
			p := newIOPool(t, cfg.WithDefaults(), Env{Dial: dial})
			mustAcquire(t, p).Release(true)
			ctx := context.Background()
			allocs := testing.AllocsPerRun(1000, func() {
				c, err := p.Acquire(ctx, "t")
				if err != nil {
					panic(err)
				}
				c.Release(true)
			})
			if allocs != 0 {
				t.Fatalf("idle-hit acquire+release allocates %v times, want 0", allocs)
			}
		})
	}
}
