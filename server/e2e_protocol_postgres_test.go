package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
)

// pgWait bounds one statement or one read in these tests: what they
// assert is isolation, and a loaded machine running them with -race may
// take seconds over a SCRAM dial or a query.
const pgWait = 30 * time.Second

// startPostgresPool starts PostgreSQL and an SDK env with a POSTGRES pool
// "pg" of one connection (and "pg-short" with a short reset_timeout) that
// holds the database password: clients present no password.
func startPostgresPool(t *testing.T) (*sdkEnv, string) {
	t.Helper()
	addr := testkit.Postgres(t)
	e := startSDKEnvWith(t, sdkEnvConfig{
		manager: func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{7}, 32) },
		client:  []client.Option{client.WithReleaseTimeout(10 * time.Second)},
	})
	for pool, reset := range map[string]time.Duration{"pg": 5 * time.Second, "pg-short": 200 * time.Millisecond} {
		e.createPool(t, pool, poolmgr.Config{
			Endpoints:    []string{addr},
			Limits:       poolmgr.Limits{MaxConnections: 1},
			Protocol:     poolmgr.ProtocolPostgres,
			ResetTimeout: reset,
			Postgres: poolmgr.PostgresSetup{Database: testkit.PostgresDatabase, User: testkit.PostgresUser,
				Password: testkit.PostgresPassword},
			Listeners: localListener,
		})
	}
	return e, addr
}

// pgConnect connects pgx to pool through the SDK's Dialer, with no
// password (the address in the URL is not dialed: the Dialer leases).
func pgConnect(t *testing.T, e *sdkEnv, pool string) *pgx.Conn {
	t.Helper()
	return pgConnectVia(t, e, fronts[0], pool)
}

// pgConnectVia connects pgx to pool through front f.
func pgConnectVia(t *testing.T, e *sdkEnv, f front, pool string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig("postgres://" + testkit.PostgresUser + "@127.0.0.1/" + testkit.PostgresDatabase + "?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return f.dial(t, e, pool), nil }
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol // the checks leave no prepared statement of their own
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through pool %s: %v", pool, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func pgScalar[T any](t *testing.T, conn *pgx.Conn, sql string) T {
	t.Helper()
	var v T
	ctx, cancel := context.WithTimeout(context.Background(), pgWait)
	defer cancel()
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func pgExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pgWait)
	defer cancel()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// pgRaw writes raw protocol bytes on the connection under pgx, as a client
// cut off mid-exchange would have. SyncConn first: pgx may have left a
// read of its own in progress on the connection (its background reader,
// started when a write was slow), which would take the reply the test
// then reads itself.
func pgRaw(t *testing.T, conn *pgx.Conn, typ byte, body []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pgWait)
	defer cancel()
	if err := conn.PgConn().SyncConn(ctx); err != nil {
		t.Fatal(err)
	}
	msg := append([]byte{typ, 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(msg[1:5], uint32(4+len(body)))
	if _, err := conn.PgConn().Conn().Write(msg); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresPoolIsolatesClients: pgx through the SDK on a POSTGRES pool
// of one connection, against a real PostgreSQL. Client A leaves session
// state behind and goes (closing normally, or cut off mid-exchange), then
// client B finds a clean session on the same backend where the pool can
// reset it (pg_backend_pid is the same), or a new backend where it cannot.
// Each case runs 30 times.
func TestPostgresPoolIsolatesClients(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testPostgresPoolIsolatesClients(t, f) })
	}
}

