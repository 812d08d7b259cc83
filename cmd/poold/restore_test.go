package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

// withoutRevisions returns a copy of m with every pool's revision and etag
// cleared: what a restore into etcd changes.
func withoutRevisions[M proto.Message](m M) M {
	c := proto.Clone(m).(M)
	clear := func(p *poolv1.Pool) {
		if p != nil {
			p.Revision, p.Etag = 0, ""
		}
	}
	switch v := any(c).(type) {
	case *poolv1.ListPoolsResponse:
		for _, p := range v.GetPools() {
			clear(p)
		}
	case *poolv1.ListPoolRevisionsResponse:
		for _, r := range v.GetRevisions() {
			r.Revision = 0
			clear(r.GetPool())
		}
	}
	return c
}

// A backup of an etcd-backed poold (over mTLS and a password) restored
// with poold restore into a new prefix: a replica already following that
// prefix picks the pools up; a poold started on it serves the same pools
// and history (new revisions and etags), leases and rolls back. A second
// restore is refused unless --replace; a poold does not start on a prefix
// holding an unfinished restore.
func TestPooldRestore(t *testing.T) {
	srv, flags := secureEtcdFlags(t, "pp")
	up := testkit.EchoServer(t)
	ctx := t.Context()
	a := startPoold(t, t.TempDir(), flags...)
	admin := poolv1.NewPoolAdminServiceClient(dial(t, a.grpcAddr))
	seedPools(ctx, t, admin, up)
	if _, err := admin.PausePool(ctx, &poolv1.PausePoolRequest{Name: "pools/cache"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/gone"}); err != nil {
		t.Fatal(err)
	}
	want, wantRevs := poolsAndHistory(ctx, t, admin)
	file := filepath.Join(t.TempDir(), "backup.db")
	backupTo(t, a.grpcAddr, file)
	a.stop(t)

	restored := append([]string{"--store", "etcds://" + srv.Endpoint() + "/pprestored"}, flags[2:]...)
	b := startPoold(t, t.TempDir(), restored...) // follows the empty prefix
	bAdmin := poolv1.NewPoolAdminServiceClient(dial(t, b.grpcAddr))
	var out, errOut bytes.Buffer
	if code := restoreCmd(ctx, append(restored[:len(restored):len(restored)], file), &out, &errOut); code != 0 {
		t.Fatalf("poold restore: exit %d:\n%s%s", code, out.String(), errOut.String())
	}
	for _, w := range []string{"pools: 2 (api, cache)\n", "deleted pools with history: 1\n", "history entries: 7\n", "into etcd prefix pprestored\n"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("poold restore printed:\n%s\nwant it to contain %q", out.String(), w)
		}
	}

	testkit.WaitWithin(t, 5*time.Second, "the following replica serves the restored pools", func() bool {
		got, err := bAdmin.ListPools(ctx, &poolv1.ListPoolsRequest{})
		return err == nil && len(got.GetPools()) == 2
	})
	c := startPoold(t, t.TempDir(), restored...)
	cAdmin := poolv1.NewPoolAdminServiceClient(dial(t, c.grpcAddr))
	got, err := cAdmin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(withoutRevisions(got), withoutRevisions(want)) {
		t.Errorf("restored pools:\n%v\nwant, but for revisions and etags:\n%v", got, want)
	}
	if got.GetPools()[0].GetEtag() == want.GetPools()[0].GetEtag() {
		t.Errorf("restored etag %q is the backup's", got.GetPools()[0].GetEtag())
	}
	if fromB, err := bAdmin.ListPools(ctx, &poolv1.ListPoolsRequest{}); err != nil || !proto.Equal(fromB, got) {
		t.Errorf("the following replica lists\n%v, %v\nthe new one\n%v", fromB, err, got)
	}
	for id, w := range wantRevs {
		r, err := cAdmin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/" + id})
		if err != nil || !proto.Equal(withoutRevisions(r), withoutRevisions(w)) {
			t.Errorf("restored revisions of %s:\n%v, %v\nwant, but for revisions:\n%v", id, r, err, w)
		}
	}
	for i, addr := range []string{b.grpcAddr, c.grpcAddr} {
		if err := echoLease(ctx, sdkClient(t, addr), "api", i); err != nil {
			t.Errorf("lease over a poold on the restored prefix: %v", err)
		}
	}
	revs, err := cAdmin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/api"})
	if err != nil {
		t.Fatal(err)
	}
	first := revs.GetRevisions()[len(revs.GetRevisions())-1].GetRevision()
	if p, err := cAdmin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api", Revision: first}); err != nil || p.GetLimits().GetMaxConnections() != 4 {
		t.Errorf("RollbackPool to the first restored revision = %v, %v", p, err)
	}

	out.Reset()
	errOut.Reset()
	if code := restoreCmd(ctx, append(restored[:len(restored):len(restored)], file), &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "not empty") || !strings.Contains(errOut.String(), "--replace") {
		t.Errorf("restore into the used prefix: exit %d (want 1):\n%s", code, errOut.String())
	}
	if code := restoreCmd(ctx, append(restored[:len(restored):len(restored)], "--replace", file), &out, &errOut); code != 0 {
		t.Errorf("restore --replace: exit %d:\n%s", code, errOut.String())
	}
	testkit.WaitWithin(t, 5*time.Second, "the replicas follow the replace", func() bool {
		p, err := bAdmin.GetPool(ctx, &poolv1.GetPoolRequest{Name: "pools/api"})
		return err == nil && p.GetLimits().GetMaxConnections() == 6
	})

	// An unfinished restore: poold refuses to start on it.
	root := srv.Client(t, etcdtest.RootUser, "r00t")
	if _, err := root.Put(ctx, "ppunfinished/restore", "x"); err != nil {
		t.Fatal(err)
	}
	var log testkit.SyncBuffer
	args := append([]string{"--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", t.TempDir(),
		"--store", "etcds://" + srv.Endpoint() + "/ppunfinished"}, flags[2:]...)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if code := run(rctx, args, &log, nil); code != 1 || !strings.Contains(log.String(), "did not finish") ||
		!strings.Contains(log.String(), "poold restore --replace") {
		t.Errorf("poold on an unfinished restore: exit %d (want 1):\n%s", code, log.String())
	}
}

