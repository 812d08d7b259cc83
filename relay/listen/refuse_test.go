package listen_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
)

// TestRedisAndPostgresRefusals: a client a REDIS or POSTGRES pool cannot
// serve (its one connection held, the acquire timeout short) is told so
// in its protocol: a RESP error, a FATAL ErrorResponse with SQLSTATE
// 53300 that libpq's own code path (pgconn) reports.
func TestRedisAndPostgresRefusals(t *testing.T) {
	e := newEnv(t)
	// The one connection is dialled (and for PostgreSQL authenticated)
	// before the held client comes, so the short acquire timeout refuses
	// only the second client, however slow the dial.
	limits := poolmgr.Limits{MaxConnections: 1, MinIdle: 1, AcquireTimeout: 50 * time.Millisecond}
	t.Run("redis", func(t *testing.T) {
		a := e.create(t, "cache", poolmgr.Config{Endpoints: []string{testkit.Redis(t)}, Protocol: poolmgr.ProtocolRedis,
			Limits: limits, Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
		e.waitIdle(t, "cache")
		held := dial(t, a)
		if _, err := io.WriteString(held, "PING\r\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "+PONG\r\n" {
			t.Fatalf("held: %q %v", line, err)
		}
		busy := dial(t, a)
		if _, err := io.WriteString(busy, "PING\r\n"); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(busy)
		if err != nil || !bytes.HasPrefix(b, []byte("-ERR poolplane: pool cache: ")) || !bytes.Contains(b, []byte("acquire timeout")) {
			t.Fatalf("busy: %q %v", b, err)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		pg := testkit.Postgres(t)
		a := e.create(t, "db", poolmgr.Config{Endpoints: []string{pg}, Protocol: poolmgr.ProtocolPostgres, Limits: limits,
			Postgres:  poolmgr.PostgresSetup{Database: testkit.PostgresDatabase, User: testkit.PostgresUser, Password: testkit.PostgresPassword},
			Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
		e.waitIdle(t, "db")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		url := "postgres://" + testkit.PostgresUser + "@" + a + "/" + testkit.PostgresDatabase + "?sslmode=prefer"
		held, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatalf("held: %v", err)
		}
		defer held.Close(context.Background())
		_, err = pgconn.Connect(ctx, url)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "acquire timeout") {
			t.Fatalf("busy: %v, want FATAL 53300 (too_many_connections)", err)
		}
		if err := held.Exec(ctx, "SELECT 1").Close(); err != nil {
			t.Fatalf("the held connection after the refusal: %v", err)
		}
	})
}

// waitIdle waits until pool id has an idle connection.
func (e *env) waitIdle(t *testing.T, id string) {
	t.Helper()
	p, err := e.m.Pool(id)
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "an idle connection in pool "+id, func() bool { return p.Stats().Idle == 1 })
}

// TestRevokeEndsListenerConnection: RevokeLease on a listener's lease
// closes the upstream connection and ends the client's connection.
func TestRevokeEndsListenerConnection(t *testing.T) {
	e := newEnv(t)
	a := e.create(t, "p", poolmgr.Config{Endpoints: []string{testkit.EchoServer(t)}, Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0"}}})[0]
	c := dial(t, a)
	exchange(t, c, "before")
	ls, err := e.m.Leases(context.Background(), "p")
	if err != nil || len(ls) != 1 {
		t.Fatalf("leases = %+v, %v", ls, err)
	}
	if err := e.m.RevokeLease(context.Background(), ls[0].ID); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after the revocation: %q, %v", b, err)
	}
	if st := e.m.ListenerStatus("p")[0]; st.Active != 0 {
		testkit.WaitFor(t, "the connection to go", func() bool { return e.m.ListenerStatus("p")[0].Active == 0 })
	}
}

// TestListenerNotOpenedAtLoad: a stored pool whose listener's port is
// taken when the process starts is loaded and served all the same; the
// listener's status says why it is not open (as on a replica whose host
// has the port taken), and the next change retries it.
func TestListenerNotOpenedAtLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pools.db")
	addr := freePort(t)
	echo := testkit.EchoServer(t)
	start := func() (*poolmgr.Manager, *listen.Host, func()) {
		st, err := harness.OpenStore(path)
		if err != nil {
			t.Fatal(err)
		}
		h := harness.Listeners(t, nil)
		m, err := poolmgr.NewManager(poolmgr.ManagerConfig{Store: st, Listeners: h, Logger: discard()})
		if err != nil {
			t.Fatal(err)
		}
		h.SetPools(m)
		if err := m.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		return m, h, func() {
			h.Close()
			_ = m.Close()
			_ = st.Close()
		}
	}
	m, _, stop := start()
	if _, err := m.Create(context.Background(), "p", poolmgr.Config{Endpoints: []string{echo},
		Listeners: []poolmgr.Listener{{Address: addr}}}, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop()

	taken, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m, _, stop = start()
	defer stop()
	st := m.ListenerStatus("p")
	if len(st) != 1 || st[0].Bound != "" || !strings.Contains(st[0].Err, "address already in use") {
		t.Fatalf("status at load with the port taken: %+v", st)
	}
	if _, err := m.Pool("p"); err != nil {
		t.Fatalf("the pool is not served: %v", err)
	}
	// Once the port is free, a change of the pool opens it.
	taken.Close()
	info, err := m.Get(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	spec := info.Spec
	spec.Limits.MaxConnections = 3
	if _, err := m.Update(context.Background(), "p", spec, 0, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := m.ListenerStatus("p"); st[0].Bound != addr || st[0].Err != "" {
		t.Fatalf("status after the change: %+v", st)
	}
	exchange(t, dial(t, addr), "open again")
}
