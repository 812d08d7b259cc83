package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// This file authenticates callers: a bearer token (compared by its SHA-256
// hash, in constant time) or a verified mTLS client certificate (subject or
// SAN) names a Principal from the auth file. authz.go decides what the
// principal may call.

// Role is what a principal may do (DESIGN.md "Security"). The permission of
// each RPC is declared in methodPermissions (authz.go).
type Role string

// Roles.
const (
	// RoleAdmin may call everything.
	RoleAdmin Role = "admin"
	// RoleOperator may read pools and leases, watch stats, and drain,
	// pause, resume, reconnect pools and revoke leases; it cannot create,
	// update, delete, apply or roll back pools, nor lease.
	RoleOperator Role = "operator"
	// RoleViewer may read pools, leases, revisions and stats.
	RoleViewer Role = "viewer"
	// RoleClient may lease and read stats, of the pools its Pools patterns
	// match (every pool without patterns).
	RoleClient Role = "client"
)

// roles lists the valid roles.
var roles = []Role{RoleAdmin, RoleOperator, RoleViewer, RoleClient}

// Principal is an authenticated caller, one entry of the auth file
// (--auth-file):
//
//	principals:
//	  - name: deploy-bot
//	    token_sha256: 2bb80d5...   # hex SHA-256 of the token: poold hash-token
//	    role: admin
//	  - name: payments
//	    mtls_subject: "CN=payments,O=Acme"   # or just "payments" (the CN)
//	    role: client
//	    pools: ["payments-*", "redis-payments"]
//	    max_leases: 200
//
// A principal needs a token hash, an mTLS identity, or both. Principals are
// immutable once loaded; the handlers see them through PrincipalFromContext.
type Principal struct {
	// Name identifies the principal in history (the actor of every change)
	// and in logs. Unique.
	Name string `yaml:"name"`
	// TokenSHA256 is the lowercase hex SHA-256 of the bearer token (never
	// the token itself). Unique.
	TokenSHA256 string `yaml:"token_sha256"`
	// MTLSSubject matches a verified client certificate's subject: the full
	// RFC 2253 distinguished name as Go prints it ("CN=payments,O=Acme")
	// when it contains "=", otherwise the common name.
	MTLSSubject string `yaml:"mtls_subject"`
	// MTLSSAN matches any subject alternative name of a verified client
	// certificate: a DNS name, an email address, an IP address or a URI
	// ("spiffe://acme/payments").
	MTLSSAN string `yaml:"mtls_san"`
	// Role is admin, operator, viewer or client.
	Role Role `yaml:"role"`
	// Pools are glob patterns (path.Match: "*", "?", "[a-z]") of the pool
	// IDs a client principal may lease and read stats of; empty means
	// every pool. Only the client role takes patterns.
	Pools []string `yaml:"pools"`
	// MaxLeases caps the leases the principal holds at once (across every
	// stream and connection of this poold); 0 means no cap. A lease beyond
	// it fails with RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED.
	MaxLeases int `yaml:"max_leases"`

	// revoked ends when an Authenticator.Update removes or changes this
	// principal; nil for a principal no Authenticator loaded (a custom
	// AuthFunc's), which is never revoked.
	revoked context.Context
	revoke  context.CancelFunc
	// caps counts its leases toward MaxLeases: its Authenticator's count,
	// which pool listeners share with Lease streams; nil for a custom
	// AuthFunc's principal, counted by the lease service alone.
	caps *leaseCaps
}

// revokedc returns a channel closed once p is revoked (see revoked), or
// nil (never closed) for a nil or unrevocable principal.
func (p *Principal) revokedc() <-chan struct{} {
	if p == nil || p.revoked == nil {
		return nil
	}
	return p.revoked.Done()
}

