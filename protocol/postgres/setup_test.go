package postgres

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// answeredConn is a connection whose Writes, while hold is set, return only
// once a Read has returned bytes written after them: the server answers a
// write before the write returns, as on a loaded machine. pgconn then
// starts its background reader (a write that takes over 15 ms), which
// reads the answer and goes on reading.
type answeredConn struct {
	net.Conn
	hold atomic.Bool

	mu    sync.Mutex
	cond  *sync.Cond
	reads int  // Reads that returned bytes
	stuck bool // a held Write gave up waiting
}

func newAnsweredConn(nc net.Conn) *answeredConn {
	c := &answeredConn{Conn: nc}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *answeredConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.reads++
		c.cond.Broadcast()
		c.mu.Unlock()
	}
	return n, err
}

func (c *answeredConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	before := c.reads
	c.mu.Unlock()
	n, err := c.Conn.Write(b)
	if err != nil || !c.hold.Load() {
		return n, err
	}
	// Nothing else wakes the wait if no Read comes: bound it.
	t := time.AfterFunc(10*time.Second, func() {
		c.mu.Lock()
		c.stuck = true
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer t.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.reads == before && !c.stuck {
		c.cond.Wait()
	}
	return n, err
}

// TestSetupLeavesNoReadBehind: pgconn's background reader, started by a
// slow write during the startup and still in a Read when the startup is
// done, would take the first reply meant for the pool's lease (the
// client's query would then wait forever on a backend that answered).
// Setup syncs the connection before it hijacks it: every write of the
// startup here is answered before it returns, which starts the background
// reader each time, and the first query on the connection Setup returns
// still gets its reply.
func TestSetupLeavesNoReadBehind(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	for i := range 3 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ac := newAnsweredConn(nc)
		ac.hold.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		up, _, err := h.Setup(ctx, ac)
		cancel()
		ac.hold.Store(false)
		if err != nil {
			_ = nc.Close()
			t.Fatalf("connection %d: Setup: %v", i, err)
		}
		ac.mu.Lock()
		stuck := ac.stuck
		ac.mu.Unlock()
		if stuck {
			t.Fatalf("connection %d: a startup write was never answered by a read: pgconn no longer reads in the background during a slow write, and this test no longer tests anything", i)
		}
		_ = up.SetDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(up, up)
		fe.Send(&pgproto3.Query{String: "SELECT 'first reply'"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var row string
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("connection %d: the first query's reply (row %q so far): %v", i, row, err)
			}
			if d, ok := msg.(*pgproto3.DataRow); ok {
				row = string(d.Values[0])
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if row != "first reply" {
			t.Fatalf("connection %d: row %q", i, row)
		}
		_ = up.Close()
	}
}
