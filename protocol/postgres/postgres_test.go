package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/protocol"
)

// server starts a PostgreSQL server for one test.
func server(t *testing.T) string {
	t.Helper()
	return testkit.Postgres(t)
}

func newHandler(o Options) *Handler {
	if o.User == "" {
		o.User, o.Password, o.Database = testkit.PostgresUser, testkit.PostgresPassword, testkit.PostgresDatabase
	}
	return New(o)
}

// dialSetup dials addr and runs Setup.
func dialSetup(t *testing.T, h *Handler, addr string) (net.Conn, *ConnState, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, st, err := h.Setup(ctx, nc)
	if err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, st.(*ConnState), nil
}

func mustSetup(t *testing.T, h *Handler, addr string) (net.Conn, *ConnState) {
	t.Helper()
	c, st, err := dialSetup(t, h, addr)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return c, st
}

// relay accepts one client and relays it to up through a Session the way
// relay.Lease does: Greet until done, then Request/Reply on each chunk. It
// returns the address to connect to and a channel that yields the Session
// once the client side ended and the upstream reader stopped.
func relay(t *testing.T, h *Handler, up net.Conn, st *ConnState) (string, <-chan *Session) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	out := make(chan *Session, 1)
	go func() {
		cc, err := lis.Accept()
		_ = lis.Close()
		if err != nil {
			close(out)
			return
		}
		defer func() { _ = cc.Close() }()
		s := h.NewSession(st).(*Session)
		var wg sync.WaitGroup
		greeting := true
		buf := make([]byte, 4096)
		for {
			n, err := cc.Read(buf)
			if n > 0 {
				b := buf[:n]
				if greeting {
					reply, took, done, gerr := s.Greet(up, b)
					if len(reply) > 0 {
						_, _ = cc.Write(reply)
					}
					if gerr != nil {
						break
					}
					if !done {
						continue
					}
					greeting = false
					b = b[took:]
					wg.Add(1)
					go func() {
						defer wg.Done()
						rb := make([]byte, 4096)
						for {
							n, err := up.Read(rb)
							if n > 0 {
								s.Reply(rb[:n])
								if _, werr := cc.Write(rb[:n]); werr != nil {
									return
								}
							}
							if err != nil {
								return
							}
						}
					}()
				}
				k := s.Request(b)
				if _, werr := up.Write(b[:k]); werr != nil {
					break
				}
				if k < len(b) {
					break // Terminate: the lease ends
				}
			}
			if err != nil {
				break
			}
		}
		_ = up.SetReadDeadline(time.Now())
		wg.Wait()
		_ = up.SetReadDeadline(time.Time{})
		out <- s
	}()
	return lis.Addr().String(), out
}

