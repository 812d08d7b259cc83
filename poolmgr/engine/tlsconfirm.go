package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Bounds of the wait for a TLS 1.3 server's verdict on the client
// certificate (see confirmClientCert): twice the handshake's own duration
// (a measure of the round trip and of the server's speed), within these.
const (
	tlsVerdictMin = 50 * time.Millisecond
	tlsVerdictMax = time.Second
)

// tlsVerdict watches a TLS 1.3 client handshake for what confirmClientCert
// needs: whether the server asked for a client certificate, and when a
// session ticket arrives after it.
type tlsVerdict struct {
	certs []tls.Certificate // the configured client certificates
	asked bool              // the server sent a CertificateRequest
	// none: the client had no certificate the server accepts, and sent
	// none.
	none bool
	// nc is the socket under the TLS connection: a session ticket seen
	// while armed ends confirmClientCert's read by expiring its deadline.
	nc    net.Conn
	armed bool
}

// watch makes cfg, a clone for one dial on nc, report to v. Its callbacks
// run on the goroutine of the handshake and of confirmClientCert's read.
func (v *tlsVerdict) watch(cfg *tls.Config, nc net.Conn) {
	v.certs, v.nc = cfg.Certificates, nc
	cfg.GetClientCertificate = v.clientCertificate
	if cfg.ClientSessionCache != nil {
		cfg.ClientSessionCache = ticketHook{ClientSessionCache: cfg.ClientSessionCache, v: v}
	}
}

// clientCertificate is crypto/tls's own choice among the configured
// certificates (the first the server accepts, else none), noting that the
// server asked.
func (v *tlsVerdict) clientCertificate(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	v.asked = true
	for i := range v.certs {
		if cri.SupportsCertificate(&v.certs[i]) == nil {
			return &v.certs[i], nil
		}
	}
	v.none = true
	return new(tls.Certificate), nil
}

// ticketHook is the pool's session cache seen by one dial.
type ticketHook struct {
	tls.ClientSessionCache
	v *tlsVerdict
}

// Put stores the ticket and, while confirmClientCert waits, ends the wait:
// a TLS 1.3 server sends tickets only once it has accepted the client.
func (h ticketHook) Put(key string, cs *tls.ClientSessionState) {
	h.ClientSessionCache.Put(key, cs)
	if h.v.armed {
		_ = h.v.nc.SetReadDeadline(time.Unix(1, 0)) // in the past: the read returns now
	}
}

// confirmClientCert catches a client certificate refused after the
// handshake. Under TLS 1.3 the client's handshake ends before the server
// has seen the client's certificate: a server that refuses it (none sent,
// unknown CA, expired) answers with an alert one round trip later, and the
// connection only reads EOF. When the server asked for a certificate,
// confirmClientCert reads once, waiting for the server's first record up to
// twice the handshake's duration (tlsVerdictMin to tlsVerdictMax, and
// never past deadline): an alert fails the dial with the alert's error; a
// session ticket, or nothing in time, confirms it. Application data read
// meanwhile (a server that speaks first) is kept for the first Read.
func confirmClientCert(tc *tls.Conn, v *tlsVerdict, handshake time.Duration, deadline time.Time) (net.Conn, error) {
	if !v.asked || tc.ConnectionState().Version < tls.VersionTLS13 {
		return tc, nil // nothing to refuse after the handshake
	}
	// Socket deadlines are wall-clock time, so time.Now, not Env.Now.
	bound := min(max(2*handshake, tlsVerdictMin), tlsVerdictMax)
	if v.none {
		// Asked for a certificate and sent none: a refusal is all but
		// certain, and on a loaded machine may come later than twice the
		// handshake. Wait the longest bound: a server that takes the
		// connection anyway ends the wait with its session ticket.
		bound = tlsVerdictMax
	}
	wait := time.Now().Add(bound)
	if !deadline.IsZero() && deadline.Before(wait) {
		wait = deadline
	}
	if err := tc.SetReadDeadline(wait); err != nil {
		return nil, err
	}
	var b [1]byte
	v.armed = true
	n, err := tc.Read(b[:])
	v.armed = false
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("client certificate refused after the handshake: %w", err)
	}
	if err := tc.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	if n > 0 {
		return &preReadConn{Conn: tc, pending: b[:n]}, nil
	}
	return tc, nil
}

// preReadConn is a TLS connection whose first application bytes were read
// by confirmClientCert; Read returns them first. The pool treats them as
// unread upstream bytes (Conn.alive).
type preReadConn struct {
	*tls.Conn
	pending []byte
}

// Read returns the pending bytes first, then reads the connection.
func (c *preReadConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
