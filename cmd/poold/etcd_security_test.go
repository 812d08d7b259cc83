package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/poolplane/poolplane/client"
	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/store/etcdstore/etcdtest"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestEtcdFlags(t *testing.T) {
	const st = "etcd://127.0.0.1:2379/pp"
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string // "" for success
	}{
		{"all", []string{"--store", st, "--etcd-ca-file", "ca", "--etcd-cert-file", "c", "--etcd-key-file", "k", "--etcd-username", "u", "--etcd-password-file", "p"}, nil, ""},
		{"etcds alone", []string{"--store", "etcds://127.0.0.1:2379/pp"}, nil, ""},
		{"from env", []string{"--store", st}, map[string]string{"POOLPLANE_ETCD_CA_FILE": "ca", "POOLPLANE_ETCD_USERNAME": "u", "POOLPLANE_ETCD_PASSWORD_FILE": "p"}, ""},
		{"cert without key", []string{"--store", st, "--etcd-cert-file", "c"}, nil, "go together"},
		{"key without cert", []string{"--store", st, "--etcd-key-file", "k"}, nil, "go together"},
		{"password without username", []string{"--store", st, "--etcd-password-file", "p"}, nil, "needs --etcd-username"},
		{"username without password", []string{"--store", st, "--etcd-username", "u"}, nil, "needs --etcd-password-file"},
		{"with bolt", []string{"--etcd-ca-file", "ca"}, nil, "need an etcd --store"},
		{"credentials in the URL", []string{"--store", "etcd://u:pw@127.0.0.1:2379/pp"}, nil, "credentials do not go in the URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			o, err := parseFlags(tt.args, io.Discard)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("parseFlags = %v", err)
				}
				if tt.env != nil && (o.etcd.caFile != "ca" || o.etcd.username != "u" || o.etcd.passwordFile != "p") {
					t.Errorf("env not read: %+v", o.etcd)
				}
				return
			}
			var uerr *usageError
			if !errors.As(err, &uerr) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseFlags = %v, want a usage error containing %q", err, tt.want)
			}
		})
	}
}

// secureEtcdFlags starts an etcd that requires mTLS and authentication
// and returns the poold flags that reach it, the password file last.
func secureEtcdFlags(t *testing.T, prefix string) (*etcdtest.Server, []string) {
	t.Helper()
	srv := etcdtest.StartWith(t, etcdtest.Config{ClientCertAuth: true})
	srv.EnableAuth(t, "r00t", etcdtest.User{Name: "poolplane", Password: "s3cret", Prefix: prefix})
	pw := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pki := srv.PKI()
	return srv, []string{"--store", "etcds://" + srv.Endpoint() + "/" + prefix,
		"--etcd-ca-file", pki.CAFile, "--etcd-cert-file", pki.ClientCertFile, "--etcd-key-file", pki.ClientKeyFile,
		"--etcd-username", "poolplane", "--etcd-password-file", pw}
}

// sdkClient returns an SDK client of addr, closed at cleanup.
func sdkClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// backupTo streams BackupDatabase from addr into file.
func backupTo(t *testing.T, addr, file string) {
	t.Helper()
	stream, err := poolv1.NewPoolAdminServiceClient(dial(t, addr)).BackupDatabase(t.Context(), &poolv1.BackupDatabaseRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("BackupDatabase: %v", err)
		}
		b.Write(resp.GetChunk())
	}
	if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// poold runs over an etcd that requires mTLS and a password; pools made
// through it are backed up with BackupDatabase into a bbolt file, from
// which a single poold --store bolt starts with the same pools, the same
// revisions and etags, and the same history.
func TestPooldEtcdTLSAuthBackup(t *testing.T) {
	_, flags := secureEtcdFlags(t, "pp")
	up := testkit.EchoServer(t)
	p := startPoold(t, t.TempDir(), flags...)
	ctx := t.Context()
	admin := poolv1.NewPoolAdminServiceClient(dial(t, p.grpcAddr))
	seedPools(ctx, t, admin, up)
	if _, err := admin.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "pools/gone"}); err != nil {
		t.Fatal(err)
	}
	if err := echoLease(ctx, sdkClient(t, p.grpcAddr), "api", 1); err != nil {
		t.Fatalf("lease over the etcd-backed poold: %v", err)
	}
	want, wantRevs := poolsAndHistory(ctx, t, admin)
	if n := len(wantRevs["api"].GetRevisions()); n != 3 {
		t.Fatalf("api has %d revisions, want 3", n)
	}

	dataDir := t.TempDir()
	backupTo(t, p.grpcAddr, filepath.Join(dataDir, "poolplane.db"))

	b := startPoold(t, dataDir)
	bAdmin := poolv1.NewPoolAdminServiceClient(dial(t, b.grpcAddr))
	got, err := bAdmin.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("restored pools:\n%v\nwant:\n%v", got, want)
	}
	for id, w := range wantRevs {
		r, err := bAdmin.ListPoolRevisions(ctx, &poolv1.ListPoolRevisionsRequest{Name: "pools/" + id})
		if err != nil || !proto.Equal(r, w) {
			t.Errorf("restored revisions of %s:\n%v, %v\nwant:\n%v", id, r, err, w)
		}
	}
	if err := echoLease(ctx, sdkClient(t, b.grpcAddr), "api", 2); err != nil {
		t.Fatalf("lease over the restored poold: %v", err)
	}
	// The restored poold carries on: a rollback to the first revision.
	first := wantRevs["api"].GetRevisions()[2].GetRevision()
	if _, err := bAdmin.RollbackPool(ctx, &poolv1.RollbackPoolRequest{Name: "pools/api", Revision: first}); err != nil {
		t.Fatalf("RollbackPool on the restored poold: %v", err)
	}
}

// poold refuses to start over a secured etcd with wrong credentials, an
// unreadable password file, or no TLS, and says why.
func TestPooldEtcdSecurityRefused(t *testing.T) {
	srv, flags := secureEtcdFlags(t, "pp")
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := flags[len(flags)-1]
	plain := []string{"--store", "etcd://" + srv.Endpoint() + "/pp", "--etcd-username", "poolplane", "--etcd-password-file", pw}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"wrong password", append(flags[:len(flags)-1:len(flags)-1], wrong), "authentication failed"},
		{"missing password file", append(flags[:len(flags)-1:len(flags)-1], filepath.Join(t.TempDir(), "none")), "--etcd-password-file"},
		{"CA file without certificates", append(flags[:len(flags):len(flags)], "--etcd-ca-file", pw), "no PEM certificates"},
		{"plaintext to a TLS etcd", plain, "serves TLS but the client dials it in plaintext"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out testkit.SyncBuffer
			args := append([]string{"--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", t.TempDir()}, tt.args...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if code := run(ctx, args, &out, nil); code != 1 || !strings.Contains(out.String(), tt.want) {
				t.Errorf("exit %d (want 1), output:\n%s\nwant it to contain %q", code, out.String(), tt.want)
			}
		})
	}
}
