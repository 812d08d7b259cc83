// Command sdkconsumer is a service that uses the poolplane SDK and nothing
// else of poolplane: it leases a connection of a pool, sends one line and
// prints the first reply line with the lease's info. Its module exists so
// that graph_test.go can check what the SDK brings into a user's module
// graph and binary.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/poolplane/poolplane/client"
)

func main() {
	server := flag.String("server", "127.0.0.1:7700", "poold address")
	pool := flag.String("pool", "cache", "pool to lease from")
	send := flag.String("send", "PING", "line to send")
	flag.Parse()

	c, err := client.New(*server, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Lease(ctx, *pool)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		log.Fatal(err)
	}
	if _, err := io.WriteString(conn, *send+"\r\n"); err != nil {
		log.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	info := conn.Info()
	fmt.Fprintf(os.Stdout, "%q from %s (reused %v, waited %v)\n", line, info.UpstreamAddr, info.Reused, info.WaitTime)
}
