package poolmgr

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of the package leaks a goroutine. Owned by the
// engine tests; the Manager's tests share it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