func testPostgresPoolIsolatesClients(t *testing.T, f front) {
	e, addr := startPostgresPool(t)
	pgConnect := func(t *testing.T, e *sdkEnv, pool string) *pgx.Conn { return pgConnectVia(t, e, f, pool) }
	setup := pgConnect(t, e, "pg")
	pgExec(t, setup, "CREATE TABLE IF NOT EXISTS jobs (id int)")
	if err := setup.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		leave  func(t *testing.T, a *pgx.Conn)
		cutOff bool   // A's socket is closed under pgx (a killed client)
		closed string // the close reason, or "" when B must get A's backend
	}{
		{name: "SET", leave: func(t *testing.T, a *pgx.Conn) { pgExec(t, a, "SET statement_timeout = 1234") }},
		{name: "temp table", leave: func(t *testing.T, a *pgx.Conn) { pgExec(t, a, "CREATE TEMP TABLE scratch (x int)") }},
		{name: "prepared statement", leave: func(t *testing.T, a *pgx.Conn) { pgExec(t, a, "PREPARE mine AS SELECT 1") }},
		{name: "LISTEN", leave: func(t *testing.T, a *pgx.Conn) { pgExec(t, a, "LISTEN news") }},
		{name: "advisory lock", leave: func(t *testing.T, a *pgx.Conn) { pgScalar[string](t, a, "SELECT pg_advisory_lock(42)::text") }},
		{name: "SET LOCAL in an open transaction", cutOff: true, leave: func(t *testing.T, a *pgx.Conn) {
			pgExec(t, a, "BEGIN")
			pgExec(t, a, "SET LOCAL statement_timeout = 999")
			pgExec(t, a, "INSERT INTO jobs VALUES (1)")
		}},
		{name: "failed transaction", cutOff: true, leave: func(t *testing.T, a *pgx.Conn) {
			pgExec(t, a, "BEGIN")
			ctx, cancel := context.WithTimeout(context.Background(), pgWait)
			defer cancel()
			if _, err := a.Exec(ctx, "SELECT 1/0"); err == nil {
				t.Fatal("1/0 succeeded")
			}
		}},
		{name: "cut between Parse and Sync", cutOff: true, leave: func(t *testing.T, a *pgx.Conn) {
			pgRaw(t, a, 'P', []byte("half\x00SELECT 1\x00\x00\x00"))
		}},
		{name: "COPY abandoned", cutOff: true, closed: "not_resettable", leave: func(t *testing.T, a *pgx.Conn) {
			pgRaw(t, a, 'Q', []byte("COPY jobs FROM STDIN\x00"))
			var b [1]byte // wait for CopyInResponse
			_ = a.PgConn().Conn().SetReadDeadline(time.Now().Add(pgWait))
			if _, err := a.PgConn().Conn().Read(b[:]); err != nil || b[0] != 'G' {
				t.Fatalf("COPY: read %q, %v", b[:], err)
			}
		}},
		// The pool cancels the query its client left running and keeps the
		// backend (pg_sleep(30) would otherwise hold it for 30 s).
		{name: "long query abandoned", cutOff: true, leave: func(t *testing.T, a *pgx.Conn) {
			pgRaw(t, a, 'Q', []byte("SELECT pg_sleep(30)\x00"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool := "pg"
			if tc.closed != "" {
				pool = "pg-short"
			}
			for trial := range 30 {
				before := closes(t, e, pool, tc.closed)
				a := pgConnect(t, e, pool)
				pidA := pgScalar[int32](t, a, "SELECT pg_backend_pid()")
				tc.leave(t, a)
				if tc.cutOff {
					_ = a.PgConn().Conn().Close() // no Terminate: the client is gone
				} else if err := a.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				b := pgConnect(t, e, pool)
				var pidB int32
				ctx, cancel := context.WithTimeout(context.Background(), pgWait)
				err := b.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidB)
				cancel()
				if err != nil {
					t.Fatalf("trial %d: B's first query: %v (A was on backend %d; closes %d)\n%s", trial, err, pidA,
						closes(t, e, pool, "any"), pgActivity(t, addr))
				}
				switch {
				case tc.closed == "" && pidB != pidA:
					t.Fatalf("trial %d: B on backend %d, A on %d: the pool lost a backend it could reset (closes %d)", trial, pidB, pidA, closes(t, e, pool, "any"))
				case tc.closed != "" && pidB == pidA:
					t.Fatalf("trial %d: B got A's backend %d; want it closed (%s)", trial, pidA, tc.closed)
				case tc.closed != "":
					if after := closes(t, e, pool, tc.closed); after != before+1 {
						t.Fatalf("trial %d: closes[%s] %d -> %d, want +1", trial, tc.closed, before, after)
					}
				}
				for sql, want := range map[string]string{
					"SHOW statement_timeout":                                          "0",
					"SELECT count(*)::text FROM pg_prepared_statements":               "0",
					"SELECT count(*)::text FROM pg_listening_channels()":              "0",
					"SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'": "0",
					"SELECT coalesce(to_regclass('pg_temp.scratch')::text, 'none')":   "none",
					"SELECT count(*)::text FROM jobs":                                 "0",
					"SELECT current_user || '/' || current_database()":                testkit.PostgresUser + "/" + testkit.PostgresDatabase,
				} {
					if got := pgScalar[string](t, b, sql); got != want {
						t.Fatalf("trial %d: B: %s = %q, want %q: A's session leaked", trial, sql, got, want)
					}
				}
				if st := b.PgConn().TxStatus(); st != 'I' {
					t.Fatalf("trial %d: B starts in transaction status %c", trial, st)
				}
				echo := "b-" + strconv.Itoa(trial)
				if got := pgScalar[string](t, b, "SELECT '"+echo+"'"); got != echo {
					t.Fatalf("trial %d: B read %q", trial, got)
				}
				if err := b.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestPostgresPoolRefusesOtherDatabases: a client asking for another
// database or user than the pool's gets PostgreSQL's own error, and the
// pool's connection stays good for the next client.
func TestPostgresPoolRefusesOtherDatabases(t *testing.T) {
	e, _ := startPostgresPool(t)
	for _, tc := range []struct{ url, code string }{
		{"postgres://" + testkit.PostgresUser + "@127.0.0.1/postgres?sslmode=disable", "3D000"},
		{"postgres://postgres@127.0.0.1/" + testkit.PostgresDatabase + "?sslmode=disable", "28000"},
	} {
		cfg, err := pgx.ParseConfig(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DialFunc = pgconn.DialFunc(e.c.Dialer("pg"))
		ctx, cancel := context.WithTimeout(context.Background(), pgWait)
		_, err = pgx.ConnectConfig(ctx, cfg)
		cancel()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != tc.code {
			t.Fatalf("%s: %v, want SQLSTATE %s", tc.url, err, tc.code)
		}
	}
	c := pgConnect(t, e, "pg")
	if got := pgScalar[string](t, c, "SELECT current_database()"); got != testkit.PostgresDatabase {
		t.Fatalf("current_database() = %q", got)
	}
}

// TestPostgresPoolCancel: a CancelRequest pgx sends through the pool (its
// own lease, on a connection of its own) reaches the backend running the
// query and nothing else: pg_sleep(20) ends with 57014 at once. The cancel
// is repeated until the query ends, as one sent before the query started
// is ignored by the server.
//
// Through the SDK the cancel request is a lease of its own, so the pool
// has two connections; a pool listener answers a CancelRequest before it
// leases anything, so there the pool's one connection, held by the query,
// is enough.
func TestPostgresPoolCancel(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testPostgresPoolCancel(t, f) })
	}
}

func testPostgresPoolCancel(t *testing.T, f front) {
	e, addr := startPostgresPool(t)
	pool := "pg" // one connection
	if f.name == "sdk" {
		pool = "pg2"
		e.createPool(t, pool, poolmgr.Config{
			Endpoints: []string{addr}, Limits: poolmgr.Limits{MaxConnections: 2},
			Protocol: poolmgr.ProtocolPostgres,
			Postgres: poolmgr.PostgresSetup{Database: testkit.PostgresDatabase, User: testkit.PostgresUser, Password: testkit.PostgresPassword},
		})
	}
	c := pgConnectVia(t, e, f, pool)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "SELECT pg_sleep(20)")
		errc <- err
	}()
	waitRunningPG(t, addr, "SELECT pg_sleep(20)")
	start := time.Now() // the query runs: a cancel from now on reaches it
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-errc:
			break wait
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if cerr := c.PgConn().CancelRequest(ctx); cerr != nil {
				t.Errorf("CancelRequest: %v", cerr)
			}
			cancel()
		}
	}
	var pe *pgconn.PgError
	if took := time.Since(start); !errors.As(err, &pe) || pe.Code != "57014" || took > 10*time.Second {
		t.Fatalf("pg_sleep(20) cancelled: %v after %v, want 57014 (query_canceled) at once", err, took)
	}
	// The connection is still good.
	if got := pgScalar[string](t, c, "SELECT 'after'"); got != "after" {
		t.Fatalf("after the cancel: %q", got)
	}
}