func TestRestoreFlags(t *testing.T) {
	const st = "etcd://127.0.0.1:1/pp"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no file", []string{"--store", st}, "want one backup FILE"},
		{"two files", []string{"--store", st, "a", "b"}, "want one backup FILE"},
		{"no store", []string{"f"}, "--store etcd://host:port/prefix is required"},
		{"bolt store", []string{"--store", "bolt", "f"}, "is required"},
		{"bad url", []string{"--store", "etcd://a:1", "f"}, "no /prefix"},
		{"cert without key", []string{"--store", st, "--etcd-cert-file", "c", "f"}, "go together"},
		{"history", []string{"--store", st, "--history", "0", "f"}, "--history must be at least 1"},
		{"txn ops", []string{"--store", st, "--max-txn-ops", "2", "f"}, "--max-txn-ops must be at least 8"},
		{"unknown flag", []string{"--store", st, "--nope", "f"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut bytes.Buffer
			if code := restoreCmd(t.Context(), tt.args, io.Discard, &errOut); code != 2 || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("exit %d (want 2), stderr:\n%s\nwant it to contain %q", code, errOut.String(), tt.want)
			}
		})
	}
	t.Setenv("POOLPLANE_STORE", "bolt")
	var errOut bytes.Buffer
	if code := restoreCmd(t.Context(), []string{"f"}, io.Discard, &errOut); code != 2 || !strings.Contains(errOut.String(), "is required") {
		t.Errorf("POOLPLANE_STORE=bolt: exit %d, stderr:\n%s", code, errOut.String())
	}
}

// seedPools creates pools api, cache and gone on up (4 connections each)
// and updates api twice (5, then 6 connections): three revisions of api.
func seedPools(ctx context.Context, t *testing.T, admin poolv1.PoolAdminServiceClient, up string) {
	t.Helper()
	for _, id := range []string{"api", "cache", "gone"} {
		if _, err := admin.CreatePool(ctx, &poolv1.CreatePoolRequest{PoolId: id, Pool: &poolv1.Pool{
			Endpoints: []string{up}, Limits: &poolv1.Limits{MaxConnections: 4}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int32{5, 6} {
		if _, err := admin.UpdatePool(ctx, &poolv1.UpdatePoolRequest{Pool: &poolv1.Pool{Name: "pools/api", Endpoints: []string{up},
			Limits: &poolv1.Limits{MaxConnections: n}}}); err != nil {
			t.Fatal(err)
		}
	}
}

// poolsAndHistory lists the pools and the revisions of api, cache and
// gone.
func poolsAndHistory(ctx context.Context, t *testing.T, admin poolv1.PoolAdminServiceClient) (*poolv1.ListPoolsResponse, map[string]*poolv1.ListPoolRevisionsResponse) {
	t.Helper()
	want, err := admin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wantRevs := map[string]*poolv1.ListPoolRevisionsResponse{}
	for _, id := range []string{"api", "cache", "gone"} {
		r, err := admin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/" + id})
		if err != nil {
			t.Fatal(err)
		}
		wantRevs[id] = r
	}
	return want, wantRevs
}
