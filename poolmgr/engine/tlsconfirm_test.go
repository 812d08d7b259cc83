package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// mtlsUpstream is a TLS 1.3 echo upstream on 127.0.0.1:0 that requires a
// client certificate of the test PKI; mutate adjusts its config.
func mtlsUpstream(t *testing.T, pki *testPKI, mutate func(*tls.Config), handler func(net.Conn)) *testUpstream {
	t.Helper()
	srvCfg := &tls.Config{
		Certificates: []tls.Certificate{pki.server.TLS},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.Pool(),
		MinVersion:   tls.VersionTLS13,
	}
	if mutate != nil {
		mutate(srvCfg)
	}
	return startUpstream(t, "127.0.0.1:0", func(ln net.Listener) net.Listener { return tls.NewListener(ln, srvCfg) }, handler)
}

// A pool without the client certificate its TLS 1.3 upstream requires:
// the server refuses it only after the client's handshake is done, so every
// dial used to look good and each lease read EOF. The dial now waits for
// the server's verdict: it fails, the acquire fails like any failing dial
// (ErrUnavailable once the circuit opens) and the last dial error names
// the TLS alert. No connection is ever handed out.
func TestIOTLS13ClientCertRefusedAfterHandshake(t *testing.T) {
	pki := newTestPKI(t)
	u := mtlsUpstream(t, pki, nil, nil)
	p := newIOPool(t, ioConfig(u.addr(), func(c *Config) {
		c.TLS = TLSConfig{Enabled: true, CAPEM: string(pki.PEM), ServerName: "upstream.test"} // no client certificate
		c.Limits.AcquireTimeout = 30 * time.Second                                            // ends early: the circuit opens
	}), Env{})
	c, err := p.Acquire(context.Background(), "t")
	if err == nil {
		c.Release(false)
		t.Fatal("acquire handed out a connection the upstream refused")
	}
	var ae *AcquireError
	if !errors.As(err, &ae) || !errors.Is(err, ErrUnavailable) || ae.LastDialErr == nil ||
		!strings.Contains(ae.LastDialErr.Error(), "certificate required") {
		t.Fatalf("acquire: %v, want ErrUnavailable with the certificate_required alert as the last dial error", err)
	}
	s := p.Stats()
	if s.Total != 0 || s.DialFailures == 0 || s.DialFailures != s.Dials || !strings.Contains(s.LastDialError, "certificate required") {
		t.Fatalf("Stats: total %d, dials %d, dial failures %d, last dial error %q", s.Total, s.Dials, s.DialFailures, s.LastDialError)
	}
}

// With the certificate, the dial confirms at the server's session ticket,
// without waiting out the verdict's bound; a server that sends no ticket
// costs the bound once per dial; and application data the server sends first
// is not lost to the confirming read.
func TestIOTLS13ClientCertAccepted(t *testing.T) {
	pki := newTestPKI(t)
	withCert := func(c *Config) {
		c.TLS = TLSConfig{Enabled: true, CAPEM: string(pki.PEM), ServerName: "upstream.test",
			ClientCertPEM: string(pki.client.CertPEM), ClientKeyPEM: string(pki.client.KeyPEM)}
		c.Lifecycle.ValidateAfterIdle = time.Hour // hand out the greeting, do not peek at it
	}
	t.Run("tickets", func(t *testing.T) {
		u := mtlsUpstream(t, pki, nil, nil)
		p := newIOPool(t, ioConfig(u.addr(), withCert), Env{})
		for range 3 { // the first dial is a full handshake, then resumed ones
			c := mustAcquire(t, p)
			roundTrip(t, c)
			c.Release(false)
		}
		if s := p.Stats(); s.DialFailures != 0 || s.Dials != 3 {
			t.Fatalf("Stats: dials %d, failures %d (%s)", s.Dials, s.DialFailures, s.LastDialError)
		}
		// The first dial's wait ended at the ticket; only a loaded machine
		// can make it reach the bound.
		if h := p.Stats().DialTime; h.Count != 3 || h.Sum >= 3*tlsVerdictMax {
			t.Fatalf("dial times: %d dials, %v in all", h.Count, h.Sum)
		}
	})
	t.Run("no tickets, server speaks first", func(t *testing.T) {
		greet := func(c net.Conn) {
			if _, err := io.WriteString(c, "HELLO\n"); err != nil {
				return
			}
			echo(c)
		}
		u := mtlsUpstream(t, pki, func(c *tls.Config) { c.SessionTicketsDisabled = true }, greet)
		p := newIOPool(t, ioConfig(u.addr(), withCert), Env{})
		c := mustAcquire(t, p)
		defer c.Release(false)
		nc := c.NetConn()
		if _, ok := nc.(*preReadConn); !ok {
			t.Fatalf("NetConn is %T, want the greeting's first byte read while confirming the dial", nc)
		}
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 6)
		if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "HELLO\n" {
			t.Fatalf("greeting: %q, %v", buf, err)
		}
		roundTrip(t, c)
		if s := p.Stats(); s.DialFailures != 0 {
			t.Fatalf("dial failures: %d (%s)", s.DialFailures, s.LastDialError)
		}
	})
}

// The wait for the verdict is skipped where nothing can be refused after
// the handshake: TLS 1.2 (the server's verdict is part of the handshake),
// or a server that did not ask for a certificate.
func TestConfirmClientCertSkipped(t *testing.T) {
	for _, v := range []tlsVerdict{{asked: false}, {asked: true}} {
		// A client that never handshook reports version 0 (< TLS 1.3).
		tc := tls.Client(nil, &tls.Config{})
		got, err := confirmClientCert(tc, &v, time.Hour, time.Time{})
		if err != nil || got != net.Conn(tc) {
			t.Fatalf("asked=%v: (%v, %v), want the connection as it is", v.asked, got, err)
		}
	}
}
