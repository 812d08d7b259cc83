// Command poold is the poolplane server: it keeps named pools of warm
// upstream connections and serves the poolplane.v1 gRPC API.
//
// Every flag has a POOLPLANE_* environment equivalent (--data-dir is
// POOLPLANE_DATA_DIR); a flag given on the command line wins.
//
// Security (docs/security.md): a non-loopback --listen needs TLS
// (--tls-cert, --tls-key, optionally --tls-client-ca for mTLS) and
// authentication (--auth-file), or --insecure, and an --allow-upstream
// list (or "any"); a non-loopback --metrics-listen needs TLS with client
// certificates, or --insecure. Certificates and the auth file are reloaded
// on SIGHUP and when their files change. "poold hash-token" prints the
// token_sha256 of a token read from standard input. "poold restore" loads a
// backup file into an etcd --store (see restore.go).
//
// With an etcd --store, --etcd-ca-file, --etcd-cert-file and --etcd-key-file
// (mTLS) switch the connection to etcd to TLS, as the etcds:// scheme does
// with the system's roots; --etcd-username authenticates with the password
// in --etcd-password-file.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/awake"
	"github.com/poolplane/poolplane/internal/version"
	"github.com/poolplane/poolplane/poolmgr"
	"github.com/poolplane/poolplane/server"
	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
)

