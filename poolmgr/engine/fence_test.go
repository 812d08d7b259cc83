package engine

import (
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
)

// Fence decisions are ordered: a pool applies only decisions newer than
// the last one it applied.
func TestPoolFenceOrder(t *testing.T) {
	n := newFakeNet(t, true)
	p := newTestPool(t, n, testConfig(func(c *Config) { c.Limits.MinIdle = 1 }))
	testkit.WaitFor(t, "prewarmed", func() bool { return p.Stats().Idle == 1 })
	p.SetFence(Fence{Fenced: true, Seq: 2})
	p.SetFence(Fence{Fenced: false, Seq: 1}) // stale
	if s := p.Stats(); !s.Fenced || s.Max != 0 || s.Total != 0 {
		t.Fatalf("after a stale un-fence: %+v", s)
	}
	p.SetFence(Fence{Fenced: false, Seq: 3})
	testkit.WaitFor(t, "unfenced and refilled", func() bool { s := p.Stats(); return !s.Fenced && s.Max == 2 && s.Idle == 1 })
}