// TestPostgresPoolDatabaseSQL: database/sql through pgx's stdlib driver,
// its connections leased from a POSTGRES pool through the SDK: its own
// pool of 4 over the pool's 2 backends, concurrent queries and
// transactions (committed and rolled back), every result its own.
func TestPostgresPoolDatabaseSQL(t *testing.T) {
	e, addr := startPostgresPool(t)
	e.createPool(t, "pg2", poolmgr.Config{
		Endpoints: []string{addr}, Limits: poolmgr.Limits{MaxConnections: 2},
		Protocol: poolmgr.ProtocolPostgres,
		Postgres: poolmgr.PostgresSetup{Database: testkit.PostgresDatabase, User: testkit.PostgresUser, Password: testkit.PostgresPassword},
	})
	cfg, err := pgx.ParseConfig("postgres://" + testkit.PostgresUser + "@127.0.0.1/" + testkit.PostgresDatabase + "?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = pgconn.DialFunc(e.c.Dialer("pg2"))
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(2) // the pool's backends; database/sql's idle conns hold their leases
	ctx := ctxSDK(t)
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS sqljobs (id int, who text)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Error(err)
					return
				}
				who := fmt.Sprintf("w%d-%d", w, i)
				if _, err := tx.ExecContext(ctx, "INSERT INTO sqljobs VALUES ($1, $2)", i, who); err != nil {
					t.Error(err)
					return
				}
				var got string
				if err := tx.QueryRowContext(ctx, "SELECT who FROM sqljobs WHERE who = $1", who).Scan(&got); err != nil || got != who {
					t.Errorf("read back %q, %v; want %q", got, err, who)
				}
				if i%2 == 0 {
					err = tx.Commit()
				} else {
					err = tx.Rollback()
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqljobs").Scan(&n); err != nil || n != 20 {
		t.Fatalf("%d rows, %v; want the 20 committed", n, err)
	}
}