func main() {
	awake.Keep() // does not return, unless GODEBUG sets schedtrace already
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// options are poold's settings.
type options struct {
	listen        string
	dataDir       string
	store         string // "" or bolt: bbolt in dataDir; etcd://host:port[,host:port]/prefix
	replicaID     string // this replica's id in the etcd member set
	etcd          etcdOptions
	metricsListen string
	pprof         bool
	logFormat     string
	logLevel      string
	shutdownGrace time.Duration
	history       int
	insecure      bool
	publicHealth  bool // --public-pool-health
	version       bool // --version: print the version and exit

	tlsCert, tlsKey, tlsClientCA string
	authFile                     string
	allowUpstream                stringList
	allowlist                    *poolmgr.Allowlist // parsed allowUpstream
	secretKeyFile                string
	reloadInterval               time.Duration
	maxRecvMsgSize               int
	maxConcurrentStreams         uint
	maxStatsWatchers             int
	maxProcs                     int // GOMAXPROCS; 0: Go's default
}

// etcdOptions are the security settings of the connection to an etcd
// --store.
type etcdOptions struct {
	caFile, certFile, keyFile string
	username, passwordFile    string
}

// tls reports whether the etcd client must dial over TLS.
func (e etcdOptions) tls(storeURL string) bool {
	return strings.HasPrefix(storeURL, "etcds://") || e.caFile != "" || e.certFile != ""
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usageHeader starts poold's help, above the flags.
const usageHeader = `usage: poold [flags]
       echo -n TOKEN | poold hash-token   (prints the token_sha256 of an --auth-file principal)
       poold restore --store etcd://host:port/prefix [flags] FILE   (loads a backup into etcd; poold restore -h)
       poold completion bash|zsh|fish|powershell   (prints a shell completion script)

Every flag can also be set as POOLPLANE_<FLAG> (for example POOLPLANE_DATA_DIR).

`

// defineFlags registers poold's flags on fs, writing to o.
func defineFlags(fs *pflag.FlagSet, o *options) {
	fs.SortFlags = true
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7700", "gRPC listen address: host:port, or unix:///path for a node-local socket (mode 0660; an existing path is replaced only if it is a stale socket)")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "directory of the bbolt database (poolplane.db)")
	fs.StringVar(&o.store, "store", "bolt", "where pool configuration lives: bolt (poolplane.db in --data-dir, one poold) or etcd://host:port[,host:port]/prefix "+
		"(etcds:// for TLS; shared by every poold replica using the same prefix; each follows changes made through the others)")
	addEtcdFlags(fs, &o.etcd)
	fs.StringVar(&o.replicaID, "replica-id", "", "with an etcd --store: this replica's unique id in the member set that divides fleet-scoped pool limits (default host-pid-random)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:7701", `HTTP address for /metrics, /healthz and /readyz; "off" disables it. `+
		"Beyond loopback it serves HTTPS and needs --tls-cert, --tls-key and --tls-client-ca (scrapers present a client certificate), or --insecure")
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof on the metrics listener (beyond loopback only with --insecure)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug (adds a line per lease stream, stats call and health check), info (admin calls, state changes, circuit events, errors), warn or error")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 30*time.Second, "on SIGTERM/SIGINT, how long leases may finish before connections are closed")
	fs.IntVar(&o.history, "history", store.DefaultHistoryLimit, "configuration revisions kept per pool")
	fs.BoolVar(&o.insecure, "insecure", false, "allow a non-loopback --listen without TLS and authentication, and a non-loopback --metrics-listen without client certificates (and with --pprof)")
	fs.BoolVar(&o.publicHealth, "public-pool-health", false, "with --auth-file: serve every pool's grpc.health.v1 status (pool/<id>) and the List of them without credentials; "+
		`by default only the process status ("") is open`)
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain of the gRPC listener (TLS 1.2 or later); reloaded on SIGHUP or when the file changes")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key of --tls-cert; reloaded with it")
	fs.StringVar(&o.tlsClientCA, "tls-client-ca", "", "PEM CA bundle: verify client certificates (mTLS), whose subject or SAN --auth-file maps to principals")
	fs.StringVar(&o.authFile, "auth-file", "", "YAML file of principals (token hashes, mTLS identities, roles, pool patterns, lease caps); every call but the process health status must authenticate; reloaded on SIGHUP or change, ending the streams of principals removed or no longer allowed")
	fs.Var(&o.allowUpstream, "allow-upstream", "allowed upstreams, repeatable or comma-separated: CIDRs (10.0.0.0/8) and host:port patterns (*.internal:443, redis.local:6379, db.internal:*), "+
		"or \"any\"; pool endpoints are checked when written and every resolved address before it is dialed. Required when --listen is reachable from other hosts; "+
		"on a loopback or unix:// --listen the default is any upstream but link-local and metadata addresses")
	fs.StringVar(&o.secretKeyFile, "secret-key-file", "", "file of 32 random bytes (raw, hex or base64) that encrypt pools' inline client keys and Redis and PostgreSQL passwords at rest (AES-256-GCM); without it all are refused (pools name a tls.client_key_file)")
	fs.DurationVar(&o.reloadInterval, "reload-interval", 5*time.Second, "how often --tls-cert, --tls-key and --auth-file are checked for changes")
	fs.IntVar(&o.maxRecvMsgSize, "max-recv-msg-size", server.DefaultMaxRecvMsgSize, "largest gRPC message accepted, in bytes (at least 1 MiB + 1 KiB: a lease data frame)")
	fs.UintVar(&o.maxConcurrentStreams, "max-concurrent-streams", server.DefaultMaxConcurrentStreams, "most concurrent streams (calls and leases) per client connection")
	fs.IntVar(&o.maxStatsWatchers, "max-stats-watchers", server.DefaultMaxStatsWatchers, "most WatchPoolStats streams served at once")
	fs.IntVar(&o.maxProcs, "max-procs", 0, "most threads running poold's Go code at once (GOMAXPROCS); 0 keeps Go's default, the CPUs poold may use (the machine's, or its container's CPU limit). "+
		"On a node where poold shares a few CPUs with the clients it serves, 1 spends less CPU per lease and answers sooner (docs/benchmarks.md)")
	fs.BoolVar(&o.version, "version", false, "print poold's version and exit")
}

// longDashes rewrites the single-dash long flags Go's flag package takes
// ("-data-dir x", "-listen=:7700") to the double-dash form, so that command
// lines written for earlier versions of poold still work. Arguments after
// "--" are left alone.
func longDashes(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && fs.Lookup(name) != nil {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

// parseFlags reads flags, falling back to POOLPLANE_* environment variables.
// It returns flag.ErrHelp, having printed the help to stderr, for -h.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := pflag.NewFlagSet("poold", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	defineFlags(fs, &o)
	fs.Usage = func() { printUsage(stderr, fs) }
	if err := fs.Parse(longDashes(fs, args)); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return o, flag.ErrHelp
		}
		return o, &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return o, &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return o, checkFlags(fs, &o)
}

// printUsage writes poold's help.
func printUsage(w io.Writer, fs *pflag.FlagSet) {
	_, _ = fmt.Fprint(w, usageHeader)
	_, _ = fmt.Fprint(w, fs.FlagUsagesWrapped(100))
}

// checkFlags applies the environment to the flags the command line did
// not set, and checks the result.
func checkFlags(fs *pflag.FlagSet, o *options) error {
	if o.version {
		// Only the command line asks for it: no POOLPLANE_VERSION, and
		// no other setting matters.
		return nil
	}
	if err := applyPEnv(fs, "version"); err != nil {
		return err
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return &usageError{fmt.Sprintf("--log-format must be text or json, got %q", o.logFormat)}
	}
	if o.shutdownGrace < 0 {
		return &usageError{"--shutdown-grace must not be negative"}
	}
	if o.store != "bolt" {
		if _, _, err := etcdstore.ParseURL(o.store); err != nil {
			return &usageError{fmt.Sprintf("--store: %v", err)}
		}
	}
	if err := checkEtcdFlags(*o); err != nil {
		return err
	}
	if o.history < 1 {
		return &usageError{"--history must be at least 1"}
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return &usageError{"--tls-cert and --tls-key go together"}
	}
	if o.tlsClientCA != "" && o.tlsCert == "" {
		return &usageError{"--tls-client-ca needs --tls-cert and --tls-key"}
	}
	if o.reloadInterval <= 0 {
		return &usageError{"--reload-interval must be positive"}
	}
	if o.maxRecvMsgSize < server.MaxDataFrame+1024 {
		return &usageError{fmt.Sprintf("--max-recv-msg-size must be at least %d (a lease data frame)", server.MaxDataFrame+1024)}
	}
	if o.maxConcurrentStreams < 1 || o.maxConcurrentStreams > 1<<31 {
		return &usageError{"--max-concurrent-streams must be between 1 and 2^31"}
	}
	if o.maxStatsWatchers < 1 {
		return &usageError{"--max-stats-watchers must be at least 1"}
	}
	if o.maxProcs < 0 {
		return &usageError{"--max-procs must not be negative (0: Go's default)"}
	}
	allow, err := poolmgr.NewAllowlist(o.allowUpstream)
	if err != nil {
		return &usageError{"--allow-upstream: " + err.Error()}
	}
	o.allowlist = allow
	return nil
}

// stringFlags is a flag set of Go's flag package or of pflag.
type stringFlags interface {
	StringVar(p *string, name, value, usage string)
}

// addEtcdFlags registers the --etcd-* flags, which secure the connection
// to an etcd --store, on fs.
func addEtcdFlags(fs stringFlags, e *etcdOptions) {
	fs.StringVar(&e.caFile, "etcd-ca-file", "", "with an etcd --store: PEM CA bundle that verifies the etcd members' certificates; dials etcd over TLS (etcds:// alone uses the system's roots)")
	fs.StringVar(&e.certFile, "etcd-cert-file", "", "with an etcd --store: PEM client certificate presented to etcd (mTLS); dials etcd over TLS; re-read at each new connection")
	fs.StringVar(&e.keyFile, "etcd-key-file", "", "PEM private key of --etcd-cert-file")
	fs.StringVar(&e.username, "etcd-username", "", "with an etcd --store: the etcd user poold authenticates as (needs --etcd-password-file)")
	fs.StringVar(&e.passwordFile, "etcd-password-file", "", "file holding the password of --etcd-username (a trailing newline is ignored); a file, so the password is not in argv")
}

// flagSet is what applyEnv needs of a flag set of Go's flag package or of
// pflag.
type flagSet interface {
	Set(name, value string) error
}

// applyEnv sets every flag of fs that the command line did not set from
// its POOLPLANE_<FLAG> environment variable, if any, except the flags named
// in skip.
func applyEnv(fs *flag.FlagSet, skip ...string) error {
	var set, all []string
	fs.Visit(func(f *flag.Flag) { set = append(set, f.Name) })
	fs.VisitAll(func(f *flag.Flag) { all = append(all, f.Name) })
	return applyEnvNames(fs, all, append(set, skip...))
}

// applyPEnv is applyEnv for a pflag flag set.
func applyPEnv(fs *pflag.FlagSet, skip ...string) error {
	var set, all []string
	fs.Visit(func(f *pflag.Flag) { set = append(set, f.Name) })
	fs.VisitAll(func(f *pflag.Flag) { all = append(all, f.Name) })
	return applyEnvNames(fs, all, append(set, skip...))
}

// applyEnvNames sets each flag of names that is not in skip from its
// POOLPLANE_<FLAG> environment variable, if any.
func applyEnvNames(fs flagSet, names, skip []string) error {
	set := map[string]bool{}
	for _, name := range skip {
		set[name] = true
	}
	var envErr error
	for _, name := range names {
		env := "POOLPLANE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[name] {
			if err := fs.Set(name, v); err != nil && envErr == nil {
				envErr = &usageError{fmt.Sprintf("%s=%q: %v", env, v, err)}
			}
		}
	}
	return envErr
}

