package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/poolplane/poolplane/server"
)

// stringList is a repeatable flag; each value may also hold several
// comma-separated items (as POOLPLANE_ALLOW_UPSTREAM does).
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

// Type names the flag's value in help (pflag.Value).
func (l *stringList) Type() string { return "list" }

// Set appends the comma-separated items of v.
func (l *stringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// readSecretKey reads --secret-key-file: 32 bytes, raw, or as 64 hex digits
// or standard base64 (surrounding whitespace ignored). A file readable by
// group or others is reported through warn.
func readSecretKey(name string, warn func(string)) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		warn(fmt.Sprintf("--secret-key-file %s is readable by group or others (mode %v); chmod 600 it", name, fi.Mode().Perm()))
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	if len(b) == 32 {
		return b, nil
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("--secret-key-file %s: want 32 bytes (raw, 64 hex digits or base64), for example from: head -c 32 /dev/urandom > %s", name, name)
}

// certReloader serves the current certificate of --tls-cert/--tls-key to
// the TLS handshake; reload swaps it atomically, so handshakes in progress
// and connections already open (and their leases) are unaffected.
type certReloader struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// reload loads the files; on error the previous certificate stays.
func (r *certReloader) reload() error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	r.cert.Store(&c)
	return nil
}

// getCertificate is tls.Config.GetCertificate.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// serverTLSConfig builds the gRPC listener's TLS configuration: TLS 1.2 at
// least, the reloadable certificate, and with --tls-client-ca client
// certificates verified when given (VerifyClientCertIfGiven: a client may
// still authenticate with a bearer token instead; one without either is
// refused by authentication).
func serverTLSConfig(r *certReloader, clientCA string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.getCertificate}
	if clientCA != "" {
		b, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificates", clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// reloadable is a set of files and what to do when one of them changes.
type reloadable struct {
	name   string // for the log
	files  []string
	reload func() error
}

// fileStamp identifies a file's version cheaply.
type fileStamp struct {
	mod  time.Time
	size int64
	ok   bool
}

func stampOf(name string) fileStamp {
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size(), ok: true}
}

// watcher reloads its reloadables when their files change (polled every
// interval) or on SIGHUP. A failed reload is logged and the previous
// version stays in force. Owned by serve: start runs its goroutine, stop
// ends it and waits.
type watcher struct {
	items    []reloadable
	interval time.Duration
	logger   *slog.Logger
	// reloaded, if set, is told after each reload round (tests wait on it).
	reloaded func()

	stopc chan struct{}
	donec chan struct{}
}

func (w *watcher) start() {
	w.stopc, w.donec = make(chan struct{}), make(chan struct{})
	hup := make(chan os.Signal, 1) // size 1: signal.Notify does not block; one pending SIGHUP is enough
	signal.Notify(hup, syscall.SIGHUP)
	stamps := make([][]fileStamp, len(w.items))
	for i, it := range w.items {
		for _, f := range it.files {
			stamps[i] = append(stamps[i], stampOf(f))
		}
	}
	go func() {
		defer close(w.donec)
		defer signal.Stop(hup)
		t := time.NewTicker(w.interval)
		defer t.Stop()
		for {
			force := false
			select {
			case <-w.stopc:
				return
			case <-hup:
				force = true
				w.logger.Info("SIGHUP: reloading certificates and the auth file")
			case <-t.C:
			}
			for i, it := range w.items {
				changed := force
				now := make([]fileStamp, len(it.files))
				for j, f := range it.files {
					now[j] = stampOf(f)
					changed = changed || now[j] != stamps[i][j]
				}
				if !changed {
					continue
				}
				if err := it.reload(); err != nil {
					// Stamps stay old: the next tick retries, which also
					// covers a certificate and key caught mid-update.
					w.logger.Error("reload failed; keeping the previous version", "what", it.name, "err", err)
					continue
				}
				stamps[i] = now
				w.logger.Info("reloaded", "what", it.name)
			}
			if w.reloaded != nil {
				w.reloaded()
			}
		}
	}()
}

func (w *watcher) stop() {
	close(w.stopc)
	<-w.donec
}

// authReloadable reloads --auth-file into a.
func authReloadable(name string, a *server.Authenticator) reloadable {
	return reloadable{name: "auth file " + name, files: []string{name}, reload: func() error {
		ps, err := server.LoadAuthFile(name)
		if err != nil {
			return err
		}
		return a.Update(ps)
	}}
}

// hashToken is "poold hash-token": it reads a token (the first line of r,
// without its line ending) and prints the token_sha256 to put in the auth
// file.
func hashToken(r io.Reader, w io.Writer) error {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	token := strings.TrimRight(line, "\r\n")
	if token == "" {
		return errors.New("hash-token: no token on standard input (echo -n TOKEN | poold hash-token)")
	}
	_, err = fmt.Fprintln(w, server.HashToken(token))
	return err
}