// waitRunningPG waits until a backend runs query, polling
// pg_stat_activity on a connection of its own.
func waitRunningPG(t *testing.T, addr, query string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pgWait)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://"+testkit.PostgresUser+":"+testkit.PostgresPassword+"@"+addr+"/"+testkit.PostgresDatabase+"?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	testkit.WaitWithin(t, pgWait, "the query to run", func() bool {
		var n int
		err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1", query).Scan(&n)
		return err == nil && n > 0
	})
}

// pgActivity describes the server's backends, on a connection of its own,
// for a failure message.
func pgActivity(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://"+testkit.PostgresUser+":"+testkit.PostgresPassword+"@"+addr+"/"+testkit.PostgresDatabase+"?sslmode=disable")
	if err != nil {
		return "pg_stat_activity: " + err.Error()
	}
	defer func() { _ = c.Close(context.Background()) }()
	rows, err := c.Query(ctx, "SELECT pid, coalesce(state, ''), coalesce(wait_event, ''), left(query, 60) FROM pg_stat_activity WHERE backend_type = 'client backend'")
	if err != nil {
		return "pg_stat_activity: " + err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var pid int32
		var state, wait, query string
		if err := rows.Scan(&pid, &state, &wait, &query); err == nil {
			fmt.Fprintf(&b, "backend %d %s %s %q\n", pid, state, wait, query)
		}
	}
	return b.String()
}
