package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/internal/version"
)

func applyCommand() *command {
	return &command{
		name: "apply", args: "-f FILE [-f FILE...] [--prune] [--dry-run]", maxArgs: 0,
		summary: "make the server's pools match a YAML or JSON file (\"-\" is stdin)",
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			files := fs.StringArrayP("file", "f", nil, "`FILE` to apply, YAML or JSON; \"-\" reads stdin; repeatable")
			prune := fs.Bool("prune", false, "delete every pool not in the files")
			dryRun := fs.Bool("dry-run", false, "print the plan without changing anything (validate_only)")
			return func(ctx context.Context, e *env, _ []string) error {
				if len(*files) == 0 {
					return usagef("apply: -f FILE is required")
				}
				if i := slices.Index(*files, "-"); i >= 0 && slices.Contains((*files)[i+1:], "-") {
					return usagef("apply: -f - given twice")
				}
				pools, err := readApplyFiles(e.stdin, *files)
				if err != nil {
					return err
				}
				return e.apply(ctx, pools, *prune, *dryRun)
			}
		},
	}
}

// readApplyFiles parses every file ("-" is stdin, read once) into one set.
func readApplyFiles(stdin io.Reader, files []string) ([]*poolv1.Pool, error) {
	var all []*poolv1.Pool
	where := map[string]string{}
	for _, f := range files {
		var (
			data []byte
			err  error
		)
		if f == "-" {
			data, err = io.ReadAll(io.LimitReader(stdin, maxApplyFileSize+1))
		} else {
			var fh *os.File
			if fh, err = os.Open(f); err == nil {
				data, err = io.ReadAll(io.LimitReader(fh, maxApplyFileSize+1))
				_ = fh.Close()
			}
		}
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		name := f
		if f == "-" {
			name = "<stdin>"
		}
		if len(data) > maxApplyFileSize {
			return nil, fmt.Errorf("apply: %s: larger than %d bytes", name, maxApplyFileSize)
		}
		pools, err := parseApplyFile(data)
		if err != nil {
			return nil, fmt.Errorf("apply: %s: %w", name, err)
		}
		for _, p := range pools {
			if prev, dup := where[p.GetName()]; dup {
				return nil, fmt.Errorf("apply: %s: %s is also in %s", name, p.GetName(), prev)
			}
			where[p.GetName()] = name
		}
		all = append(all, pools...)
	}
	return all, nil
}

// apply sends the wanted pools and prints the plan.
func (e *env) apply(ctx context.Context, pools []*poolv1.Pool, prune, dryRun bool) error {
	ctx, cancel, err := e.rpc(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := e.admin.ApplyPools(ctx, &poolv1.ApplyPoolsRequest{Pools: pools, Prune: prune, ValidateOnly: dryRun})
	if err != nil {
		return err
	}
	if e.g.output != "table" && e.g.output != "wide" {
		return e.show(resp, nil)
	}
	t := newTable(e.stdout, "NAME", "ACTION", "CHANGED FIELDS", "RETIRED IDLE", "RETIRED LEASED")
	counts := map[poolv1.PoolChange_Action]int{}
	for _, c := range resp.GetChanges() {
		counts[c.GetAction()]++
		t.row(c.GetName(), actionString(c.GetAction()), strings.Join(c.GetChangedFields(), ","),
			itoa(c.GetRetiredIdle()), itoa(c.GetRetiredLeased()))
	}
	if err := t.flush(); err != nil {
		return err
	}
	summary := fmt.Sprintf("%d to create, %d to update, %d to delete, %d unchanged",
		counts[poolv1.PoolChange_ACTION_CREATE], counts[poolv1.PoolChange_ACTION_UPDATE],
		counts[poolv1.PoolChange_ACTION_DELETE], counts[poolv1.PoolChange_ACTION_UNCHANGED])
	switch {
	case dryRun:
		_, _ = fmt.Fprintf(e.stdout, "dry run: %s; nothing changed\n", summary)
	case resp.GetRevision() == 0:
		_, _ = fmt.Fprintf(e.stdout, "no changes\n")
	default:
		summary = fmt.Sprintf("%d created, %d updated, %d deleted, %d unchanged",
			counts[poolv1.PoolChange_ACTION_CREATE], counts[poolv1.PoolChange_ACTION_UPDATE],
			counts[poolv1.PoolChange_ACTION_DELETE], counts[poolv1.PoolChange_ACTION_UNCHANGED])
		_, _ = fmt.Fprintf(e.stdout, "applied at revision %d: %s\n", resp.GetRevision(), summary)
	}
	return nil
}

func getCommand() *command {
	return &command{
		name: "get", args: "POOL [POOL...]", summary: "show pools' configuration and state",
		minArgs: 1, maxArgs: -1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return rpcBody(func(ctx context.Context, e *env, args []string) error {
				pools := make([]*poolv1.Pool, 0, len(args))
				for _, a := range args {
					p, err := e.admin.GetPool(ctx, &poolv1.GetPoolRequest{Name: poolName(a)})
					if err != nil {
						return err
					}
					pools = append(pools, p)
				}
				if len(pools) == 1 {
					// One pool: the Pool message itself, and FIELD VALUE rows.
					p := pools[0]
					return e.show(p, func(wide bool) error {
						if wide {
							return poolTable(e.stdout, pools, true)
						}
						return fieldTable(e.stdout, p)
					})
				}
				all := &poolv1.ListPoolsResponse{Pools: pools}
				return e.show(all, func(wide bool) error { return poolTable(e.stdout, pools, wide) })
			})
		},
	}
}

