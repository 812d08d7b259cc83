package server_test

import (
	"net"
	"testing"
	"time"

	"github.com/poolplane/poolplane/poolmgr"
)

// A front is how a test client reaches a pool: a lease through the SDK,
// or a connection to the pool's own listener (pool listeners: every pool
// the isolation matrices create listens on 127.0.0.1:0). The matrices run
// through both: what the pool guarantees does not depend on the front.
type front struct {
	name string
	// dial returns a connection that is a lease of pool; closing it ends
	// the lease.
	dial func(t *testing.T, e *sdkEnv, pool string) net.Conn
}

var fronts = []front{
	{name: "sdk", dial: func(t *testing.T, e *sdkEnv, pool string) net.Conn {
		t.Helper()
		conn, err := e.c.Lease(ctxSDK(t), pool)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}},
	{name: "listener", dial: func(t *testing.T, e *sdkEnv, pool string) net.Conn {
		t.Helper()
		nc, err := net.DialTimeout("tcp", e.listenerAddr(t, pool), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return nc
	}},
}

// localListener is the listener the matrices' pools are created with.
var localListener = []poolmgr.Listener{{Address: "127.0.0.1:0"}}

// listenerAddr returns the address pool's first listener is bound to.
func (e *sdkEnv) listenerAddr(t *testing.T, pool string) string {
	t.Helper()
	st := e.mgr.ListenerStatus(pool)
	if len(st) == 0 || st[0].Bound == "" {
		t.Fatalf("pool %s has no open listener: %+v", pool, st)
	}
	return st[0].Bound
}
