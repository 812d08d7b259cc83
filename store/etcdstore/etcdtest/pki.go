package etcdtest

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"path/filepath"
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
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

	ca *testkit.CA
}

// ClientCommonName is the subject common name of the PKI's client
// certificate. etcd takes it as the user name of a client that presents
// the certificate and no credentials.
const ClientCommonName = "poolplane-test-client"

// NewPKI creates a CA and issues the server and client certificates.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir(), ca: testkit.NewCA(t)}
	p.CAFile = filepath.Join(p.Dir, "ca.pem")
	p.ca.WriteFile(t, p.CAFile)
	p.ServerCertFile, p.ServerKeyFile = p.Issue(t, "server", "127.0.0.1", true)
	p.ClientCertFile, p.ClientKeyFile = p.Issue(t, "client", ClientCommonName, false)
	return p
}

// Issue issues a certificate with common name cn, a server one (for
// 127.0.0.1, ::1 and localhost, also usable by clients) or a client one,
// and returns the files it wrote: name.pem and name-key.pem.
func (p *PKI) Issue(t testing.TB, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	spec := testkit.CertSpec{Subject: pkix.Name{CommonName: cn}, Client: true}
	if server {
		spec.Server = true
		spec.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	certFile, keyFile = filepath.Join(p.Dir, name+".pem"), filepath.Join(p.Dir, name+"-key.pem")
	p.ca.Issue(t, spec).WriteFiles(t, certFile, keyFile)
	return certFile, keyFile
}

// CertPool returns a pool holding the CA.
func (p *PKI) CertPool() *x509.CertPool { return p.ca.Pool() }

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