func listCommand() *command {
	return &command{
		name: "list", summary: "list pools",
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return rpcBody(func(ctx context.Context, e *env, _ []string) error {
				pools, err := allPages(func(token string) ([]*poolv1.Pool, string, error) {
					resp, err := e.admin.ListPools(ctx, &poolv1.ListPoolsRequest{PageSize: 1000, PageToken: token})
					return resp.GetPools(), resp.GetNextPageToken(), err
				})
				if err != nil {
					return err
				}
				all := &poolv1.ListPoolsResponse{Pools: pools}
				return e.show(all, func(wide bool) error { return poolTable(e.stdout, pools, wide) })
			})
		},
	}
}

func deleteCommand() *command {
	return &command{
		name: "delete", args: "POOL [--etag ETAG] [--dry-run]",
		summary: "delete a pool: no new leases, idle connections closed, leased ones on release",
		minArgs: 1, maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			etag := fs.String("etag", "", "delete only if the pool's etag is still `ETAG` (from get -o yaml)")
			dryRun := fs.Bool("dry-run", false, "check the request without deleting (validate_only)")
			return rpcBody(func(ctx context.Context, e *env, args []string) error {
				name := poolName(args[0])
				if _, err := e.admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: name, Etag: *etag, ValidateOnly: *dryRun}); err != nil {
					return err
				}
				if done, err := e.showValue(name, map[string]any{"name": name, "deleted": !*dryRun}); done {
					return err
				}
				if *dryRun {
					_, _ = fmt.Fprintf(e.stdout, "%s would be deleted (dry run)\n", name)
				} else {
					_, _ = fmt.Fprintf(e.stdout, "%s deleted\n", name)
				}
				return nil
			})
		},
	}
}

// defaultWaitTimeout bounds --wait.
const defaultWaitTimeout = 5 * time.Minute

// lifecycleCommand is drain, pause, resume or reconnect.
func lifecycleCommand(verb, summary string) *command {
	return &command{
		name: verb, args: "POOL [--wait] [--wait-timeout D]", summary: summary,
		minArgs: 1, maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			wait := fs.Bool("wait", false, waitHelp[verb])
			waitTimeout := fs.Duration("wait-timeout", defaultWaitTimeout, "give up --wait after this long (exit status 1)")
			return func(ctx context.Context, e *env, args []string) error {
				rctx, cancel, err := e.rpc(ctx)
				if err != nil {
					return err
				}
				defer cancel()
				name := poolName(args[0])
				var p *poolv1.Pool
				switch verb {
				case "drain":
					p, err = e.admin.DrainPool(rctx, &poolv1.DrainPoolRequest{Name: name})
				case "pause":
					p, err = e.admin.PausePool(rctx, &poolv1.PausePoolRequest{Name: name})
				case "resume":
					p, err = e.admin.ResumePool(rctx, &poolv1.ResumePoolRequest{Name: name})
				case "reconnect":
					p, err = e.admin.ReconnectPool(rctx, &poolv1.ReconnectPoolRequest{Name: name})
				}
				if err != nil {
					return err
				}
				if *wait {
					if err := e.waitConverged(ctx, verb, p, *waitTimeout); err != nil {
						return err
					}
				}
				return e.show(p, func(wide bool) error { return poolTable(e.stdout, []*poolv1.Pool{p}, wide) })
			}
		},
	}
}

