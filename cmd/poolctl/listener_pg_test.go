package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/poolplane/poolplane/internal/testkit"
)

// TestListenerPostgresTerminate: a client's Terminate through a listener
// ends its lease at once: the listener closes the connection without
// waiting for the client to close first (a client may wait for the
// server's close, as the protocol has the server do), and the next client
// gets the same backend, reset.
func TestListenerPostgresTerminate(t *testing.T) {
	ts, _ := startPgServer(t, "pg", 1)
	addr := ts.listen(t, "pg")
	var pid uint32
	for i := range 5 {
		nc, fe := pgStartup(t, addr, "SHOW search_path; SET search_path TO pg_catalog")
		var got uint32
		for ready := 0; ready < 2; {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			switch m := msg.(type) {
			case *pgproto3.BackendKeyData:
				got = m.ProcessID
			case *pgproto3.ErrorResponse:
				t.Fatalf("client %d: %s", i, m.Message)
			case *pgproto3.DataRow:
				if len(m.Values) != 1 || string(m.Values[0]) == "pg_catalog" {
					t.Fatalf("client %d: search_path %q: the previous client's is still in force", i, m.Values)
				}
			case *pgproto3.ReadyForQuery:
				ready++
			}
		}
		if pid == 0 {
			pid = got
		}
		if got != pid {
			t.Fatalf("client %d: backend %d, want %d (the pool's one connection)", i, got, pid)
		}
		fe.Send(&pgproto3.Terminate{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		// The client does not close: the listener must.
		var b [1]byte
		if n, err := nc.Read(b[:]); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("client %d: after Terminate read %d bytes, %v; want EOF", i, n, err)
		}
		_ = nc.Close()
	}
}

// TestListenerPostgresHalfClose: a client that sends its query and
// half-closes reads the query's results before the listener closes.
func TestListenerPostgresHalfClose(t *testing.T) {
	ts, pg := startPgServer(t, "pg", 1)
	// The pool waits its reset_timeout at most for the results: long
	// enough here for a loaded machine.
	ts.ok(t, fmt.Sprintf(`pools:
- id: pg
  endpoints: [%s]
  protocol: postgres
  reset_timeout: 30s
  limits: {max_connections: 1, acquire_timeout: 10s}
  postgres:
    database: %s
    user: %s
    password: %s
`, pg, testkit.PostgresDatabase, testkit.PostgresUser, testkit.PostgresPassword), "apply", "-f", "-")
	addr := ts.listen(t, "pg")
	for i := range 3 {
		nc, fe := pgStartup(t, addr, "SELECT pg_sleep(0.05), 'half-closed'")
		if err := nc.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		var row string
		ready := 0
		for {
			msg, err := fe.Receive()
			if err != nil {
				if ready != 2 || row != "half-closed" {
					t.Fatalf("client %d: %v after %d ReadyForQuery, row %q; want the query's row and 2", i, err, ready, row)
				}
				break // the listener's close, after the results
			}
			switch m := msg.(type) {
			case *pgproto3.DataRow:
				row = string(m.Values[1])
			case *pgproto3.ErrorResponse:
				t.Fatalf("client %d: %s", i, m.Message)
			case *pgproto3.ReadyForQuery:
				ready++
			}
		}
	}
}

// pgStartup connects to addr and sends, in one write, a StartupMessage for
// the pool's user and database and a simple query; the connection is
// closed at the test's end.
func pgStartup(t *testing.T, addr, query string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": testkit.PostgresUser, "database": testkit.PostgresDatabase}})
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc, fe
}
