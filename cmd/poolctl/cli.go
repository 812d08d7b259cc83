package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// Defaults of the global flags.
const (
	defaultServer  = "127.0.0.1:7700"
	defaultTimeout = 10 * time.Second
)

// outputFormats are the values of -o.
var outputFormats = []string{"table", "wide", "name", "json", "yaml"}

// globals are the flags every command takes.
type globals struct {
	server      string
	token       string
	tokenFile   string
	tls         bool
	caFile      string
	certFile    string
	keyFile     string
	serverName  string
	timeout     time.Duration
	output      string
	context     string
	fromEnv     map[string]bool // flag names set from POOLPLANE_* variables
	contextName string          // the context in use, "" for none
	resolved    bool            // the config file was applied
	// changed reports whether a global flag was given on the command line.
	changed func(name string) bool
}

// env is one run of poolctl: its streams, flags and lazily dialed
// connection.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	g              globals
	// ran is set once a command's body starts: an error before it is a
	// usage error (exit status 2).
	ran bool

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
	// long is the command's help text below the summary, if any.
	long string
	// completePools: the positional arguments are pools, completed from
	// the server.
	completePools bool
	// flags registers the command's own flags and returns its body.
	flags func(fs *pflag.FlagSet) func(ctx context.Context, e *env, args []string) error
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
		configCommand(),
		versionCommand(),
	}
}

// envFlags maps each global flag to its environment variable.
var envFlags = map[string]string{
	"server":      "POOLPLANE_SERVER",
	"token":       "POOLPLANE_TOKEN",
	"token-file":  "POOLPLANE_TOKEN_FILE",
	"tls":         "POOLPLANE_TLS",
	"ca-file":     "POOLPLANE_CA_FILE",
	"cert-file":   "POOLPLANE_CERT_FILE",
	"key-file":    "POOLPLANE_KEY_FILE",
	"server-name": "POOLPLANE_SERVER_NAME",
	"timeout":     "POOLPLANE_TIMEOUT",
	"context":     "POOLCTL_CONTEXT",
}

// envDefaults fills g from the environment and the built-in defaults.
func (g *globals) envDefaults() error {
	g.fromEnv = map[string]bool{}
	str := func(flag, def string) string {
		if v, ok := os.LookupEnv(envFlags[flag]); ok && v != "" {
			g.fromEnv[flag] = true
			return v
		}
		return def
	}
	g.server = str("server", defaultServer)
	g.token = str("token", "")
	g.tokenFile = str("token-file", "")
	g.caFile = str("ca-file", "")
	g.certFile = str("cert-file", "")
	g.keyFile = str("key-file", "")
	g.serverName = str("server-name", "")
	g.context = str("context", "")
	g.output = "table"
	g.timeout = defaultTimeout
	if v := str("tls", ""); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return usagef("POOLPLANE_TLS=%q: want true or false", v)
		}
		g.tls = b
	}
	if v := str("timeout", ""); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return usagef("POOLPLANE_TIMEOUT=%q: %v", v, err)
		}
		g.timeout = d
	}
	return nil
}

// addGlobalFlags registers the global flags on fs, defaulting to their
// current values (the environment's).
func (g *globals) addGlobalFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&g.server, "server", "s", g.server, "poold `ADDR`: host:port, unix:///path, a comma-separated replica list or dns:///name:port (env POOLPLANE_SERVER)")
	fs.StringVar(&g.token, "token", g.token, "bearer `TOKEN` (env POOLPLANE_TOKEN); prefer --token-file")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, "`FILE` holding the bearer token (env POOLPLANE_TOKEN_FILE)")
	fs.BoolVar(&g.tls, "tls", g.tls, "connect with TLS (env POOLPLANE_TLS)")
	fs.StringVar(&g.caFile, "ca-file", g.caFile, "PEM CA bundle to verify poold; implies --tls (env POOLPLANE_CA_FILE)")
	fs.StringVar(&g.certFile, "cert-file", g.certFile, "PEM client certificate for mTLS; implies --tls (env POOLPLANE_CERT_FILE)")
	fs.StringVar(&g.keyFile, "key-file", g.keyFile, "PEM client key for mTLS (env POOLPLANE_KEY_FILE)")
	fs.StringVar(&g.serverName, "server-name", g.serverName, "`NAME` to verify in poold's certificate (env POOLPLANE_SERVER_NAME)")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on each request (env POOLPLANE_TIMEOUT)")
	fs.StringVarP(&g.output, "output", "o", g.output, "output `FORMAT`: table, wide, name, json or yaml")
	fs.StringVar(&g.context, "context", g.context, "the config file's context `NAME` to use (env POOLCTL_CONTEXT)")
}