// checkEtcdFlags checks the --etcd-* flags against each other and
// --store.
func checkEtcdFlags(o options) error {
	e := o.etcd
	if o.store == "bolt" {
		if e != (etcdOptions{}) {
			return &usageError{"--etcd-ca-file, --etcd-cert-file, --etcd-key-file, --etcd-username and --etcd-password-file need an etcd --store"}
		}
		return nil
	}
	if (e.certFile == "") != (e.keyFile == "") {
		return &usageError{"--etcd-cert-file and --etcd-key-file go together"}
	}
	if e.passwordFile != "" && e.username == "" {
		return &usageError{"--etcd-password-file needs --etcd-username"}
	}
	if e.username != "" && e.passwordFile == "" {
		return &usageError{"--etcd-username needs --etcd-password-file"}
	}
	return nil
}

func newLogger(o options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, &usageError{fmt.Sprintf("--log-level: %v", err)}
	}
	ho := &slog.HandlerOptions{Level: level, ReplaceAttr: readableDurations}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return slog.New(slog.NewTextHandler(w, ho)), nil
}

// readableDurations writes a time.Duration attribute as Go writes a
// duration ("1.5s"), as the text handler does, not as the integer count of
// nanoseconds of slog's JSON handler.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// started is told the bound addresses once poold serves (for tests).
type started func(grpcAddr, metricsAddr string)

