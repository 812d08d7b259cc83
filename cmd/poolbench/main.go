// Command poolbench is poolplane's benchmark and soak harness. It starts an
// echo upstream, a poold and, when installed, HAProxy, all on loopback, and
// measures what a request costs without pooling, over direct connections,
// through HAProxy and through poolplane (docs/benchmarks.md); with --soak it
// runs a long mixed load against poold and reports what poold failed to give
// back (docs/soak.md).
//
// It is a command of its own, apart from the operator CLI poolctl, so that
// its plotting dependencies stay out of poolctl's binary and out of
// poolplane's main module.
//
// Run "poolbench -h" for its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/poolplane/poolplane/internal/flagusage"
)

// poolsPrefix begins every pool's resource name.
const poolsPrefix = "pools/"

// defaultTimeout is the default of --timeout.
const defaultTimeout = 10 * time.Second

// summary is poolbench's one-line description.
const summary = "measure request cost without pooling, direct, through HAProxy and through poolplane, on loopback; " +
	"with --soak, run a long mixed load and report leaks"

func main() {
	if code, ok := childMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errHelp ends a run that printed help: exit status 0.
var errHelp = errors.New("help requested")

// usageError is a command-line mistake: poolbench prints it with a hint and
// exits with status 2.
type usageError struct {
	msg string
}

// Error returns the message, without the "poolbench: " prefix.
func (e *usageError) Error() string { return e.msg }

// usagef returns a *usageError.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// run is poolbench: it parses args (without the program name), runs the
// bench or the soak and returns the exit status: 0 on success, 1 on failure
// (a failed request, a leak), 2 on a usage error. The run stops when ctx
// ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		_, _ = fmt.Fprintf(stderr, "poolbench: %s\nRun 'poolbench -h' for usage.\n", ue.msg)
		return 2
	default:
		_, _ = fmt.Fprintf(stderr, "poolbench: %v\n", err)
		return 1
	}
}

// dispatch parses the flags and runs the bench, or the soak with --soak.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("poolbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	timeout := fs.Duration("timeout", defaultTimeout, "bound on each request beyond a case's end, and on each admin call and acquire")
	output := fs.String("o", "table", "output format: table or json")
	fs.StringVar(output, "output", "table", "output format: table or json")
	bench := addBenchFlags(fs)
	soak := addSoakFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, fs)
			return errHelp
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q; usage: poolbench [flags]", fs.Arg(0))
	}
	if *timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	command := commandLine(fs)
	if soak.enabled() {
		cfg, err := soak.config(*timeout, *output, *bench.poold, *bench.size, command)
		if err != nil {
			return err
		}
		return runSoak(ctx, cfg, stdout, stderr)
	}
	cfg, err := bench.config(*timeout, *output, command)
	if err != nil {
		return err
	}
	return runBench(ctx, cfg, stdout, stderr)
}

// commandLine returns the command line the flags set, for the reports.
func commandLine(fs *flag.FlagSet) string {
	cmdline := []string{"poolbench"}
	fs.Visit(func(f *flag.Flag) {
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		cmdline = append(cmdline, dash+f.Name+"="+f.Value.String())
	})
	return strings.Join(cmdline, " ")
}

// usage prints the synopsis and every flag.
func usage(w io.Writer, fs *flag.FlagSet) {
	_, _ = fmt.Fprintf(w, "Usage: poolbench [flags]\n\n%s.\n\nFlags:\n", strings.ToUpper(summary[:1])+summary[1:])
	fs.VisitAll(func(f *flag.Flag) {
		flagusage.Print(w, f)
	})
	_, _ = fmt.Fprint(w, "\nExit status: 0 success, 1 failure (a failed request, a leak), 2 usage error.\n"+
		"See docs/benchmarks.md and docs/soak.md.\n")
}