// sameGrant reports whether p and q are the same entry of the auth file:
// same name, credentials, role, pool patterns and lease cap.
func (p *Principal) sameGrant(q *Principal) bool {
	return p.Name == q.Name && strings.EqualFold(p.TokenSHA256, q.TokenSHA256) && p.MTLSSubject == q.MTLSSubject &&
		p.MTLSSAN == q.MTLSSAN && p.Role == q.Role && slices.Equal(p.Pools, q.Pools) && p.MaxLeases == q.MaxLeases
}

// allowsPool reports whether p may lease, and read the stats of, pool id.
func (p *Principal) allowsPool(id string) bool {
	if len(p.Pools) == 0 {
		return true
	}
	for _, pat := range p.Pools {
		if ok, _ := path.Match(pat, id); ok {
			return true
		}
	}
	return false
}

// authFile is the YAML shape of --auth-file.
type authFile struct {
	Principals []Principal `yaml:"principals"`
}

// ParseAuthFile parses an auth file (see Principal) and checks every
// principal; errors name the offending entry. An empty list is an error:
// it would lock every caller out.
func ParseAuthFile(data []byte) ([]Principal, error) {
	var f authFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	if len(f.Principals) == 0 {
		return nil, errors.New("auth file: no principals: every call would be refused")
	}
	if _, err := newAuthTable(f.Principals); err != nil {
		return nil, err
	}
	return f.Principals, nil
}