// newRoot builds the command tree of one run.
func (e *env) newRoot(ctx context.Context) *cobra.Command {
	root := &cobra.Command{
		Use:           "poolctl",
		Short:         "poolctl manages poolplane pools on a poold server",
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(*cobra.Command, []string) error {
			e.usage(e.stderr)
			return &usageError{msg: "missing command"}
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return e.resolveGlobals(cmd)
		},
	}
	root.SetArgs(nil)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetContext(ctx)
	e.g.addGlobalFlags(root.PersistentFlags())
	e.g.changed = func(name string) bool {
		f := root.PersistentFlags().Lookup(name)
		return f != nil && f.Changed
	}
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("context", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		cfg, _, err := loadConfig()
		if err != nil || cfg == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		for _, c := range cfg.Contexts {
			names = append(names, c.Name)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if c == root {
			return usagef("%v", err)
		}
		return usagef("%s: %v", c.Name(), err)
	})
	root.SetHelpFunc(func(c *cobra.Command, _ []string) { e.commandHelp(c) })
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [COMMAND]",
		Short: "print the command reference, or a command's flags",
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				e.usage(e.stdout)
				return nil
			}
			sub, _, err := root.Find(args)
			if err != nil || sub == root {
				return usagef("help: unknown command %q", args[0])
			}
			e.commandHelp(sub)
			return nil
		},
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			var names []string
			for _, c := range root.Commands() {
				if c.IsAvailableCommand() {
					names = append(names, c.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	})
	root.CompletionOptions.HiddenDefaultCmd = false
	for _, c := range commands() {
		root.AddCommand(e.cobraCommand(c))
	}
	return root
}

// cobraCommand turns a command into its cobra form.
func (e *env) cobraCommand(c *command) *cobra.Command {
	use := c.name
	if c.args != "" {
		use += " " + c.args
	}
	cc := &cobra.Command{
		Use:   use,
		Short: c.summary,
		Long:  c.long,
		Args: func(_ *cobra.Command, pos []string) error {
			switch {
			case len(pos) < c.minArgs:
				return usagef("%s: missing argument; usage: poolctl %s %s", c.name, c.name, c.args)
			case c.maxArgs >= 0 && len(pos) > c.maxArgs:
				return usagef("%s: unexpected argument %q; usage: poolctl %s %s", c.name, pos[c.maxArgs], c.name, c.args)
			}
			return nil
		},
	}
	body := c.flags(cc.Flags())
	cc.RunE = func(cmd *cobra.Command, pos []string) error {
		e.ran = true
		err := body(cmd.Context(), e, pos)
		return asUnreachable(err, e.g.server, e.cc != nil && e.cc.GetState() == connectivity.Ready)
	}
	if c.completePools {
		cc.ValidArgsFunction = func(_ *cobra.Command, pos []string, _ string) ([]string, cobra.ShellCompDirective) {
			if c.maxArgs >= 0 && len(pos) >= c.maxArgs {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return e.poolIDs(), cobra.ShellCompDirectiveNoFileComp
		}
	}
	return cc
}

// poolIDs lists the server's pool IDs for shell completion; nothing when
// the server cannot be asked.
func (e *env) poolIDs() []string {
	if err := e.applyConfig(); err != nil {
		return nil
	}
	if err := e.connect(); err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(e.g.timeout, 2*time.Second))
	defer cancel()
	resp, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{PageSize: 1000})
	if err != nil {
		return nil
	}
	ids := make([]string, 0, len(resp.GetPools()))
	for _, p := range resp.GetPools() {
		ids = append(ids, strings.TrimPrefix(p.GetName(), poolsPrefix))
	}
	return ids
}

