// Command sdkconsumer is a service that uses the poolplane SDK and nothing
// else of poolplane: it leases a connection of a pool, sends one line and
// prints the first reply line with the lease's info. Its module exists so
// that graph_test.go can check what the SDK brings into a user's module
// graph and binary.
package main

import (
	"bufio"
	"context"
	"errors"
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
	if err := run(*server, *pool, *send); err != nil {
		log.Fatal(err)
	}
}

func run(server, pool, send string) (err error) {
	c, err := client.New(server, client.WithInsecure())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Lease(ctx, pool)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, conn.Discard()) // the exchange is incomplete: never reuse it
			return
		}
		err = conn.Close() // every reply was read: released for reuse
	}()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, send+"\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	info := conn.Info()
	fmt.Fprintf(os.Stdout, "%q from %s (reused %v, waited %v)\n", line, info.UpstreamAddr, info.Reused, info.WaitTime)
	return nil
}