func clientConfig(t *testing.T, addr string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig("postgres://" + testkit.PostgresUser + "@" + addr + "/" + testkit.PostgresDatabase + "?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// lease runs f on a pgx client greeted on up, closes the client, and
// returns the session.
func lease(t *testing.T, h *Handler, up net.Conn, st *ConnState, cfg func(*pgx.ConnConfig), f func(*pgx.Conn)) *Session {
	t.Helper()
	addr, done := relay(t, h, up, st)
	cc := clientConfig(t, addr)
	if cfg != nil {
		cfg(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("client connect: %v", err)
	}
	var s *Session
	func() {
		// Even when f fails the test, the client leaves and the relay
		// stops before the next lease uses up.
		defer func() {
			_ = c.Close(ctx)
			s = <-done
		}()
		f(c)
	}()
	return s
}

func reset(t *testing.T, s *Session, up net.Conn) error {
	t.Helper()
	_ = up.SetDeadline(time.Now().Add(5 * time.Second))
	err := s.Reset(up)
	_ = up.SetDeadline(time.Time{})
	return err
}

func queryString(t *testing.T, c *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestSetupAndProbe(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{Params: map[string]string{"application_name": "pool"}})
	up, st := mustSetup(t, h, addr)
	if st.PID == 0 || len(st.Secret) == 0 || st.Params["application_name"] != "pool" {
		t.Fatalf("state: pid %d secret %x params %v", st.PID, st.Secret, st.Params)
	}
	_ = up.SetDeadline(time.Now().Add(5 * time.Second))
	if err := h.Probe(up); err != nil {
		t.Fatalf("Probe: %v", err)
	}

	bad := newHandler(Options{User: testkit.PostgresUser, Password: "wrong", Database: testkit.PostgresDatabase})
	_, _, err := dialSetup(t, bad, addr)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28P01" || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("wrong password: %v", err)
	}
}

func TestGreetAndLeaks(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)

	s := lease(t, h, up, st, nil, func(c *pgx.Conn) {
		var user, db string
		if err := c.QueryRow(context.Background(), "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
			t.Fatal(err)
		}
		if user != testkit.PostgresUser || db != testkit.PostgresDatabase {
			t.Fatalf("got %s %s", user, db)
		}
		if c.PgConn().PID() != st.PID {
			t.Fatalf("pid %d, want the backend's %d", c.PgConn().PID(), st.PID)
		}
	})
	if s.State() != protocol.Idle {
		t.Fatalf("state %v", s.State())
	}
	if err := reset(t, s, up); err != nil {
		t.Fatalf("Reset: %v", err)
	}

	leaks := []struct {
		name  string
		leave func(*pgx.Conn) error
		check string // must return "0" or "off"-like clean value
		want  string
	}{
		{"set", exec("SET statement_timeout = 1234"), "SHOW statement_timeout", "0"},
		{"set local in txn", exec("BEGIN; SET LOCAL statement_timeout = 1234"), "SELECT current_setting('statement_timeout') || ' ' || (txid_current_if_assigned() IS NULL)::text", "0 true"},
		{"temp table", exec("CREATE TEMP TABLE leak_t(x int)"), "SELECT count(*)::text FROM pg_class WHERE relname = 'leak_t'", "0"},
		{"prepared", exec("PREPARE leak_stmt AS SELECT 1"), "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'leak_stmt'", "0"},
		{"listen", exec("LISTEN leak_ch"), "SELECT count(*)::text FROM pg_listening_channels()", "0"},
		{"advisory lock", exec("SELECT pg_advisory_lock(42)"), "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", "0"},
		{"open transaction", exec("BEGIN; CREATE TEMP TABLE leak_tx(x int)"), "SELECT count(*)::text FROM pg_class WHERE relname = 'leak_tx'", "0"},
		{"failed transaction", func(c *pgx.Conn) error {
			_, _ = c.Exec(context.Background(), "BEGIN")
			_, err := c.Exec(context.Background(), "SELECT 1/0")
			if err == nil {
				return errors.New("no error")
			}
			return nil
		}, "SELECT 'ok'", "ok"},
	}
	for _, lk := range leaks {
		t.Run(lk.name, func(t *testing.T) {
			for range 3 {
				s := lease(t, h, up, st, nil, func(c *pgx.Conn) {
					if err := lk.leave(c); err != nil {
						t.Fatal(err)
					}
				})
				if s.State() != protocol.Idle {
					t.Fatalf("state %v", s.State())
				}
				if err := reset(t, s, up); err != nil {
					t.Fatalf("Reset: %v", err)
				}
				s = lease(t, h, up, st, nil, func(c *pgx.Conn) {
					if got := queryString(t, c, lk.check); got != lk.want {
						t.Fatalf("%s: %q, want %q", lk.check, got, lk.want)
					}
					if c.PgConn().TxStatus() != 'I' {
						t.Fatalf("transaction status %q", c.PgConn().TxStatus())
					}
				})
				if err := reset(t, s, up); err != nil {
					t.Fatalf("Reset: %v", err)
				}
			}
		})
	}
}

func exec(sql string) func(*pgx.Conn) error {
	return func(c *pgx.Conn) error {
		_, err := c.Exec(context.Background(), sql, pgx.QueryExecModeSimpleProtocol)
		return err
	}
}

func TestCloseOpenTransactions(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{CloseOpenTransactions: true})
	up, st := mustSetup(t, h, addr)
	s := lease(t, h, up, st, nil, func(c *pgx.Conn) {
		if err := exec("BEGIN")(c); err != nil {
			t.Fatal(err)
		}
	})
	if err := reset(t, s, up); err == nil {
		t.Fatal("Reset inside a transaction succeeded with CloseOpenTransactions")
	}
}