// run is poold: it returns the exit status. It serves until ctx ends, then
// shuts down gracefully.
func run(ctx context.Context, args []string, stderr io.Writer, onStart started) int {
	code := 0
	root := newRoot(ctx, stderr, onStart, &code)
	fs := root.Flags()
	root.SetArgs(longDashes(fs, args))
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", strings.TrimRight(err.Error(), "\n"))
		return 2
	}
	return code
}

// newRoot builds poold's command tree: serving (the root), hash-token,
// restore and completion. The exit status of what ran goes to *code; an
// error returned by Execute is a usage error.
func newRoot(ctx context.Context, stderr io.Writer, onStart started, code *int) *cobra.Command {
	var o options
	root := &cobra.Command{
		Use:           "poold",
		Short:         "the poolplane server",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				msg := fmt.Sprintf("unexpected argument %q", args[0])
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					msg += fmt.Sprintf("; did you mean %q?", s[0])
				}
				return &usageError{msg}
			}
			if err := checkFlags(cmd.Flags(), &o); err != nil {
				return err
			}
			*code = serveCmd(cmd.Context(), o, stderr, onStart)
			return nil
		},
	}
	root.SetOut(os.Stdout) // completion scripts
	root.SetErr(stderr)
	root.SetContext(ctx)
	defineFlags(root.Flags(), &o)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	root.SetHelpFunc(func(c *cobra.Command, _ []string) {
		if c == root {
			printUsage(stderr, root.Flags())
			return
		}
		_, _ = fmt.Fprintf(stderr, "usage: %s\n\n%s.\n", c.UseLine(), c.Short)
		if c.HasAvailableSubCommands() {
			_, _ = fmt.Fprint(stderr, "\ncommands:\n")
			for _, s := range c.Commands() {
				if s.IsAvailableCommand() {
					_, _ = fmt.Fprintf(stderr, "  %-12s %s\n", s.Name(), s.Short)
				}
			}
		}
		if fs := c.LocalFlags(); fs.HasAvailableFlags() {
			_, _ = fmt.Fprintf(stderr, "\nflags:\n%s", fs.FlagUsages())
		}
	})
	root.SetHelpCommand(&cobra.Command{Hidden: true, Use: "no-help"})
	root.AddCommand(&cobra.Command{
		Use:                "hash-token",
		Short:              "print the token_sha256 of a token read from standard input",
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			if err := hashToken(os.Stdin, os.Stdout); err != nil {
				fmt.Fprintf(stderr, "poold: %v\n", err)
				*code = 1
			}
			return nil
		},
	}, &cobra.Command{
		Use:                "restore",
		Short:              "load a backup into an etcd --store (poold restore -h)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			*code = restoreCmd(cmd.Context(), args, os.Stdout, stderr)
			return nil
		},
	})
	return root
}

