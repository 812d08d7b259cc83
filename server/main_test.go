package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaks a goroutine. It is the one TestMain of
// the test binary, shared by package server and package server_test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