func TestStartupRefusedAndParams(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)

	raddr, done := relay(t, h, up, st)
	cfg := clientConfig(t, raddr)
	cfg.Database = "otherdb"
	_, err := pgx.ConnectConfig(context.Background(), cfg)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Fatalf("another database: %v", err)
	}
	if s := testkit.Recv(t, done); s.State() != protocol.Idle || s.used {
		t.Fatalf("refused session: state %v used %v", s.State(), s.used)
	}

	raddr, done = relay(t, h, up, st)
	cfg = clientConfig(t, raddr)
	cfg.User = "someone"
	_, err = pgx.ConnectConfig(context.Background(), cfg)
	if !errors.As(err, &pe) || pe.Code != "28000" {
		t.Fatalf("another user: %v", err)
	}
	testkit.Recv(t, done)

	// No database: the user's name, which is not the pool's database.
	raddr, done = relay(t, h, up, st)
	c, fe := rawClientNoWait(t, raddr, map[string]string{"user": testkit.PostgresUser})
	receiveUntil(t, fe, func(m pgproto3.BackendMessage) bool {
		e, ok := m.(*pgproto3.ErrorResponse)
		if ok && e.Code != "3D000" {
			t.Fatalf("no database: %s %s", e.Code, e.Message)
		}
		return ok
	})
	_ = c.Close()
	testkit.Recv(t, done)

	withParams := func(cc *pgx.ConnConfig) {
		cc.RuntimeParams = map[string]string{"application_name": "it's mine", "search_path": `"$user", public`, "TimeZone": "Asia/Tokyo"}
	}
	s := lease(t, h, up, st, withParams, func(c *pgx.Conn) {
		if got := c.PgConn().ParameterStatus("application_name"); got != "it's mine" {
			t.Errorf("ParameterStatus application_name %q", got)
		}
		if got := c.PgConn().ParameterStatus("TimeZone"); got != "Asia/Tokyo" {
			t.Errorf("ParameterStatus TimeZone %q", got)
		}
		if got := queryString(t, c, "SHOW application_name"); got != "it's mine" {
			t.Errorf("application_name %q", got)
		}
		if got := queryString(t, c, "SHOW search_path"); got != `"$user", public` {
			t.Errorf("search_path %q", got)
		}
	})
	if err := reset(t, s, up); err != nil {
		t.Fatal(err)
	}
	// The reset set the client's startup parameters again: the next client
	// asking for the same ones gets them with no query of its own (its
	// session ran nothing: no reset either).
	s = lease(t, h, up, st, withParams, func(c *pgx.Conn) {
		if got := c.PgConn().ParameterStatus("application_name"); got != "it's mine" {
			t.Errorf("ParameterStatus application_name %q, again", got)
		}
	})
	if s.used {
		t.Fatal("a client asking for the parameters the connection kept ran a query for them")
	}
	if err := reset(t, s, up); err != nil {
		t.Fatal(err)
	}
	// A client asking for protocol 3.2 is told 3.0 and goes on; asking for
	// no parameters, it gets the connection's own (RESET).
	proto32 := func(cc *pgx.ConnConfig) { cc.MaxProtocolVersion = "3.2" }
	s = lease(t, h, up, st, proto32, func(c *pgx.Conn) {
		if got := queryString(t, c, "SHOW application_name"); got != "" {
			t.Errorf("application_name after reset %q", got)
		}
		if got := c.PgConn().ParameterStatus("TimeZone"); got == "Asia/Tokyo" {
			t.Errorf("ParameterStatus TimeZone %q: the last client's", got)
		}
		if got := queryString(t, c, "SHOW search_path"); got != `"$user", public` {
			t.Errorf("search_path %q", got)
		}
	})
	if err := reset(t, s, up); err != nil {
		t.Fatal(err)
	}
}

