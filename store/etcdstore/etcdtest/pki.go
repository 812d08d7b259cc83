package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throwaway CA and the certificates it issued, as PEM files in
// a t.TempDir(): a server certificate for 127.0.0.1 and localhost (also
// valid as a client certificate, which the member's own loopback client
// uses under mTLS) and a client certificate.
type PKI struct {
	Dir                           string
	CAFile                        string
	ServerCertFile, ServerKeyFile string
	ClientCertFile, ClientKeyFile string

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// ClientCommonName is the subject common name of the PKI's client
// certificate. etcd takes it as the user name of a client that presents
// the certificate and no credentials.
const ClientCommonName = "poolplane-test-client"

// NewPKI creates a CA and issues the server and client certificates.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir()}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("etcdtest: CA key: %v", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("etcdtest: CA: %v", err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatalf("etcdtest: CA: %v", err)
	}
	p.caKey = key
	p.CAFile = filepath.Join(p.Dir, "ca.pem")
	writePEM(t, p.CAFile, "CERTIFICATE", der)
	p.ServerCertFile, p.ServerKeyFile = p.Issue(t, "server", "127.0.0.1", true)
	p.ClientCertFile, p.ClientKeyFile = p.Issue(t, "client", ClientCommonName, false)
	return p
}

// Issue issues a certificate with common name cn, a server one (for
// 127.0.0.1, ::1 and localhost, also usable by clients) or a client one,
// and returns the files it wrote: name.pem and name-key.pem.
func (p *PKI) Issue(t testing.TB, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("etcdtest: key: %v", err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatalf("etcdtest: serial: %v", err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatalf("etcdtest: certificate: %v", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("etcdtest: key: %v", err)
	}
	certFile, keyFile = filepath.Join(p.Dir, name+".pem"), filepath.Join(p.Dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return certFile, keyFile
}

// CertPool returns a pool holding the CA.
func (p *PKI) CertPool() *x509.CertPool {
	cp := x509.NewCertPool()
	cp.AddCert(p.ca)
	return cp
}

// ClientTLS returns a client configuration trusting the CA, presenting
// the client certificate if withCert.
func (p *PKI) ClientTLS(t testing.TB, withCert bool) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.CertPool(), MinVersion: tls.VersionTLS12}
	if withCert {
		c, err := tls.LoadX509KeyPair(p.ClientCertFile, p.ClientKeyFile)
		if err != nil {
			t.Fatalf("etcdtest: client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

func writePEM(t testing.TB, name, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
}