// resolveGlobals applies the config file's context to the global flags
// not set on the command line or in the environment, and checks them.
func (e *env) resolveGlobals(cmd *cobra.Command) error {
	// Commands that never call poold work with a broken config file (and
	// config use-context repairs one).
	local := false
	for c := cmd; c != nil; c = c.Parent() {
		switch c.Name() {
		case "config", "help", "version", "completion":
			local = true
		}
	}
	if !local {
		if err := e.applyConfig(); err != nil {
			return err
		}
	}
	if !slices.Contains(outputFormats, e.g.output) {
		if cmd.Name() == "backup" {
			return usagef("backup: -o is the output format; write the snapshot with --file FILE (-f FILE)")
		}
		return usagef("-o %q: want table, wide, name, json or yaml", e.g.output)
	}
	if e.g.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	return nil
}

// dispatch parses the flags and runs the command.
func (e *env) dispatch(ctx context.Context, args []string) error {
	if err := e.g.envDefaults(); err != nil {
		return err
	}
	root := e.newRoot(ctx)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil || e.ran {
		return err
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return err
	}
	// cobra's own errors (an unknown command, with suggestions) come
	// before any command runs.
	return &usageError{msg: strings.TrimRight(err.Error(), "\n")}
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
	_, _ = fmt.Fprintf(tw, "  %s\t%s\n", "completion bash|zsh|fish|powershell", "print a shell completion script (poolctl completion bash -h)")
	_, _ = fmt.Fprintf(tw, "  %s\t%s\n", "help [COMMAND]", "print this reference, or a command's flags")
	_ = tw.Flush()
	_, _ = fmt.Fprint(w, `
Global flags (also accepted after the command):
  -s, --server ADDR         poold address: host:port, unix:///path, a comma-separated replica
                            list or dns:///name:port (env POOLPLANE_SERVER; default 127.0.0.1:7700)
      --token TOKEN         bearer token, sent as "authorization: Bearer TOKEN" (env POOLPLANE_TOKEN)
      --token-file FILE     file holding the bearer token (env POOLPLANE_TOKEN_FILE)
      --tls                 connect with TLS (env POOLPLANE_TLS)
      --ca-file FILE        PEM CA bundle to verify poold; implies --tls (env POOLPLANE_CA_FILE)
      --cert-file FILE      PEM client certificate for mTLS; implies --tls (env POOLPLANE_CERT_FILE)
      --key-file FILE       PEM key of --cert-file (env POOLPLANE_KEY_FILE)
      --server-name NAME    name to verify in poold's certificate (env POOLPLANE_SERVER_NAME)
      --timeout DURATION    bound on each request (env POOLPLANE_TIMEOUT; default 10s)
  -o, --output FORMAT       table (default), wide, name, json or yaml
      --context NAME        a context of the config file (env POOLCTL_CONTEXT; default its current_context)

Config file: $POOLCTL_CONFIG, else poolctl/config.yaml in the user's config directory
(~/.config/poolctl/config.yaml); its contexts name a server, token_file and TLS settings,
used for every flag not given on the command line or in the environment.

POOL is a pool ID ("api") or name ("pools/api").
Exit status: 0 success, 1 failure, 2 usage error.
Run 'poolctl help <command>' for a command's flags.
`)
}

// commandHelp prints one command's synopsis and flags.
func (e *env) commandHelp(c *cobra.Command) {
	w := c.OutOrStdout()
	if c == c.Root() {
		e.usage(w)
		return
	}
	use := strings.TrimPrefix(c.Use, c.Name())
	_, _ = fmt.Fprintf(w, "Usage: %s%s\n\n%s.\n", c.CommandPath(), use, capitalize(strings.TrimSuffix(c.Short, ".")))
	if c.Long != "" && !strings.HasPrefix(c.Long, c.Short) {
		_, _ = fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Long))
	}
	if subs := c.Commands(); len(subs) > 0 {
		_, _ = fmt.Fprint(w, "\nCommands:\n")
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, s := range subs {
			if s.IsAvailableCommand() {
				_, _ = fmt.Fprintf(tw, "  %s\t%s\n", s.Name(), s.Short)
			}
		}
		_ = tw.Flush()
	}
	fs := pflag.NewFlagSet(c.Name(), pflag.ContinueOnError)
	c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			fs.AddFlag(f)
		}
	})
	if fs.HasAvailableFlags() {
		_, _ = fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
	}
	_, _ = fmt.Fprint(w, "\nGlobal flags: see 'poolctl help'.\n")
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

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