// rawClient connects to a relay and completes the startup by hand.
func rawClient(t *testing.T, addr string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	c, fe := rawClientNoWait(t, addr, map[string]string{"user": testkit.PostgresUser, "database": testkit.PostgresDatabase})
	receiveUntil(t, fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
	return c, fe
}

// rawClientNoWait connects to a relay and sends a startup with params.
func rawClientNoWait(t *testing.T, addr string, params map[string]string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return c, fe
}

func receiveUntil(t *testing.T, fe *pgproto3.Frontend, stop func(pgproto3.BackendMessage) bool) {
	t.Helper()
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if stop(m) {
			return
		}
	}
}

func TestOutstandingDrained(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)
	for _, extended := range []bool{false, true} {
		raddr, done := relay(t, h, up, st)
		c, fe := rawClient(t, raddr)
		if extended {
			fe.Send(&pgproto3.Parse{Query: "SELECT pg_sleep(0.2)"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
		} else {
			fe.Send(&pgproto3.Query{String: "BEGIN; SELECT pg_sleep(0.2)"})
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		s := testkit.Recv(t, done)
		if s.State() != protocol.Outstanding {
			t.Fatalf("extended %v: state %v", extended, s.State())
		}
		if err := reset(t, s, up); err != nil {
			t.Fatalf("extended %v: Reset: %v", extended, err)
		}
		_ = up.SetDeadline(time.Now().Add(5 * time.Second))
		if err := h.Probe(up); err != nil {
			t.Fatalf("Probe after the drain: %v", err)
		}
	}
}

// leaveRunning relays a client that sends query, waits until the server
// runs it, and leaves without its reply; it returns the lease's Session.
func leaveRunning(t *testing.T, h *Handler, up net.Conn, st *ConnState, addr, query string) *Session {
	t.Helper()
	raddr, done := relay(t, h, up, st)
	c, fe := rawClient(t, raddr)
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, addr, query)
	_ = c.Close()
	return testkit.Recv(t, done)
}

// TestResetCancelsAgain: a query still running at the release that
// outlives the reset's first cancel is cancelled again, so the reset ends
// within its deadline and keeps the backend. Here the query catches the
// first cancel itself; on a loaded server the first one can also reach
// the backend before it has read the query, which ignores it.
func TestResetCancelsAgain(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)
	// The first cancel reaches the running query, which catches it.
	s := leaveRunning(t, h, up, st, addr, `DO $$ BEGIN
  BEGIN PERFORM pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END;
  PERFORM pg_sleep(60);
END $$`)
	if err := reset(t, s, up); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	_ = up.SetDeadline(time.Now().Add(5 * time.Second))
	if err := h.Probe(up); err != nil {
		t.Fatalf("Probe after the reset: %v", err)
	}
}

// TestResetUnconfirmedCancelCloses: a cancel the server does not confirm
// (it never closes the cancel connection) may still reach the backend
// later, during another client's query: the reset fails, and the pool
// closes the connection, even though the query it cancelled ended by
// itself. The query waits for an advisory lock the test holds, and ends
// once the cancel is on its way.
func TestResetUnconfirmedCancelCloses(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	locker, err := pgx.Connect(ctx, "postgres://"+testkit.PostgresUser+":"+testkit.PostgresPassword+"@"+addr+"/"+testkit.PostgresDatabase+"?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = locker.Close(context.Background()) }()
	if _, err := locker.Exec(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	// Cancel requests go to a server that takes them and never answers.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	asked := make(chan struct{}, 1)
	var held sync.WaitGroup
	t.Cleanup(func() { _ = lis.Close(); held.Wait() })
	held.Add(1)
	go func() {
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			select {
			case asked <- struct{}{}:
			default:
			}
		}
	}()
	st.addr = lis.Addr().String()
	s := leaveRunning(t, h, up, st, addr, "SELECT pg_advisory_lock(4242)")
	// The query ends once the reset has sent its first cancel.
	unlocked := make(chan struct{})
	go func() {
		defer close(unlocked)
		select {
		case <-asked:
		case <-ctx.Done():
			return
		}
		_, _ = locker.Exec(ctx, "SELECT pg_advisory_unlock(4242)")
	}()
	_ = up.SetDeadline(time.Now().Add(2 * cancelTimeout))
	err = s.Reset(up)
	<-unlocked // before locker closes
	if !errors.Is(err, errCancelUnconfirmed) {
		t.Fatalf("Reset: %v; want an unconfirmed cancel", err)
	}
}

func TestCopyNotResettable(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)
	raddr, done := relay(t, h, up, st)
	c, fe := rawClient(t, raddr)
	fe.Send(&pgproto3.Query{String: "CREATE TEMP TABLE cp(x int); COPY cp FROM STDIN"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	receiveUntil(t, fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyInResponse); return ok })
	_ = c.Close()
	if s := testkit.Recv(t, done); s.State() != protocol.NotResettable {
		t.Fatalf("state %v", s.State())
	}
}

