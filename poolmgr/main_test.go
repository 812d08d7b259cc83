package poolmgr

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of the registry leaks a goroutine.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
