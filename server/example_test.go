package server_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"
)

// examplePoold is a poold in miniature for the examples: a store in a
// temporary directory, a Manager and the gRPC server on 127.0.0.1:0.
type examplePoold struct {
	addr  string
	mgr   *poolmgr.Manager
	stops []func()
}

func startExamplePoold() *examplePoold {
	dir, err := os.MkdirTemp("", "poolplane-example")
	if err != nil {
		log.Fatal(err)
	}
	p := &examplePoold{stops: []func(){func() { _ = os.RemoveAll(dir) }}}
	st, err := store.Open(filepath.Join(dir, "pools.db"), store.Options{})
	if err != nil {
		log.Fatal(err)
	}
	p.stops = append(p.stops, func() { _ = st.Close() })
	logger := slog.New(slog.DiscardHandler)
	p.mgr, err = poolmgr.NewManager(poolmgr.ManagerConfig{Store: st, Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	p.stops = append(p.stops, func() { _ = p.mgr.Close() })
	if err := p.mgr.Load(context.Background()); err != nil {
		log.Fatal(err)
	}
	srv, _, err := server.New(server.Config{Manager: p.mgr, Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	p.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	p.stops = append(p.stops, func() { srv.Stop(); <-served })
	return p
}

// pool creates a pool of connections to endpoint (what `poolctl apply`
// does against a real poold).
func (p *examplePoold) pool(id, endpoint string, maxConns int) {
	cfg := poolmgr.Config{Endpoints: []string{endpoint}, Limits: poolmgr.Limits{MaxConnections: maxConns}}
	if _, err := p.mgr.Create(context.Background(), id, cfg, poolmgr.WriteOptions{Actor: "example"}); err != nil {
		log.Fatal(err)
	}
}

func (p *examplePoold) stop() {
	for i := len(p.stops) - 1; i >= 0; i-- {
		p.stops[i]()
	}
}

// startExampleEcho starts a loopback TCP echo upstream; stop closes it and
// waits for its goroutines.
func startExampleEcho() (addr string, stop func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // protects conns
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	return lis.Addr().String(), func() {
		_ = lis.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// Leasing a pooled connection and using it as a net.Conn.
func Example_lease() {
	poold := startExamplePoold()
	defer poold.stop()
	echo, stopEcho := startExampleEcho()
	defer stopEcho()
	poold.pool("echo", echo, 1) // one connection: the second lease gets the first one back

	c, err := client.New(poold.addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	for range 2 {
		conn, err := c.Lease(ctx, "echo") // one round trip
		if err != nil {
			log.Fatal(err)
		}
		if _, err := conn.Write([]byte("hello")); err != nil {
			log.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(conn, buf); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s reused=%v network=%s\n", buf, conn.Info().Reused, conn.RemoteAddr().Network())
		conn.Close() // released clean: the pool keeps the connection
	}
	// Output:
	// hello reused=false network=poolplane
	// hello reused=true network=poolplane
}

// Sending HTTP requests through a pool with net/http.
func Example_httpTransport() {
	poold := startExamplePoold()
	defer poold.stop()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	defer api.Close()
	poold.pool("api", api.Listener.Addr().String(), 4)

	c, err := client.New(poold.addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tr := &http.Transport{
		DialContext:     c.Dialer("api"),
		MaxConnsPerHost: 4, // at most the pool's max_connections
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	// The host is not dialed: the pool's endpoints are. Use http:// even
	// for a TLS upstream, since the pool does the TLS.
	resp, err := hc.Get("http://api/v1/items")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 hello from /v1/items
}

// Using go-redis through a pool. (Not run: it needs a Redis server.)
func Example_goRedis() {
	c, err := client.New("127.0.0.1:7700", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	rdb := redis.NewClient(&redis.Options{
		Addr:     "redis",              // unused: the pool's endpoints are dialed
		Dialer:   c.Dialer("sessions"), // leases from pool "sessions"
		PoolSize: 8,                    // below the pool's max_connections
	})
	defer rdb.Close()

	ctx := context.Background()
	if err := rdb.Set(ctx, "greeting", "hello", 0).Err(); err != nil {
		log.Fatal(err)
	}
	v, err := rdb.Get(ctx, "greeting").Result()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(v)
}
