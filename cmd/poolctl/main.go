// Command poolctl is the operator and script CLI of poolplane: it applies
// pool configurations declaratively, reads and changes pools, watches their
// statistics and forwards local TCP connections through leased pool
// connections.
//
// Run "poolctl help" for the command reference.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/poolplane/poolplane/internal/awake"
)

// keepAwake runs where a command knows it will relay for long (forward):
// awake.Keep in the real program, which executes poolctl again with the
// runtime's monitor thread kept awake; nil in tests, which run commands in
// the test binary.
var keepAwake func()

func main() {
	keepAwake = awake.Keep
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is poolctl: it parses args (without the program name), runs the
// command and returns the exit status: 0 on success, 1 on failure, 2 on a
// usage error. Long-running commands (stats --watch, forward, --wait) stop
// when ctx ends.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	defer e.close()
	err := e.dispatch(ctx, args)
	if err == nil {
		return 0
	}
	return reportError(stderr, err)
}