// LoadAuthFile reads and parses an auth file.
func LoadAuthFile(name string) ([]Principal, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	ps, err := ParseAuthFile(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ps, nil
}

// HashToken returns the token_sha256 of a bearer token: the lowercase hex
// of its SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// authTable is one loaded set of principals.
type authTable struct {
	principals []*Principal
	hashes     [][sha256.Size]byte // hashes[i] is principals[i]'s token hash
	hasToken   []bool
}

func newAuthTable(ps []Principal) (*authTable, error) {
	t := &authTable{}
	names := map[string]bool{}
	idents := map[string]string{}
	for i := range ps {
		p := ps[i] // copy: the table owns its principals
		p.Pools = append([]string(nil), p.Pools...)
		where := fmt.Sprintf("principals[%d]", i)
		if p.Name != "" {
			where += " (" + p.Name + ")"
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("auth file: %s: %s", where, fmt.Sprintf(format, args...))
		}
		switch {
		case p.Name == "":
			return nil, bad("name is required")
		case names[p.Name]:
			return nil, bad("duplicate name")
		case p.TokenSHA256 == "" && p.MTLSSubject == "" && p.MTLSSAN == "":
			return nil, bad("needs token_sha256, mtls_subject or mtls_san")
		case !validRole(p.Role):
			return nil, bad("role %q: want admin, operator, viewer or client", p.Role)
		case len(p.Pools) > 0 && p.Role != RoleClient:
			return nil, bad("pools applies to the client role only")
		case p.MaxLeases < 0:
			return nil, bad("max_leases must not be negative")
		}
		names[p.Name] = true
		for j, pat := range p.Pools {
			pat = strings.TrimPrefix(pat, "pools/")
			if _, err := path.Match(pat, ""); err != nil || pat == "" {
				return nil, bad("pools[%d] %q: not a glob pattern", j, pat)
			}
			p.Pools[j] = pat
		}
		var h [sha256.Size]byte
		if p.TokenSHA256 != "" {
			b, err := hex.DecodeString(p.TokenSHA256)
			if err != nil || len(b) != sha256.Size {
				return nil, bad("token_sha256 must be 64 hex digits (the SHA-256 of the token; see poold hash-token), not the token")
			}
			copy(h[:], b)
		}
		var ids []string
		if p.TokenSHA256 != "" {
			ids = append(ids, "token_sha256:"+hex.EncodeToString(h[:]))
		}
		if p.MTLSSubject != "" {
			ids = append(ids, "mtls_subject:"+p.MTLSSubject)
		}
		if p.MTLSSAN != "" {
			ids = append(ids, "mtls_san:"+p.MTLSSAN)
		}
		for _, id := range ids {
			if other, dup := idents[id]; dup {
				return nil, bad("same %s as %s", strings.SplitN(id, ":", 2)[0], other)
			}
			idents[id] = p.Name
		}
		p.revoked, p.revoke = context.WithCancel(context.Background())
		t.principals = append(t.principals, &p)
		t.hashes = append(t.hashes, h)
		t.hasToken = append(t.hasToken, p.TokenSHA256 != "")
	}
	return t, nil
}

func validRole(r Role) bool {
	for _, v := range roles {
		if r == v {
			return true
		}
	}
	return false
}

// byToken returns the principal whose token hash matches token's, or nil.
// It compares against every principal, in constant time per comparison,
// so the time taken does not tell how much of a hash matched.
func (t *authTable) byToken(token string) *Principal {
	sum := sha256.Sum256([]byte(token))
	var found *Principal
	for i, h := range t.hashes {
		if subtle.ConstantTimeCompare(h[:], sum[:]) == 1 && t.hasToken[i] {
			found = t.principals[i]
		}
	}
	return found
}

// byCert returns the principal mapped to a verified client certificate, or
// nil.
func (t *authTable) byCert(c *x509.Certificate) *Principal {
	subject := c.Subject.String()
	for _, p := range t.principals {
		if s := p.MTLSSubject; s != "" {
			if (strings.Contains(s, "=") && s == subject) || (!strings.Contains(s, "=") && s == c.Subject.CommonName) {
				return p
			}
		}
		if san := p.MTLSSAN; san != "" && certHasSAN(c, san) {
			return p
		}
	}
	return nil
}

func certHasSAN(c *x509.Certificate, san string) bool {
	for _, n := range c.DNSNames {
		if n == san {
			return true
		}
	}
	for _, n := range c.EmailAddresses {
		if n == san {
			return true
		}
	}
	for _, ip := range c.IPAddresses {
		if ip.String() == san {
			return true
		}
	}
	for _, u := range c.URIs {
		if u.String() == san {
			return true
		}
	}
	return false
}

// Authenticator authenticates calls against a set of principals, which
// Update replaces at runtime (poold reloads the auth file on SIGHUP). Its
// methods are safe for concurrent use.
type Authenticator struct {
	table atomic.Pointer[authTable]
	mu    sync.Mutex // serialises Update
	// caps counts each principal's leases, by name, across reloads: Lease
	// streams and pool listeners alike.
	caps leaseCaps
}

// NewAuthenticator returns an Authenticator over ps. It returns an error
// for an invalid principal (see ParseAuthFile).
func NewAuthenticator(ps []Principal) (*Authenticator, error) {
	a := &Authenticator{}
	if err := a.Update(ps); err != nil {
		return nil, err
	}
	return a, nil
}

// Update replaces the principals; lease caps count on by principal name.
// A principal whose entry is unchanged carries on as it was. A principal
// removed or changed is revoked: the streams it opened are authenticated
// again with their credentials (server.New sees to it), and end when
// they no longer authenticate or no longer have the permission they use:
// Lease streams at once when idle or holding a lease of a pool no longer
// allowed, and otherwise at their next open; other streams at once. Unary
// calls in progress finish as the principal they authenticated as. On
// error the previous principals stay.
func (a *Authenticator) Update(ps []Principal) error {
	t, err := newAuthTable(ps)
	if err != nil {
		return err
	}
	for _, p := range t.principals {
		p.caps = &a.caps
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.table.Load()
	kept := map[*Principal]bool{}
	if old != nil {
		byName := make(map[string]*Principal, len(old.principals))
		for _, p := range old.principals {
			byName[p.Name] = p
		}
		for i, p := range t.principals {
			if o := byName[p.Name]; o != nil && o.sameGrant(p) {
				p.revoke() // the new copy is never used
				t.principals[i] = o
				kept[o] = true
			}
		}
	}
	a.table.Store(t)
	if old != nil {
		for _, p := range old.principals {
			if !kept[p] {
				p.revoke()
			}
		}
	}
	return nil
}

// Authenticate is the go-grpc-middleware auth.AuthFunc: it finds the
// principal of a call and returns ctx carrying it (see
// PrincipalFromContext). A call with an "authorization: Bearer <token>"
// header is that token's principal (a wrong token fails even over mTLS);
// otherwise a verified client certificate names the principal. It returns
// UNAUTHENTICATED (reason UNAUTHENTICATED) when neither identifies one.
func (a *Authenticator) Authenticate(ctx context.Context) (context.Context, error) {
	t := a.table.Load()
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("authorization")) > 0 {
		token, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil {
			return nil, unauthenticated(`malformed authorization header: want "Bearer <token>"`)
		}
		p := t.byToken(token)
		if p == nil {
			return nil, unauthenticated("invalid bearer token")
		}
		return ContextWithPrincipal(ctx, p), nil
	}
	if cert := verifiedClientCert(ctx); cert != nil {
		p := t.byCert(cert)
		if p == nil {
			return nil, unauthenticated(fmt.Sprintf("client certificate %q is not mapped to a principal", cert.Subject.String()))
		}
		return ContextWithPrincipal(ctx, p), nil
	}
	return nil, unauthenticated("credentials required: a bearer token or a client certificate")
}

// verifiedClientCert returns the leaf of the call's verified client
// certificate chain, or nil (no TLS, no certificate, or not verified
// against --tls-client-ca).
func verifiedClientCert(ctx context.Context) *x509.Certificate {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

func unauthenticated(msg string) error {
	return newStatus(codes.Unauthenticated, poolv1.ErrorReason_UNAUTHENTICATED, msg, nil)
}

type principalKey struct{}

// ContextWithPrincipal returns ctx carrying p, for a custom Config.AuthFunc
// that wants roles enforced.
func ContextWithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFromContext returns the principal a call authenticated as, or
// nil when authentication is off (or a custom AuthFunc stored none).
func PrincipalFromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// actorFromContext names who makes a request, for the pools' history and
// the audit log: the authenticated principal's name, or "anonymous".
func actorFromContext(ctx context.Context) string {
	if p := PrincipalFromContext(ctx); p != nil {
		return p.Name
	}
	return anonymous
}

// anonymous is the actor of requests without an authenticated principal.
const anonymous = "anonymous"

// ListenerGrant is what AuthorizeLease grants the client of a pool
// listener.
type ListenerGrant struct {
	// Holder is the principal's name, for ListLeases.
	Holder string
	// Revoked ends when an Update removes or changes the principal: the
	// client must be authorized again, as Lease streams are.
	Revoked context.Context
	// Release takes the lease off the principal's max_leases count; call
	// it once, when the connection ends. Safe to call more than once.
	Release func()
}

// AuthorizeLease maps a verified client certificate to its principal and
// checks that it may lease pool id: what a pool listener with tls asks of
// each client (the role admin, or client with the pool among its
// patterns), counting the connection toward the principal's max_leases
// with its Lease streams' leases.
func (a *Authenticator) AuthorizeLease(cert *x509.Certificate, id string) (ListenerGrant, error) {
	p := a.table.Load().byCert(cert)
	if p == nil {
		return ListenerGrant{}, fmt.Errorf("client certificate %q maps to no principal", cert.Subject.String())
	}
	if !roleAllows(p.Role, permLease) {
		return ListenerGrant{}, fmt.Errorf("principal %s (role %s) may not lease connections", p.Name, p.Role)
	}
	if !p.allowsPool(id) {
		return ListenerGrant{}, fmt.Errorf("principal %s may not lease pool %s", p.Name, id)
	}
	n, err := a.caps.take(p)
	if err != nil {
		return ListenerGrant{}, errors.New(status.Convert(err).Message())
	}
	g := ListenerGrant{Holder: p.Name, Revoked: p.revoked, Release: func() {}}
	if n != nil {
		var once sync.Once
		g.Release = func() { once.Do(func() { n.Add(-1) }) }
	}
	return g, nil
}