func TestTerminateWithheld(t *testing.T) {
	s := newHandler(Options{}).NewSession(&ConnState{}).(*Session)
	q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	x, _ := (&pgproto3.Terminate{}).Encode(nil)
	b := append(append([]byte{}, q...), x...)
	if k := s.Request(b); k != len(q) {
		t.Fatalf("Request returned %d, want %d", k, len(q))
	}
	if s.State() != protocol.Outstanding {
		t.Fatalf("state %v", s.State())
	}
	// Terminate's header split across chunks: nothing of it goes.
	s = newHandler(Options{}).NewSession(&ConnState{}).(*Session)
	if k := s.Request(x[:2]); k != 0 {
		t.Fatalf("Request returned %d for a split Terminate", k)
	}
	if s.State() != protocol.Idle {
		t.Fatalf("state %v", s.State())
	}
	// Nothing ran: the reset does no I/O.
	c1, c2 := net.Pipe()
	_ = c1.Close()
	_ = c2.Close()
	if err := s.Reset(c1); err != nil {
		t.Fatalf("Reset of an unused session: %v", err)
	}
}

func TestCancel(t *testing.T) {
	addr := server(t)
	h := newHandler(Options{})
	up, st := mustSetup(t, h, addr)
	up2, st2 := mustSetup(t, h, addr)

	raddr, done := relay(t, h, up, st)
	ctx := context.Background()
	c, err := pgx.ConnectConfig(ctx, clientConfig(t, raddr))
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(10)")
		errc <- err
	}()
	waitRunning(t, addr, "SELECT pg_sleep(10)")
	req, _ := (&pgproto3.CancelRequest{ProcessID: c.PgConn().PID(), SecretKey: c.PgConn().SecretKey()}).Encode(nil)
	s2 := h.NewSession(st2).(*Session)
	start := time.Now()
	if _, _, done, err := s2.Greet(up2, req); err == nil || done {
		t.Fatalf("cancel request: done %v err %v", done, err)
	}
	select {
	case err := <-errc:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Fatalf("query: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("cancelled after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the query was not cancelled")
	}
	_ = c.Close(ctx)
	testkit.Recv(t, done)
	if s2.State() != protocol.Idle || s2.used {
		t.Fatal("the cancel session used its connection")
	}

	// An unknown key is refused without a cancel.
	req, _ = (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	if _, _, _, err := h.NewSession(st2).(protocol.Greeter).Greet(up2, req); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestSSLRequestDeclined(t *testing.T) {
	s := newHandler(Options{}).NewSession(&ConnState{}).(*Session)
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	reply, took, done, err := s.Greet(nil, req[:3])
	if err != nil || done || len(reply) != 0 || took != 3 {
		t.Fatalf("partial: %q %d %v %v", reply, took, done, err)
	}
	reply, _, done, err = s.Greet(nil, req[3:])
	if err != nil || done || string(reply) != "N" {
		t.Fatalf("SSLRequest: %q %v %v", reply, done, err)
	}
}

// TestSSLRequestThenStartup: libpq (sslmode=prefer) sends its SSLRequest,
// waits for "N", then sends its StartupMessage in a later read. The
// SSLRequest is answered once: the startup's reply begins with
// AuthenticationOk, and took counts only the startup's bytes.
func TestSSLRequestThenStartup(t *testing.T) {
	s := newHandler(Options{User: "u", Database: "d"}).NewSession(&ConnState{}).(*Session)
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if reply, took, done, err := s.Greet(nil, req); err != nil || done || string(reply) != "N" || took != len(req) {
		t.Fatalf("SSLRequest: %q %d %v %v", reply, took, done, err)
	}
	sm, _ := (&pgproto3.StartupMessage{ProtocolVersion: protocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}}).Encode(nil)
	query, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	reply, took, done, err := s.Greet(nil, append(sm, query...))
	if err != nil || !done || took != len(sm) || len(reply) == 0 || reply[0] != 'R' {
		t.Fatalf("startup after an SSLRequest: reply %q took %d (want %d) done %v err %v; want AuthenticationOk first",
			reply, took, len(sm), done, err)
	}
}

func TestMessageTracking(t *testing.T) {
	h := newHandler(Options{})
	s := h.NewSession(&ConnState{}).(*Session)
	q, _ := (&pgproto3.Query{String: "BEGIN"}).Encode(nil)
	s.Request(q[:3])
	if s.State() != protocol.NotResettable {
		t.Fatalf("partial request: %v", s.State())
	}
	s.Request(q[3:])
	if s.State() != protocol.Outstanding {
		t.Fatalf("query sent: %v", s.State())
	}
	cc, _ := (&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}).Encode(nil)
	z, _ := (&pgproto3.ReadyForQuery{TxStatus: 'T'}).Encode(nil)
	b := append(cc, z...)
	for i := range b { // one byte at a time
		s.Reply(b[i : i+1])
		if i != len(cc)-1 && i < len(b)-1 && s.State() != protocol.NotResettable {
			t.Fatalf("partial reply at %d: %v", i, s.State())
		}
	}
	if s.State() != protocol.Idle || s.tx != 'T' {
		t.Fatalf("after ReadyForQuery: %v %q", s.State(), s.tx)
	}
	p, _ := (&pgproto3.Parse{Query: "SELECT 1"}).Encode(nil)
	s.Request(p)
	if s.State() != protocol.Outstanding || !s.unsynced {
		t.Fatalf("Parse without Sync: %v", s.State())
	}
	g, _ := (&pgproto3.CopyInResponse{}).Encode(nil)
	s.Reply(g)
	if s.State() != protocol.NotResettable {
		t.Fatalf("COPY: %v", s.State())
	}
	w, _ := (&pgproto3.CopyBothResponse{}).Encode(nil)
	s = h.NewSession(&ConnState{}).(*Session)
	s.Reply(w)
	if s.State() != protocol.NotResettable {
		t.Fatalf("CopyBoth: %v", s.State())
	}
}

