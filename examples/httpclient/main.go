// Command httpclient sends HTTP requests through a poolplane pool: each
// request's connection is a lease of a warm upstream connection, so the
// client pays neither TCP nor TLS setup.
//
//	poolctl apply -f examples/pools.yaml   # pool "api" -> 127.0.0.1:7701 (the tour's stand-in API)
//	go run ./examples/httpclient -pool api -url http://api.internal/healthz
//
// The pool does the upstream's TLS, so URLs are http:// and the host in the
// URL only sets the Host header.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/poolplane/poolplane/client"
)

func main() {
	server := flag.String("server", "127.0.0.1:7700", "poold address")
	pool := flag.String("pool", "api", "pool to lease from")
	url := flag.String("url", "http://api/", "URL to GET")
	n := flag.Int("n", 3, "requests to send")
	flag.Parse()

	c, err := client.New(*server, client.WithInsecure(), client.WithClientName("httpclient"))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = c.Close() }()

	hc := &http.Client{
		Transport: &http.Transport{
			DialContext:         c.Dialer(*pool),
			MaxIdleConnsPerHost: 4,
		},
		Timeout: 10 * time.Second,
	}
	defer hc.CloseIdleConnections() // releases the leases the transport keeps
	for i := range *n {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, *url, nil)
		if err != nil {
			log.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "request %d: %v\n", i, err)
			os.Exit(1)
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("request %d: %s, %d bytes\n", i, resp.Status, len(body))
	}
}
