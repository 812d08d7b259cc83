package poolmgr

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/poolmgr/engine"
	"github.com/poolplane/poolplane/poolmgr/internal/keytest"
)

// TestClientKeyFileBounded: a client_key_file path is read only when it is
// a small regular file holding the key; devices, FIFOs, directories,
// sockets, large or foreign files and missing paths all fail at once with
// the same error, in dry runs too, and nothing is left running. The
// engine's TestReadKeyFileBounded checks the reader on the same paths.
func TestClientKeyFileBounded(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	f := keytest.NewFiles(t, engine.MaxKeyFileSize)

	m := newTestManager(t, newMemStore())
	cfgWith := func(path string) Config {
		c := cfgFor("127.0.0.1:1")
		c.TLS = TLSConfig{Enabled: true, ClientCertPEM: f.CertPEM, ClientKeyFile: path}
		return c
	}
	if _, err := m.Create(context.Background(), "ok", cfgWith(f.Good), WriteOptions{ValidateOnly: true}); err != nil {
		t.Fatalf("a regular key file: %v", err)
	}
	var first string
	for _, path := range []string{"/dev/zero", f.FIFO, f.Dir, f.Sock, f.Text, f.Big, f.Other, f.Missing} {
		for _, dry := range []bool{true, false} {
			start := time.Now()
			_, err := m.Create(context.Background(), "bad", cfgWith(path), WriteOptions{ValidateOnly: dry})
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%s (validate_only=%v): %v, want ErrInvalidConfig", path, dry, err)
			}
			if d := time.Since(start); d >= engine.KeyFileTimeout {
				t.Errorf("%s: took %v", path, d)
			}
			msg := strings.ReplaceAll(err.Error(), path, "PATH")
			if first == "" {
				first = msg
			} else if msg != first {
				t.Errorf("%s: error %q differs from %q: it tells the paths apart", path, msg, first)
			}
		}
	}
	if !strings.Contains(first, ErrClientKeyFile.Error()) {
		t.Fatalf("error %q", first)
	}

	// A bad certificate is reported alike whatever the file is.
	var certErr string
	for _, path := range []string{f.Good, f.Text, f.FIFO, f.Missing} {
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