func TestQuoteLiteral(t *testing.T) {
	for in, want := range map[string]string{
		"plain":      "'plain'",
		"it's":       "'it''s'",
		`back\slash`: ` E'back\\slash'`,
		`a'\`:        ` E'a''\\'`,
	} {
		if got := quoteLiteral(in); got != want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestRegistryBounded(t *testing.T) {
	h := newHandler(Options{})
	first := &ConnState{PID: 1, Secret: []byte{1}, addr: "a"}
	h.register(first)
	for i := range maxKeys {
		h.NewSession(&ConnState{PID: uint32(i + 2), Secret: []byte{2}, addr: "b"})
		if i == maxKeys/2 {
			h.NewSession(first) // a lease refreshes the key
		}
	}
	if _, _, ok := h.lookup(1, []byte{1}); !ok {
		t.Fatal("a recently leased key was evicted")
	}
	if _, _, ok := h.lookup(2, []byte{2}); ok {
		t.Fatal("the oldest key was kept")
	}
	if h.lru.Len() != maxKeys || len(h.keys) != maxKeys {
		t.Fatalf("%d keys", h.lru.Len())
	}
	h.forget(first)
	if _, _, ok := h.lookup(1, []byte{1}); ok {
		t.Fatal("a forgotten key was kept")
	}
}

func TestTLS(t *testing.T) {
	ca := testkit.NewCA(t)
	srv := ca.Server(t, "127.0.0.1")
	addr := testkit.PostgresTLS(t, srv.CertPEM, srv.KeyPEM)

	for _, o := range []Options{{SSLMode: SSLRequire}, {SSLMode: SSLVerifyFull, CAPEM: string(ca.PEM)}} {
		h := newHandler(o)
		up, st := mustSetup(t, h, addr)
		if _, ok := up.(*tls.Conn); !ok {
			t.Fatalf("%s: Setup returned a %T", o.SSLMode, up)
		}
		s := lease(t, h, up, st, nil, func(c *pgx.Conn) {
			if got := queryString(t, c, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "true" {
				t.Fatalf("%s: ssl %s", o.SSLMode, got)
			}
		})
		if err := reset(t, s, up); err != nil {
			t.Fatalf("%s: Reset: %v", o.SSLMode, err)
		}

		// A cancel goes over TLS too.
		up2, st2 := mustSetup(t, h, addr)
		raddr, done := relay(t, h, up, st)
		ctx := context.Background()
		c, err := pgx.ConnectConfig(ctx, clientConfig(t, raddr))
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, "SELECT pg_sleep(10)")
			errc <- err
		}()
		waitRunning(t, addr, "SELECT pg_sleep(10)")
		req, _ := (&pgproto3.CancelRequest{ProcessID: st.PID, SecretKey: st.Secret}).Encode(nil)
		if _, _, _, err := h.NewSession(st2).(protocol.Greeter).Greet(up2, req); err == nil || strings.Contains(err.Error(), "unknown") {
			t.Fatalf("cancel: %v", err)
		}
		select {
		case err := <-errc:
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57014" {
				t.Fatalf("%s: query: %v", o.SSLMode, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the query was not cancelled", o.SSLMode)
		}
		_ = c.Close(ctx)
		testkit.Recv(t, done)
	}

	other := testkit.NewCA(t)
	h := newHandler(Options{SSLMode: SSLVerifyFull, CAPEM: string(other.PEM)})
	if _, _, err := dialSetup(t, h, addr); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("verify-full with another CA: %v", err)
	}
}

// waitRunning waits until a backend of the test server runs query (a
// cancel sent before it starts would be ignored), polling pg_stat_activity
// on a connection of its own.
func waitRunning(t *testing.T, addr, query string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://"+testkit.PostgresUser+":"+testkit.PostgresPassword+"@"+addr+"/"+testkit.PostgresDatabase+"?sslmode=prefer")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	testkit.WaitFor(t, "the query to run", func() bool {
		var n int
		err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1", query).Scan(&n)
		return err == nil && n > 0
	})
}

// TestVerifyFullByEndpointName: verify-full checks the certificate for the
// endpoint's host name (the engine dials one of its addresses), not the
// address dialed.
func TestVerifyFullByEndpointName(t *testing.T) {
	ca := testkit.NewCA(t)
	srv := ca.Server(t, "pg.test") // no IP in the certificate
	addr := testkit.PostgresTLS(t, srv.CertPEM, srv.KeyPEM)
	h := newHandler(Options{SSLMode: SSLVerifyFull, CAPEM: string(ca.PEM)})
	setup := func(ctx context.Context) error {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, _, err := h.Setup(ctx, nc)
		if err != nil {
			_ = nc.Close()
			return err
		}
		return c.Close()
	}
	if err := setup(protocol.WithEndpointHost(context.Background(), "pg.test")); err != nil {
		t.Fatalf("verify-full for the endpoint's name: %v", err)
	}
	if err := setup(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("verify-full for the bare address: %v, want a certificate error", err)
	}
}
