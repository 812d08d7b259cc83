package testkit

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
	"net/url"
	"os"
	"sync"
	"testing"
	"time"
)

// CA is a throwaway certificate authority: it issues server and client
// certificates, valid from an hour ago for a day, with P-256 keys.
type CA struct {
	Cert *x509.Certificate // the CA certificate
	PEM  []byte            // Cert, PEM

	key    *ecdsa.PrivateKey
	mu     sync.Mutex // protects serial
	serial int64
}

// Cert is a certificate and its key, PEM and as a tls.Certificate.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte
	KeyPEM  []byte // PKCS #8
	Serial  int64
}

// CertSpec says what a certificate is for.
type CertSpec struct {
	Subject pkix.Name
	Hosts   []string // DNS names and IP addresses
	URIs    []string // URI subject alternative names, such as SPIFFE IDs
	Server  bool     // for server authentication
	Client  bool     // for client authentication
}

// NewCA creates a CA named "poolplane test CA".
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "poolplane test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testkit: CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testkit: CA: %v", err)
	}
	return &CA{Cert: cert, PEM: pemBlock("CERTIFICATE", der), key: key, serial: 1}
}

// Pool returns a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue issues a certificate as spec says. Serials count up from 2.
func (ca *CA) Issue(t testing.TB, spec CertSpec) *Cert {
	t.Helper()
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := leafTemplate(t, serial, spec)
	return sign(t, tmpl, ca.Cert, ca.key)
}

// Server issues a server certificate for hosts (DNS names and IP
// addresses), named after the first.
func (ca *CA) Server(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	spec := CertSpec{Hosts: hosts, Server: true}
	if len(hosts) > 0 {
		spec.Subject.CommonName = hosts[0]
	}
	return ca.Issue(t, spec)
}

// Client issues a client certificate with common name cn.
func (ca *CA) Client(t testing.TB, cn string) *Cert {
	t.Helper()
	return ca.Issue(t, CertSpec{Subject: pkix.Name{CommonName: cn}, Client: true})
}

// ServerTLS returns a server configuration presenting c; with
// verifyClients it requires a client certificate the CA issued.
func (ca *CA) ServerTLS(c *Cert, verifyClients bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{c.TLS}, MinVersion: tls.VersionTLS12}
	if verifyClients {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = ca.Pool()
	}
	return cfg
}

// ClientTLS returns a client configuration trusting only the CA, for
// serverName, presenting c unless it is nil.
func (ca *CA) ClientTLS(serverName string, c *Cert) *tls.Config {
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: serverName, MinVersion: tls.VersionTLS12}
	if c != nil {
		cfg.Certificates = []tls.Certificate{c.TLS}
	}
	return cfg
}

// WriteFile writes the CA certificate, PEM, to name.
func (ca *CA) WriteFile(t testing.TB, name string) {
	t.Helper()
	WriteFile(t, name, ca.PEM)
}

// SelfSigned returns a certificate as spec says that is its own CA: a
// trust anchor of its own, for a peer that is told to trust exactly it.
func SelfSigned(t testing.TB, spec CertSpec) *Cert {
	t.Helper()
	key := newKey(t)
	tmpl := leafTemplate(t, 1, spec)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	return signWith(t, tmpl, nil, key, key)
}

// Strings returns the certificate and its key, PEM, as strings: the form
// a pool's configuration takes them in.
func (c *Cert) Strings() (certPEM, keyPEM string) {
	return string(c.CertPEM), string(c.KeyPEM)
}

// WriteFiles writes the certificate and its key, PEM, to certFile and
// keyFile.
func (c *Cert) WriteFiles(t testing.TB, certFile, keyFile string) {
	t.Helper()
	WriteFile(t, certFile, c.CertPEM)
	WriteFile(t, keyFile, c.KeyPEM)
}

// WriteFile writes b to name with mode 0600 through a temporary file and a
// rename, so that a process watching name never reads it half written.
func WriteFile(t testing.TB, name string, b []byte) {
	t.Helper()
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testkit: key: %v", err)
	}
	return key
}

func leafTemplate(t testing.TB, serial int64, spec CertSpec) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      spec.Subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range spec.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	for _, u := range spec.URIs {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("testkit: URI %q: %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	return tmpl
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *Cert {
	t.Helper()
	return signWith(t, tmpl, parent, parentKey, newKey(t))
}

// signWith signs tmpl, for key, with parentKey; a nil parent makes it
// self-signed.
func signWith(t testing.TB, tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *Cert {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("testkit: certificate: %v", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testkit: key: %v", err)
	}
	c := &Cert{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", kder), Serial: tmpl.SerialNumber.Int64()}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatalf("testkit: key pair: %v", err)
	}
	return c
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
