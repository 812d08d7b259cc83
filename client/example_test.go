package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/poolplane/poolplane/client"
)

// Runnable examples against a real server are in package server's tests;
// these show the API and are compiled, not run.

func ExampleClient_Lease() {
	c, err := client.New("127.0.0.1:7700", client.WithInsecure(), client.WithToken("t0ken"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // the acquire timeout
	defer cancel()
	conn, err := c.Lease(ctx, "redis")
	switch {
	case errors.Is(err, client.ErrBacklogFull):
		var e *client.Error
		errors.As(err, &e)
		log.Printf("pool busy, retry in %v", e.RetryAfter)
		return
	case errors.Is(err, client.ErrAcquireTimeout):
		log.Print("no connection within 2s")
		return
	case err != nil:
		log.Fatal(err)
	}
	defer conn.Close() // released; reused by the next lease when clean

	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(conn, buf); err != nil {
		log.Fatal(err)
	}
	info := conn.Info()
	fmt.Printf("%q from %s (reused %v, waited %v)\n", buf, info.UpstreamAddr, info.Reused, info.WaitTime)
}

func ExampleClient_LeaseWith() {
	c, err := client.New("unix:///run/poold.sock", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The request travels with the lease: it reaches the upstream after
	// half a round trip.
	conn, err := c.LeaseWith(context.Background(), "redis", []byte("PING\r\n"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(conn, buf); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", buf)
}

func ExampleClient_Dialer() {
	c, err := client.New("127.0.0.1:7700", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	hc := &http.Client{Transport: &http.Transport{
		DialContext:     c.Dialer("api"),
		MaxConnsPerHost: 10, // the pool's max_connections
	}}
	resp, err := hc.Get("http://api/healthz") // http://: the pool does the TLS
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
}

func ExampleClient_WatchStats() {
	c, err := client.New("127.0.0.1:7700", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for snap, err := range c.WatchStats(ctx, time.Second, "api", "redis") {
		if err != nil {
			log.Print(err)
			break
		}
		for _, s := range snap.GetStats() {
			fmt.Printf("%s in_use=%d idle=%d waiters=%d\n", s.GetName(), s.GetInUse(), s.GetIdle(), s.GetWaiters())
		}
	}
}
