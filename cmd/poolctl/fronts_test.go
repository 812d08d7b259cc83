package main

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// A front is how a program that is not written in Go reaches a pool:
// through poolctl forward (a second process, over gRPC), or on the pool's
// own listener (one hop). The tests of real clients run through both.
type front struct {
	name string
	// open returns the address a client dials for pool; stop checks that
	// the front ended cleanly.
	open func(t testing.TB, ts *testServer, pool string) (addr string, stop func())
}

var fronts = []front{
	{name: "forward", open: func(t testing.TB, ts *testServer, pool string) (string, func()) {
		addr, stop := ts.startForward(t, pool)
		return addr, func() {
			t.Helper()
			if r := stop(); r.code != 0 {
				t.Fatalf("forward: exit %d\n%s", r.code, r.stderr)
			}
		}
	}},
	{name: "listener", open: func(t testing.TB, ts *testServer, pool string) (string, func()) {
		return ts.listen(t, pool), func() {}
	}},
}

// listen serves pool on a listener on 127.0.0.1:0, added with apply to the
// pool as get shows it, and returns the address bound.
func (ts *testServer) listen(t testing.TB, pool string) string {
	t.Helper()
	p := unmarshal(t, ts.ok(t, "", "get", pool, "-o", "json"), &poolv1.Pool{})
	p.Listeners = append(p.Listeners, &poolv1.Listener{Address: "127.0.0.1:0"})
	b, err := protojson.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	ts.ok(t, string(b), "apply", "-f", "-")
	st := unmarshal(t, ts.ok(t, "", "stats", pool, "-o", "json"), &poolv1.PoolStats{})
	ls := st.GetListeners()
	if len(ls) == 0 || ls[len(ls)-1].GetBoundAddress() == "" {
		t.Fatalf("pool %s: listeners %v", pool, ls)
	}
	return ls[len(ls)-1].GetBoundAddress()
}
