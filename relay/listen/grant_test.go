package listen_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/servertest/harness"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/relay/listen"
)

// grants is an Authorize that counts the grants it holds out and can
// revoke them: while allowed is false it refuses.
type grants struct {
	mu      sync.Mutex
	allowed bool
	held    int
	revoke  context.CancelFunc
	ctx     context.Context
}

func (g *grants) authorize(cert *x509.Certificate, pool string) (listen.Grant, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.allowed || cert.Subject.CommonName != "alice" || pool != "web" {
		return listen.Grant{}, errors.New("alice may not lease pool web")
	}
	if g.ctx == nil {
		g.ctx, g.revoke = context.WithCancel(context.Background())
	}
	g.held++
	var once sync.Once
	return listen.Grant{Holder: "alice", Revoked: g.ctx, Release: func() {
		once.Do(func() {
			g.mu.Lock()
			g.held--
			g.mu.Unlock()
		})
	}}, nil
}

// revokeAll revokes every grant, allowing the next ones or not.
func (g *grants) revokeAll(allowed bool) {
	g.mu.Lock()
	g.allowed = allowed
	revoke := g.revoke
	g.ctx, g.revoke = nil, nil
	g.mu.Unlock()
	revoke()
}

func (g *grants) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// TestTLSListenerGrant: a TLS listener's client holds its grant while
// connected and gives it back when it leaves; a revoked grant is decided
// again: granted anew, the connection goes on; refused, its lease ends
// and the connection with it.
func TestTLSListenerGrant(t *testing.T) {
	ca := testkit.NewCA(t)
	g := &grants{allowed: true}
	h, err := listen.New(listen.Config{Logger: slog.New(slog.DiscardHandler), TLS: ca.ServerTLS(ca.Server(t, "127.0.0.1"), true), Authorize: g.authorize})
	if err != nil {
		t.Fatal(err)
	}
	m := harness.Manager(t, harness.StoreOptions(), nil, func(mc *poolmgr.ManagerConfig) { mc.Listeners = h })
	harness.ServeListeners(t, h, m)
	if _, err := m.Create(context.Background(), "web", poolmgr.Config{Endpoints: []string{httpUpstream(t)}, Protocol: poolmgr.ProtocolHTTP1,
		Listeners: []poolmgr.Listener{{Address: "127.0.0.1:0", TLS: true}}}, poolmgr.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := m.ListenerStatus("web")[0].Bound
	clientTLS := ca.ClientTLS("127.0.0.1", ca.Client(t, "alice"))
	connect := func() net.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", addr, clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if r := get(t, c); r.StatusCode != 200 {
			t.Fatalf("status %d", r.StatusCode)
		}
		return c
	}
	waitHeld := func(n int) {
		t.Helper()
		testkit.WaitWithin(t, 10*time.Second, "grants held", func() bool { return g.count() == n })
	}

	a := connect()
	waitHeld(1)
	_ = a.Close()
	waitHeld(0) // given back as the connection ends

	// Revoked and granted anew: the connection goes on, on the new grant.
	b := connect()
	waitHeld(1)
	g.revokeAll(true)
	waitHeld(1)
	if r := get(t, b); r.StatusCode != 200 {
		t.Fatalf("after a renewed grant: status %d", r.StatusCode)
	}

	// Revoked and refused: the lease ends, and the connection.
	g.revokeAll(false)
	waitHeld(0)
	if _, err := io.ReadAll(b); err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if !errors.As(err, &ne) || ne.Timeout() {
			t.Fatalf("after the grant was refused: %v, want the connection closed", err)
		}
	}
	testkit.WaitWithin(t, 10*time.Second, "no lease", func() bool {
		ls, err := m.Leases(context.Background(), "web")
		return err == nil && len(ls) == 0
	})
}
