// Command redisclient talks to Redis through a poolplane pool with go-redis:
// go-redis's own pool holds leases, and each lease is a warm upstream
// connection that poold already dialed.
//
//	poolctl apply -f examples/pools.yaml   # pool "cache" -> 127.0.0.1:6379
//	go run ./examples/redisclient -pool cache
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/poolplane/poolplane/client"
)

func main() {
	server := flag.String("server", "127.0.0.1:7700", "poold address")
	pool := flag.String("pool", "cache", "pool to lease from")
	flag.Parse()

	c, err := client.New(*server, client.WithInsecure(), client.WithClientName("redisclient"))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = c.Close() }()

	rdb := redis.NewClient(&redis.Options{
		Addr:     "cache", // only a label: the pool knows the upstream
		Dialer:   c.Dialer(*pool),
		PoolSize: 4, // keep it below the pool's max_connections
		// Pooled connections keep their Redis session state between
		// leases. RESP2, as redis-cli speaks, so that a connection this
		// program used answers the next redis-cli user in RESP2 too.
		Protocol: 2,
	})
	defer func() { _ = rdb.Close() }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.Set(ctx, "greeting", "hello from poolplane", time.Minute).Err(); err != nil {
		log.Fatal(err)
	}
	v, err := rdb.Get(ctx, "greeting").Result()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("greeting =", v)
	n, err := rdb.Incr(ctx, "counter").Result()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("counter =", n)
}