// serveCmd runs poold with settled options and returns its exit status.
func serveCmd(ctx context.Context, o options, stderr io.Writer, onStart started) int {
	if o.version {
		fmt.Fprintf(os.Stdout, "poold %s\n", version.String())
		return 0
	}
	logger, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return 2
	}
	if err := checkExposure(&o); err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return 2
	}
	if err := serve(ctx, o, logger, onStart); err != nil {
		logger.Error("poold stopped", "err", err)
		return 1
	}
	return 0
}

// rpcStreamMetrics is the RPC metrics interceptor for every stream but
// LeaseService/Lease: go-grpc-middleware counts each message with a labelled
// counter lookup, which cost about 7% of poold's CPU on the relay's hot
// path. Leases are measured by the pool metrics instead (acquires, bytes,
// hold time).
func rpcStreamMetrics(m *grpcprom.ServerMetrics) grpc.StreamServerInterceptor {
	notLease := func(_ context.Context, c interceptors.CallMeta) bool {
		return c.FullMethod() != poolv1.LeaseService_Lease_FullMethodName
	}
	return selector.StreamServerInterceptor(m.StreamServerInterceptor(), selector.MatchFunc(notLease))
}

// storeLoadTimeout bounds the first read of the configuration at start: an
// unreachable etcd fails the start instead of hanging it.
const storeLoadTimeout = 30 * time.Second

// endLeasesWait bounds how long, after the shutdown grace period, poold
// waits for the streams whose leases it ended to finish before it cuts
// them.
const endLeasesWait = time.Second

// closingStore is the Manager's store plus Close.
type closingStore interface {
	poolmgr.Store
	Close() error
}

