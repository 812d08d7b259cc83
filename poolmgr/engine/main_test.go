package engine

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of the engine leaks a goroutine.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
