package relay

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestDrainTimer: HalfCloseDrain's timer wakes the reader once, after its
// time, and never once stopped: the stop comes before the connection can
// serve another lease, whose reads the wake-up (a read deadline) would
// otherwise cut. Fake time (synctest).
func TestDrainTimer(t *testing.T) {
	const d = time.Second
	t.Run("fires", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var dt drainTimer
			var wakes atomic.Int32
			dt.start(d, func() { wakes.Add(1) })
			<-time.After(d - time.Millisecond)
			synctest.Wait()
			if wakes.Load() != 0 || dt.fired() {
				t.Fatalf("before its time: %d wake-ups, fired %v", wakes.Load(), dt.fired())
			}
			<-time.After(2 * time.Millisecond)
			synctest.Wait()
			if wakes.Load() != 1 || !dt.fired() {
				t.Fatalf("after its time: %d wake-ups, fired %v; want 1, true", wakes.Load(), dt.fired())
			}
			dt.stop()
		})
	})
	t.Run("stopped", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var dt drainTimer
			var wakes atomic.Int32
			dt.start(d, func() { wakes.Add(1) })
			<-time.After(d / 2)
			dt.stop()
			<-time.After(2 * d)
			synctest.Wait()
			if wakes.Load() != 0 || dt.fired() {
				t.Fatalf("stopped: %d wake-ups, fired %v; want none", wakes.Load(), dt.fired())
			}
		})
	})
	t.Run("started after its stop", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// The reader stopped before HalfCloseDrain armed the timer.
			var dt drainTimer
			var wakes atomic.Int32
			dt.stop()
			dt.start(d, func() { wakes.Add(1) })
			<-time.After(2 * d)
			synctest.Wait()
			if wakes.Load() != 0 || dt.fired() {
				t.Fatalf("armed after its stop: %d wake-ups, fired %v; want none", wakes.Load(), dt.fired())
			}
		})
	})
}