// openStore opens the store --store names, and says where it is. An etcd
// store must answer within storeLoadTimeout.
func openStore(ctx context.Context, o options, warn func(string)) (closingStore, string, error) {
	if o.store != "bolt" {
		endpoints, prefix, err := etcdstore.ParseURL(o.store)
		if err != nil {
			return nil, "", err
		}
		cfg := etcdstore.Config{Endpoints: endpoints, Prefix: prefix, HistoryLimit: o.history}
		if err := etcdSecurity(o, &cfg, warn); err != nil {
			return nil, "", err
		}
		st, err := etcdstore.New(cfg)
		if err != nil {
			return nil, "", fmt.Errorf("open store: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, storeLoadTimeout)
		err = st.Ping(pctx)
		if err == nil {
			// A partial configuration is not one to serve.
			if err = st.CheckRestore(pctx); errors.Is(err, etcdstore.ErrRestoreUnfinished) {
				err = fmt.Errorf("%w; finish it with poold restore --replace", err)
			}
		}
		cancel()
		if err != nil {
			_ = st.Close()
			return nil, "", fmt.Errorf("open store %s: %w", o.store, err)
		}
		return st, o.store, nil
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("data dir: %w", err)
	}
	dbPath := filepath.Join(o.dataDir, "poolplane.db")
	st, err := store.Open(dbPath, store.Options{HistoryLimit: o.history, Timeout: 250 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		return nil, "", fmt.Errorf("%s is in use by another poold (one poold per data directory): %w", dbPath, err)
	}
	if err != nil {
		return nil, "", fmt.Errorf("open store: %w", err)
	}
	return st, dbPath, nil
}

// etcdSecurity sets cfg's TLS and credentials from the --etcd-* flags:
// TLS 1.2 or later when etcds:// or a CA or client certificate is given,
// verified with --etcd-ca-file (else the system's roots), presenting
// --etcd-cert-file; the password read from --etcd-password-file.
func etcdSecurity(o options, cfg *etcdstore.Config, warn func(string)) error {
	e := o.etcd
	if e.tls(o.store) {
		tcfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if e.caFile != "" {
			b, err := os.ReadFile(e.caFile)
			if err != nil {
				return fmt.Errorf("--etcd-ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b) {
				return fmt.Errorf("--etcd-ca-file %s: no PEM certificates", e.caFile)
			}
			tcfg.RootCAs = pool
		}
		if e.certFile != "" {
			get, err := clientCertLoader(e.certFile, e.keyFile)
			if err != nil {
				return err
			}
			tcfg.GetClientCertificate = get
		}
		cfg.TLS = tcfg
	}
	if e.username == "" {
		return nil
	}
	fi, err := os.Stat(e.passwordFile)
	if err != nil {
		return fmt.Errorf("--etcd-password-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		warn(fmt.Sprintf("--etcd-password-file %s is readable by group or others (mode %v); chmod 600 it", e.passwordFile, fi.Mode().Perm()))
	}
	b, err := os.ReadFile(e.passwordFile)
	if err != nil {
		return fmt.Errorf("--etcd-password-file: %w", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return fmt.Errorf("--etcd-password-file %s is empty", e.passwordFile)
	}
	if cfg.TLS == nil {
		warn("--etcd-username without TLS to etcd: the password crosses the network in clear; give --etcd-ca-file or use etcds://")
	}
	cfg.Username, cfg.Password = e.username, pw
	return nil
}

// clientCertLoader checks that certFile and keyFile load, and returns a
// tls.Config.GetClientCertificate that loads them again for every new
// connection to etcd (rare: the client keeps its connections), so a
// rotated certificate is used from the next reconnect on. If the files
// stop loading, it keeps presenting the last certificate that did.
func clientCertLoader(certFile, keyFile string) (func(*tls.CertificateRequestInfo) (*tls.Certificate, error), error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--etcd-cert-file/--etcd-key-file: %w", err)
	}
	var last atomic.Pointer[tls.Certificate]
	last.Store(&c)
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
			last.Store(&c)
		}
		return last.Load(), nil
	}, nil
}

// defaultReplicaID is host-pid-random: unique per process.
func defaultReplicaID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "poold"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return fmt.Sprintf("%s-%d-%x", strings.ReplaceAll(host, "/", "_"), os.Getpid(), b)
}
