package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// diagnoseTimeout bounds one direct probe of an endpoint.
const diagnoseTimeout = 2 * time.Second

// Ping reads the current revision, and returns nil if the cluster
// answered within ctx. When it did not, the error (which wraps ctx's or
// the etcd client's) also says what a direct connection to the first
// endpoint found: nothing listening, a TLS member dialed in plaintext, a
// certificate the client does not trust, a client certificate the member
// refused. The etcd client only reports a deadline in those cases. It
// returns store.ErrClosed after Close.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.Revision(ctx)
	if err == nil || !s.ownClient || len(s.endpoints) == 0 {
		return err
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return err
	}
	if d := diagnose(s.endpoints[0], s.tls); d != "" {
		return fmt.Errorf("%w (%s)", err, d)
	}
	return err
}

// diagnose connects to ep directly, as the etcd client would (TLS with
// tlsCfg, or plaintext if nil), and describes what fails; "" if nothing
// does.
func diagnose(ep string, tlsCfg *tls.Config) string {
	host := ep
	if i := strings.Index(host, "://"); i >= 0 {
		host = host[i+3:]
	}
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: diagnoseTimeout}
		return d.Dial("tcp", host)
	}
	conn, err := dial()
	if err != nil {
		return fmt.Sprintf("%s: %v", host, err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(diagnoseTimeout))
	if tlsCfg == nil {
		// Does the member speak TLS? The handshake only detects it; no
		// data is exchanged, so the certificate is not verified.
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // detection only, see above
		if tc.Handshake() == nil {
			return fmt.Sprintf("%s serves TLS but the client dials it in plaintext: configure TLS (a CA file, or the etcds:// scheme)", host)
		}
		return ""
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			cfg.ServerName = h
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Sprintf("TLS handshake with %s: %v", host, err)
	}
	// Under TLS 1.3 the member refuses a client certificate after the
	// client's handshake is done: its alert arrives with the first read.
	// A member that accepted the handshake sends its HTTP/2 settings.
	_ = tc.SetReadDeadline(time.Now().Add(diagnoseTimeout))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Sprintf("TLS with %s: %v", host, err)
	}
	return ""
}