var waitHelp = map[string]string{
	"drain":     "wait until no connection is leased (stats in_use 0)",
	"pause":     "wait until the pool reports state PAUSED",
	"resume":    "wait until the pool reports state ACTIVE",
	"reconnect": "wait until no lease holds a connection of an older generation",
}

// waitPoll is how often --wait polls.
const waitPoll = 200 * time.Millisecond

// waitConverged polls until the lifecycle change has taken full effect:
//
//   - drain: GetPoolStats reports in_use 0 (every lease returned; draining
//     closed the idle connections at once);
//   - reconnect: ListLeases shows no lease on a connection of a generation
//     older than the one ReconnectPool returned (idle connections of older
//     generations are closed at once by the bump, leased ones on release);
//   - pause, resume: GetPoolStats reports the new state.
//
// It gives up after timeout.
func (e *env) waitConverged(ctx context.Context, verb string, p *poolv1.Pool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name := p.GetName()
	last := ""
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		pending, err := e.pendingWork(ctx, verb, p)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s --wait: gave up after %s: %s", verb, timeout, last)
			}
			return err
		}
		if pending == "" {
			return nil
		}
		if pending != last {
			_, _ = fmt.Fprintf(e.stderr, "%s: waiting: %s\n", name, pending)
			last = pending
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s --wait: gave up after %s: %s", verb, timeout, last)
		case <-tick.C:
		}
	}
}

// pendingWork describes what --wait still waits for, or "" when done.
func (e *env) pendingWork(ctx context.Context, verb string, p *poolv1.Pool) (string, error) {
	rctx, cancel := e.rpcContext(ctx)
	defer cancel()
	if verb == "reconnect" {
		resp, err := e.admin.ListLeases(rctx, &poolv1.ListLeasesRequest{Parent: p.GetName()})
		if err != nil {
			return "", err
		}
		old := 0
		for _, l := range resp.GetLeases() {
			if l.GetGeneration() < p.GetGeneration() {
				old++
			}
		}
		if old == 0 {
			return "", nil
		}
		return fmt.Sprintf("%d leases on connections older than generation %d", old, p.GetGeneration()), nil
	}
	st, err := e.stats.GetPoolStats(rctx, &poolv1.GetPoolStatsRequest{Name: p.GetName()})
	if err != nil {
		return "", err
	}
	switch verb {
	case "drain":
		if st.GetInUse() == 0 {
			return "", nil
		}
		return fmt.Sprintf("%d connections in use", st.GetInUse()), nil
	case "pause", "resume":
		want := poolv1.PoolState_POOL_STATE_PAUSED
		if verb == "resume" {
			want = poolv1.PoolState_POOL_STATE_ACTIVE
		}
		if st.GetState() == want {
			return "", nil
		}
		return "state " + stateString(st.GetState()), nil
	}
	return "", nil
}

func historyCommand() *command {
	return &command{
		name: "history", args: "POOL", summary: "list a pool's configuration revisions, newest first",
		minArgs: 1, maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return rpcBody(func(ctx context.Context, e *env, args []string) error {
				revs, err := allPages(func(token string) ([]*poolv1.PoolRevision, string, error) {
					resp, err := e.admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: poolName(args[0]), PageSize: 1000, PageToken: token})
					return resp.GetRevisions(), resp.GetNextPageToken(), err
				})
				if err != nil {
					return err
				}
				all := &poolv1.ListPoolRevisionsResponse{Revisions: revs}
				return e.show(all, func(bool) error { return historyTable(e.stdout, revs) })
			})
		},
	}
}

