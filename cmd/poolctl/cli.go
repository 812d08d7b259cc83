package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/flagusage"
)

// errHelp ends a run that printed help: exit status 0.
var errHelp = errors.New("help requested")

// Defaults of the global flags.
const (
	defaultServer  = "127.0.0.1:7700"
	defaultTimeout = 10 * time.Second
)

// globals are the flags every command takes.
type globals struct {
	server     string
	token      string
	tls        bool
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	timeout    time.Duration
	output     string
}

// env is one run of poolctl: its streams, flags and lazily dialed
// connection.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	g              globals

	cc    *grpc.ClientConn // nil until the first RPC
	admin poolv1.PoolAdminServiceClient
	stats poolv1.StatsServiceClient
}

// close closes the gRPC connection, if one was made.
func (e *env) close() {
	if e.cc != nil {
		_ = e.cc.Close()
	}
}

// command is one poolctl subcommand.
type command struct {
	name    string
	args    string // synopsis of the positional arguments
	summary string
	// minArgs and maxArgs bound the positional arguments (maxArgs -1: any).
	minArgs, maxArgs int
	// noOutputFlag: the command defines its own -o (backup).
	noOutputFlag bool
	// flags registers the command's own flags and returns its body.
	flags func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

// commands lists every subcommand in help order.
func commands() []*command {
	return []*command{
		applyCommand(),
		getCommand(),
		listCommand(),
		deleteCommand(),
		lifecycleCommand("drain", "stop new leases and close idle connections; leases finish normally"),
		lifecycleCommand("pause", "make new lease requests wait until resume"),
		lifecycleCommand("resume", "end a pause or a drain"),
		lifecycleCommand("reconnect", "recycle every connection gracefully (generation bump)"),
		historyCommand(),
		rollbackCommand(),
		leasesCommand(),
		revokeCommand(),
		replicasCommand(),
		statsCommand(),
		backupCommand(),
		forwardCommand(),
		versionCommand(),
	}
}

// lookupCommand finds a command by name.
func lookupCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// envDefaults fills g from the environment and the built-in defaults.
func (g *globals) envDefaults() error {
	str := func(key, def string) string {
		if v, ok := os.LookupEnv(key); ok && v != "" {
			return v
		}
		return def
	}
	g.server = str("POOLPLANE_SERVER", defaultServer)
	g.token = str("POOLPLANE_TOKEN", "")
	g.caFile = str("POOLPLANE_CA_FILE", "")
	g.certFile = str("POOLPLANE_CERT_FILE", "")
	g.keyFile = str("POOLPLANE_KEY_FILE", "")
	g.serverName = str("POOLPLANE_SERVER_NAME", "")
	g.output = "table"
	g.timeout = defaultTimeout
	if v := str("POOLPLANE_TLS", ""); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return usagef("POOLPLANE_TLS=%q: want true or false", v)
		}
		g.tls = b
	}
	if v := str("POOLPLANE_TIMEOUT", ""); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return usagef("POOLPLANE_TIMEOUT=%q: %v", v, err)
		}
		g.timeout = d
	}
	return nil
}

// addGlobalFlags registers the global flags on fs, defaulting to their
// current values (so that a subcommand's flag set keeps what the flags
// before the command set).
func (g *globals) addGlobalFlags(fs *flag.FlagSet, withOutput bool) {
	fs.StringVar(&g.server, "server", g.server, "poold address: host:port or unix:///path (env POOLPLANE_SERVER)")
	fs.StringVar(&g.token, "token", g.token, "bearer token (env POOLPLANE_TOKEN)")
	fs.BoolVar(&g.tls, "tls", g.tls, "connect with TLS (env POOLPLANE_TLS)")
	fs.StringVar(&g.caFile, "ca-file", g.caFile, "PEM CA bundle to verify poold; implies --tls (env POOLPLANE_CA_FILE)")
	fs.StringVar(&g.certFile, "cert-file", g.certFile, "PEM client certificate for mTLS; implies --tls (env POOLPLANE_CERT_FILE)")
	fs.StringVar(&g.keyFile, "key-file", g.keyFile, "PEM client key for mTLS (env POOLPLANE_KEY_FILE)")
	fs.StringVar(&g.serverName, "server-name", g.serverName, "name to verify in poold's certificate (env POOLPLANE_SERVER_NAME)")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on each request (env POOLPLANE_TIMEOUT)")
	if withOutput {
		fs.StringVar(&g.output, "o", g.output, "output format: table, json or yaml")
		fs.StringVar(&g.output, "output", g.output, "output format: table, json or yaml")
	}
}

