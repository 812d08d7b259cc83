// Package keytest builds the client key material and key file fixtures
// that the engine's and the registry's tests of tls.client_key_file share.
package keytest

import (
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
)

// KeyPair returns a self-signed client certificate and its key, PEM.
func KeyPair(t testing.TB) (certPEM, keyPEM string) {
	t.Helper()
	return testkit.SelfSigned(t, testkit.CertSpec{Subject: pkix.Name{CommonName: "client"}, Client: true}).Strings()
}

// Files are key file paths of every kind a pool writer may name, under
// one temporary directory.
type Files struct {
	CertPEM string // the client certificate whose key Good holds
	Good    string // a small regular file holding the key of CertPEM
	FIFO    string // a named pipe
	Dir     string // a directory
	Sock    string // a listening Unix socket
	Text    string // a readable regular file holding no key
	Big     string // the key followed by padding to more than maxSize bytes
	Other   string // the key of another certificate
	Missing string // a path that does not exist
}

// NewFiles creates the fixtures; maxSize is the reader's size bound. It
// skips the test where named pipes cannot be made.
func NewFiles(t testing.TB, maxSize int) Files {
	t.Helper()
	certPEM, keyPEM := KeyPair(t)
	dir := t.TempDir()
	f := Files{
		CertPEM: certPEM,
		Good:    filepath.Join(dir, "client.key"),
		FIFO:    filepath.Join(dir, "fifo"),
		Dir:     dir,
		Sock:    filepath.Join(dir, "sock"),
		Text:    filepath.Join(dir, "passwd"),
		Big:     filepath.Join(dir, "big.key"),
		Other:   filepath.Join(dir, "other.key"),
		Missing: filepath.Join(dir, "missing"),
	}
	if err := os.WriteFile(f.Good, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mkfifo(f.FIFO); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if err := os.WriteFile(f.Text, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Big, []byte(keyPEM+strings.Repeat("#", maxSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", f.Sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	_, otherKey := KeyPair(t)
	if err := os.WriteFile(f.Other, []byte(otherKey), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