// historyTable lists revisions with the fields each changed against the
// next older one.
func historyTable(w io.Writer, revs []*poolv1.PoolRevision) error {
	t := newTable(w, "REVISION", "TIME", "ACTOR", "CHANGE", "ENDPOINTS")
	for i, r := range revs {
		change := ""
		switch {
		case r.GetDeleted():
			change = "deleted"
		case i == len(revs)-1:
			change = "oldest retained"
		default:
			fields, err := changedFields(revs[i+1].GetPool(), r.GetPool())
			if err != nil {
				return err
			}
			change = strings.Join(fields, ",")
			if change == "" {
				change = "no config change" // e.g. reconnect
			}
			if revs[i+1].GetDeleted() {
				change = "recreated"
			}
		}
		t.row(itoa(r.GetRevision()), timeString(r.GetTime()), r.GetActor(), change,
			strings.Join(r.GetPool().GetEndpoints(), ","))
	}
	return t.flush()
}

// notDiffed are the Pool fields history's CHANGE column ignores: they
// change with every revision.
var notDiffed = []string{"name", "revision", "etag", "create_time", "update_time"}

// changedFields lists the paths that differ between a and b: configuration
// fields, and "state" and "generation" for lifecycle changes (drain,
// reconnect...).
func changedFields(a, b *poolv1.Pool) ([]string, error) {
	fa, err := flatten(a)
	if err != nil {
		return nil, err
	}
	fb, err := flatten(b)
	if err != nil {
		return nil, err
	}
	ma := map[string]string{}
	for _, kv := range fa {
		ma[kv[0]] = kv[1]
	}
	mb := map[string]string{}
	for _, kv := range fb {
		mb[kv[0]] = kv[1]
	}
	var out []string
	for k, v := range ma {
		if mb[k] != v {
			out = append(out, k)
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			out = append(out, k)
		}
	}
	out = slices.DeleteFunc(out, func(k string) bool { return slices.Contains(notDiffed, k) })
	slices.Sort(out)
	return out, nil
}

func rollbackCommand() *command {
	return &command{
		name: "rollback", args: "POOL --revision N",
		summary: "restore a pool's configuration from revision N (see history), as a new revision",
		minArgs: 1, maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			rev := fs.Int64("revision", 0, "the revision `N` to restore (required)")
			return func(ctx context.Context, e *env, args []string) error {
				if *rev <= 0 {
					return usagef("rollback: --revision N is required (see poolctl history %s)", args[0])
				}
				ctx, cancel, err := e.rpc(ctx)
				if err != nil {
					return err
				}
				defer cancel()
				p, err := e.admin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: poolName(args[0]), Revision: *rev})
				if err != nil {
					return err
				}
				if e.g.output != "table" && e.g.output != "wide" {
					return e.show(p, nil)
				}
				if err := poolTable(e.stdout, []*poolv1.Pool{p}, e.g.output == "wide"); err != nil {
					return err
				}
				_, _ = fmt.Fprintf(e.stdout, "%s rolled back to revision %d, now revision %d\n", p.GetName(), *rev, p.GetRevision())
				return nil
			}
		},
	}
}

func leasesCommand() *command {
	return &command{
		name: "leases", args: "[POOL]", summary: "list active leases, of one pool or of all",
		maxArgs: 1, completePools: true,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return rpcBody(func(ctx context.Context, e *env, args []string) error {
				parent := "pools/-"
				if len(args) == 1 {
					parent = poolName(args[0])
				}
				resp, err := e.admin.ListLeases(ctx, &poolv1.ListLeasesRequest{Parent: parent})
				if err != nil {
					return err
				}
				return e.show(resp, func(bool) error {
					t := newTable(e.stdout, "NAME", "CLIENT", "UPSTREAM", "GENERATION", "HELD", "GRANTED")
					for _, l := range resp.GetLeases() {
						t.row(l.GetName(), l.GetClientName(), l.GetUpstreamAddr(), itoa(l.GetGeneration()),
							durString(l.GetHeld()), timeString(l.GetGrantTime()))
					}
					return t.flush()
				})
			})
		},
	}
}