// newFlagSet returns a flag set that reports errors instead of printing
// them.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterspersed parses flags and positional arguments in any order,
// until "--" (after which everything is positional).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// flag stops at the first non-flag or after "--".
		if i := len(args) - len(rest); i > 0 && args[i-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// dispatch parses the global flags, then the command and its flags, and
// runs it.
func (e *env) dispatch(ctx context.Context, args []string) error {
	if err := e.g.envDefaults(); err != nil {
		return err
	}
	root := newFlagSet("poolctl")
	e.g.addGlobalFlags(root, true)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.usage(e.stdout)
			return errHelp
		}
		return usagef("%v", err)
	}
	rest := root.Args()
	if len(rest) == 0 {
		e.usage(e.stderr)
		return &usageError{msg: "missing command"}
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return e.help(rest)
	}
	cmd := lookupCommand(name)
	if cmd == nil {
		return usagef("unknown command %q", name)
	}
	fs := newFlagSet(name)
	e.g.addGlobalFlags(fs, !cmd.noOutputFlag)
	body := cmd.flags(fs)
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.commandUsage(e.stdout, cmd, fs)
			return errHelp
		}
		return usagef("%s: %v", name, err)
	}
	switch {
	case len(pos) < cmd.minArgs:
		return usagef("%s: missing argument; usage: poolctl %s %s", name, name, cmd.args)
	case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
		return usagef("%s: unexpected argument %q; usage: poolctl %s %s", name, pos[cmd.maxArgs], name, cmd.args)
	}
	switch e.g.output {
	case "table", "json", "yaml":
	default:
		return usagef("-o %q: want table, json or yaml", e.g.output)
	}
	if e.g.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	return body(ctx, e, pos)
}

// help prints the reference, or one command's help.
func (e *env) help(args []string) error {
	if len(args) == 0 {
		e.usage(e.stdout)
		return errHelp
	}
	cmd := lookupCommand(args[0])
	if cmd == nil {
		return usagef("help: unknown command %q", args[0])
	}
	fs := newFlagSet(cmd.name)
	cmd.flags(fs)
	e.commandUsage(e.stdout, cmd, fs)
	return errHelp
}

// usage prints the command reference.
func (e *env) usage(w io.Writer) {
	_, _ = fmt.Fprint(w, `poolctl manages poolplane pools on a poold server.

Usage: poolctl [global flags] <command> [flags] [arguments]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, c := range commands() {
		_, _ = fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	_ = tw.Flush()
	_, _ = fmt.Fprint(w, `
Global flags (also accepted after the command):
  --server ADDR        poold address: host:port or unix:///path (env POOLPLANE_SERVER; default 127.0.0.1:7700)
  --token TOKEN        bearer token, sent as "authorization: Bearer TOKEN" (env POOLPLANE_TOKEN)
  --tls                connect with TLS (env POOLPLANE_TLS)
  --ca-file FILE       PEM CA bundle to verify poold; implies --tls (env POOLPLANE_CA_FILE)
  --cert-file FILE     PEM client certificate for mTLS; implies --tls (env POOLPLANE_CERT_FILE)
  --key-file FILE      PEM key of --cert-file (env POOLPLANE_KEY_FILE)
  --server-name NAME   name to verify in poold's certificate (env POOLPLANE_SERVER_NAME)
  --timeout DURATION   bound on each request (env POOLPLANE_TIMEOUT; default 10s)
  -o, --output FORMAT  table (default), json or yaml

POOL is a pool ID ("api") or name ("pools/api").
Exit status: 0 success, 1 failure, 2 usage error.
Run 'poolctl help <command>' for a command's flags.
`)
}

// commandUsage prints one command's synopsis and flags.
func (e *env) commandUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	_, _ = fmt.Fprintf(w, "Usage: poolctl %s %s\n\n%s.\n", cmd.name, cmd.args, capitalize(cmd.summary))
	global := map[string]bool{}
	g := newFlagSet("")
	(&globals{}).addGlobalFlags(g, !cmd.noOutputFlag)
	g.VisitAll(func(f *flag.Flag) { global[f.Name] = true })
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if global[f.Name] {
			return
		}
		if first {
			_, _ = fmt.Fprint(w, "\nFlags:\n")
			first = false
		}
		flagusage.Print(w, f)
	})
	_, _ = fmt.Fprint(w, "\nGlobal flags: see 'poolctl help'.\n")
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// poolName returns the resource name of a pool given by ID or name.
func poolName(arg string) string {
	if strings.HasPrefix(arg, poolsPrefix) {
		return arg
	}
	return poolsPrefix + arg
}

// rpcContext bounds one request by --timeout.
func (e *env) rpcContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.g.timeout)
}

// rpc connects, if no earlier request did, and bounds one request by
// --timeout; the caller defers the returned cancel.
func (e *env) rpc(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := e.connect(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := e.rpcContext(ctx)
	return ctx, cancel, nil
}

// allPages calls fetch with each page token in turn, starting with "",
// until it returns no next token, and gathers the items of every page.
func allPages[T any](fetch func(token string) (items []T, next string, err error)) ([]T, error) {
	var all []T
	token := ""
	for {
		items, next, err := fetch(token)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		token = next
	}
}

// rpcBody wraps the body of a command that makes one request: it connects
// and bounds ctx by --timeout before calling body.
func rpcBody(body func(ctx context.Context, e *env, args []string) error) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		ctx, cancel, err := e.rpc(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		return body(ctx, e, args)
	}
}
