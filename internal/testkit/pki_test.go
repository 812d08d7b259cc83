package testkit

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"testing"
)

// TestCAMutualTLS checks that a server and a client certificate of one CA
// complete a mutual handshake, and that one of another CA is refused.
func TestCAMutualTLS(t *testing.T) {
	ca := NewCA(t)
	srv := ca.Server(t, "poold.test", "127.0.0.1")
	if srv.Serial != 2 {
		t.Fatalf("first serial = %d, want 2", srv.Serial)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", ca.ServerTLS(srv, true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", lis.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := dial(ca.ClientTLS("poold.test", ca.Client(t, "svc"))); err != nil {
		t.Fatalf("mutual handshake: %v", err)
	}
	if err := dial(ca.ClientTLS("poold.test", NewCA(t).Client(t, "svc"))); err == nil {
		t.Fatal("a client certificate of another CA was accepted")
	}

	self := SelfSigned(t, CertSpec{Hosts: []string{"127.0.0.1"}, Server: true})
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(self.CertPEM) {
		t.Fatal("self-signed PEM does not parse")
	}
	leaf, err := x509.ParseCertificate(self.TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("self-signed certificate does not verify against itself: %v", err)
	}
}