func replicasCommand() *command {
	return &command{
		name: "replicas", summary: "list the poold replicas sharing the server's configuration (etcd store) and whether the server is fenced",
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return rpcBody(func(ctx context.Context, e *env, _ []string) error {
				resp, err := e.admin.ListReplicas(ctx, &poolv1.ListReplicasRequest{})
				if err != nil {
					return err
				}
				if e.g.output != "table" && e.g.output != "wide" {
					return e.show(resp, nil)
				}
				if len(resp.GetReplicas()) == 0 {
					_, _ = fmt.Fprintln(e.stdout, "one poold on its own store: no replicas")
					return nil
				}
				t := newTable(e.stdout, "RANK", "REPLICA", "STATE")
				for _, r := range resp.GetReplicas() {
					state := "live"
					if r.GetId() == resp.GetReplicaId() {
						state = "live (this server)"
						if resp.GetFenced() {
							state = "fenced (this server): no share of fleet limits"
						}
					}
					t.row(itoa(r.GetRank()), r.GetId(), state)
				}
				return t.flush()
			})
		},
	}
}

func revokeCommand() *command {
	return &command{
		name: "revoke", args: "LEASE_NAME",
		summary: "end a lease by closing its upstream connection (LEASE_NAME is pools/POOL/leases/ID, from leases)",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				if !strings.HasPrefix(args[0], poolsPrefix) || !strings.Contains(args[0], "/leases/") {
					return usagef("revoke: want a lease name pools/POOL/leases/ID (see poolctl leases), got %q", args[0])
				}
				ctx, cancel, err := e.rpc(ctx)
				if err != nil {
					return err
				}
				defer cancel()
				if _, err := e.admin.RevokeLease(ctx, &poolv1.RevokeLeaseRequest{Name: args[0]}); err != nil {
					return err
				}
				if done, err := e.showValue(args[0], map[string]any{"name": args[0], "revoked": true}); done {
					return err
				}
				_, _ = fmt.Fprintf(e.stdout, "%s revoked\n", args[0])
				return nil
			}
		},
	}
}

func backupCommand() *command {
	return &command{
		name: "backup", args: "-f FILE", summary: "write a consistent snapshot of the server's database to FILE",
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			var out string
			fs.StringVarP(&out, "file", "f", "", "the `FILE` to write (required)")
			return func(ctx context.Context, e *env, _ []string) error {
				if out == "" {
					return usagef("backup: --file FILE (-f FILE) is required")
				}
				ctx, cancel, err := e.rpc(ctx)
				if err != nil {
					return err
				}
				defer cancel()
				n, err := backup(ctx, e.admin, out)
				if err != nil {
					return err
				}
				_, _ = fmt.Fprintf(e.stdout, "wrote %s (%d bytes); restore it by stopping poold and putting it in place of <data-dir>/poolplane.db\n", out, n)
				return nil
			}
		},
	}
}

// backup streams the server's snapshot into FILE.tmp, syncs it and renames
// it to FILE, so FILE is never a partial snapshot.
func backup(ctx context.Context, admin poolv1.PoolAdminServiceClient, file string) (int64, error) {
	stream, err := admin.BackupDatabase(ctx, &poolv1.BackupDatabaseRequest{})
	if err != nil {
		return 0, err
	}
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = os.Remove(tmp) }() // after a successful rename it is gone already
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			_ = f.Close()
			return n, err
		}
		k, err := f.Write(resp.GetChunk())
		n += int64(k)
		if err != nil {
			_ = f.Close()
			return n, fmt.Errorf("backup: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return n, fmt.Errorf("backup: %w", err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

func versionCommand() *command {
	return &command{
		name: "version", summary: "print poolctl's version (stamped by make build; see internal/version)",
		flags: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				v := version.Get()
				if e.g.output == "json" || e.g.output == "yaml" {
					return writeValue(e.stdout, e.g.output, map[string]any{
						"version": v.Version, "commit": v.Commit, "go": v.GoVersion,
						"platform": v.Platform,
					})
				}
				_, _ = fmt.Fprintf(e.stdout, "poolctl %s\n", v)
				return nil
			}
		},
	}
}
