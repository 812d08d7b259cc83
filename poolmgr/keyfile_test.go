package poolmgr

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestClientKeyFileBounded: a client_key_file path is read only when it is
// a small regular file holding the key; devices, FIFOs, directories,
// sockets, large or foreign files and missing paths all fail at once with
// the same error, in dry runs too, and nothing is left running.
func TestClientKeyFileBounded(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	certPEM, keyPEM := testKeyPair(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "client.key")
	if err := os.WriteFile(good, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	text := filepath.Join(dir, "passwd")
	if err := os.WriteFile(text, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.key")
	if err := os.WriteFile(big, []byte(keyPEM+strings.Repeat("#", maxKeyFileSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	_, otherKey := testKeyPair(t)
	other := filepath.Join(dir, "other.key")
	if err := os.WriteFile(other, []byte(otherKey), 0o600); err != nil {
		t.Fatal(err)
	}

	m := newTestManager(t, newMemStore())
	cfgWith := func(path string) Config {
		c := cfgFor("127.0.0.1:1")
		c.TLS = TLSConfig{Enabled: true, ClientCertPEM: certPEM, ClientKeyFile: path}
		return c
	}
	if _, err := m.Create(context.Background(), "ok", cfgWith(good), WriteOptions{ValidateOnly: true}); err != nil {
		t.Fatalf("a regular key file: %v", err)
	}
	var first string
	for _, path := range []string{"/dev/zero", fifo, dir, sock, text, big, other, filepath.Join(dir, "missing")} {
		for _, dry := range []bool{true, false} {
			start := time.Now()
			_, err := m.Create(context.Background(), "bad", cfgWith(path), WriteOptions{ValidateOnly: dry})
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%s (validate_only=%v): %v, want ErrInvalidConfig", path, dry, err)
			}
			if d := time.Since(start); d >= keyFileTimeout {
				t.Errorf("%s: took %v", path, d)
			}
			msg := strings.ReplaceAll(err.Error(), path, "PATH")
			if first == "" {
				first = msg
			} else if msg != first {
				t.Errorf("%s: error %q differs from %q: it tells the paths apart", path, msg, first)
			}
		}
		if path == text || path == other {
			continue // readable, but no key for the certificate
		}
		if _, err := readKeyFile(path); !errors.Is(err, ErrClientKeyFile) {
			t.Errorf("readKeyFile(%s) = %v", path, err)
		}
	}
	if !strings.Contains(first, ErrClientKeyFile.Error()) {
		t.Fatalf("error %q", first)
	}

	// A bad certificate is reported alike whatever the file is.
	var certErr string
	for _, path := range []string{good, text, fifo, filepath.Join(dir, "missing")} {
		c := cfgWith(path)
		c.TLS.ClientCertPEM = "not a certificate"
		_, err := m.Create(context.Background(), "bad", c, WriteOptions{ValidateOnly: true})
		if !errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrClientKeyFile) {
			t.Fatalf("bad certificate with %s: %v", path, err)
		}
		if certErr == "" {
			certErr = err.Error()
		} else if err.Error() != certErr {
			t.Errorf("bad certificate with %s: %q differs from %q", path, err, certErr)
		}
	}
}
