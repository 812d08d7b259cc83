package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/poolplane/poolplane/store"
	"github.com/poolplane/poolplane/store/etcdstore"
)

// poolKeyPrefix is the store key prefix of pools (poolmgr's record keys).
const poolKeyPrefix = "pools/"

// restoreCmd is "poold restore": it loads a backup file into an etcd
// --store prefix and prints what it restored to stdout. It returns the
// exit status: 2 for a bad command line, 1 for a failed restore.
func restoreCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var (
		o       options
		replace bool
		maxOps  int
	)
	fs := flag.NewFlagSet("poold restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.store, "store", "", "the etcd store to restore into: etcd://host:port[,host:port]/prefix (etcds:// for TLS), as poold's --store. Required")
	addEtcdFlags(fs, &o.etcd)
	fs.IntVar(&o.history, "history", store.DefaultHistoryLimit, "configuration revisions kept per pool: older ones in the backup are dropped (use poold's --history)")
	fs.BoolVar(&replace, "replace", false, "restore into a prefix that holds pools or an unfinished restore: delete its history and the pools the backup lacks, overwrite the others")
	fs.IntVar(&maxOps, "max-txn-ops", etcdstore.DefaultMaxTxnOps, "operations per etcd transaction: the etcd cluster's --max-txn-ops")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: poold restore --store etcd://host:port/prefix [flags] FILE\n\n"+
			"Loads FILE, a backup (BackupDatabase, poolctl backup: from an etcd or a bbolt poold), into an empty\n"+
			"etcd prefix: every pool, its history (times, actors, values) and where older history was trimmed.\n"+
			"etcd assigns new revisions: etags and history revisions change, their order does not. Replicas\n"+
			"already following the prefix pick the pools up as they are written. Every flag can also be set\n"+
			"as POOLPLANE_<FLAG>.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "poold restore: %v\n", err)
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "poold restore: %s\n", msg)
		return 2
	}
	if err := applyEnv(fs); err != nil {
		return usage(err.Error())
	}
	if fs.NArg() != 1 {
		return usage("want one backup FILE (see poold restore -h)")
	}
	file := fs.Arg(0)
	if o.store == "" || o.store == "bolt" {
		return usage("--store etcd://host:port/prefix is required: a bbolt poold starts from a backup file as it is (put it at DATA_DIR/poolplane.db)")
	}
	endpoints, prefix, err := etcdstore.ParseURL(o.store)
	if err != nil {
		return usage(fmt.Sprintf("--store: %v", err))
	}
	if err := checkEtcdFlags(o); err != nil {
		return usage(err.Error())
	}
	if o.history < 1 {
		return usage("--history must be at least 1")
	}
	if maxOps < 8 {
		return usage("--max-txn-ops must be at least 8")
	}

	fail := func(err error) int {
		fmt.Fprintf(stderr, "poold restore: %v\n", err)
		return 1
	}
	cfg := etcdstore.Config{Endpoints: endpoints, Prefix: prefix, HistoryLimit: o.history}
	if err := etcdSecurity(o, &cfg, func(msg string) { fmt.Fprintf(stderr, "poold restore: warning: %s\n", msg) }); err != nil {
		return fail(err)
	}
	st, err := etcdstore.New(cfg)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = st.Close() }()
	pctx, cancel := context.WithTimeout(ctx, storeLoadTimeout)
	err = st.Ping(pctx)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("etcd %s: %w", o.store, err))
	}
	res, err := st.RestoreFile(ctx, file, etcdstore.RestoreOptions{Replace: replace, MaxTxnOps: maxOps})
	switch {
	case errors.Is(err, store.ErrLocked):
		return fail(fmt.Errorf("%w (a poold serves %s: restore from a copy, or stop it)", err, file))
	case errors.Is(err, etcdstore.ErrNotEmpty) || errors.Is(err, etcdstore.ErrRestoreUnfinished):
		return fail(fmt.Errorf("%w (poold restore --replace)", err))
	case err != nil:
		return fail(err)
	}
	printRestore(stdout, file, prefix, o.history, res)
	return 0
}

// printRestore says what a restore wrote.
func printRestore(w io.Writer, file, prefix string, history int, res etcdstore.RestoreResult) {
	var pools, other []string
	for _, k := range res.Keys {
		if id, ok := strings.CutPrefix(k, poolKeyPrefix); ok {
			pools = append(pools, id)
		} else {
			other = append(other, k)
		}
	}
	fmt.Fprintf(w, "restored %s (backup revision %d) into etcd prefix %s\n", file, res.BackupRevision, prefix)
	fmt.Fprintf(w, "pools: %d", len(pools))
	if len(pools) > 0 {
		const shown = 20
		fmt.Fprintf(w, " (%s", strings.Join(pools[:min(shown, len(pools))], ", "))
		if len(pools) > shown {
			fmt.Fprintf(w, ", and %d more", len(pools)-shown)
		}
		fmt.Fprint(w, ")")
	}
	fmt.Fprintln(w)
	if len(other) > 0 {
		fmt.Fprintf(w, "other keys: %d\n", len(other))
	}
	fmt.Fprintf(w, "deleted pools with history: %d\n", res.Deleted)
	fmt.Fprintf(w, "history entries: %d\n", res.HistoryEntries)
	if res.Dropped > 0 {
		fmt.Fprintf(w, "history entries dropped (beyond --history %d): %d\n", history, res.Dropped)
	}
	if res.Removed > 0 {
		fmt.Fprintf(w, "pools removed (--replace): %d\n", res.Removed)
	}
	fmt.Fprintf(w, "etcd revision: %d, after %d transactions (revisions and etags are new)\n", res.Revision, res.Txns)
}
