// Package postgres pools PostgreSQL connections in session mode, as
// PgBouncer's pool_mode=session: the pool connects and authenticates each
// connection with its own credentials (pgx's pgconn: SCRAM-SHA-256, md5,
// password or trust, optionally over TLS), answers each client's startup
// itself (replaying the connection's parameters and backend key), follows
// the lease's messages, and at release drains what the client left
// outstanding, rolls back an open transaction and runs the reset query
// (DISCARD ALL by default).
//
// Cancel requests: every connection's backend key (PID and secret) is kept
// in its Handler's registry. A client's CancelRequest is looked up there
// and, when it names one of the pool's backends, forwarded on a fresh
// connection to the same server address (over TLS when the pool's SSLMode
// asks for it, as libpq does), never on a pooled connection; the client
// gets no reply, as from a server. The registry holds the maxKeys keys
// most recently set up or leased (so a lease's key stays while it runs);
// a key is removed when its connection fails a reset, and otherwise ages
// out. A stale key is harmless: the server ignores a cancel whose secret
// does not match a live backend.
package postgres

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/poolplane/poolplane/protocol"
)

// SSL modes, as libpq's sslmode.
const (
	SSLDisable    = "disable"
	SSLRequire    = "require"
	SSLVerifyFull = "verify-full"
)

// DefaultResetQuery is run at every release when Options.ResetQuery is
// empty.
const DefaultResetQuery = "DISCARD ALL"

// Options is the pool's connection setup.
type Options struct {
	// Database and User every connection starts with; clients must ask for
	// the same ones.
	Database, User string
	// Password authenticates User (the pool's, never the client's).
	Password string
	// SSLMode is SSLDisable (or empty), SSLRequire (TLS, the server not
	// verified) or SSLVerifyFull (TLS verified against CAPEM, or the
	// system roots when empty).
	SSLMode string
	// CAPEM holds the CA certificates for SSLVerifyFull.
	CAPEM string
	// ServerName is the name verified in the server's certificate with
	// SSLVerifyFull. Empty: the host of the dialed address, which is the
	// IP the engine dialed (so the certificate must carry that IP).
	ServerName string
	// Params are startup parameters (application_name, search_path...).
	Params map[string]string
	// ResetQuery runs at every release; empty: DefaultResetQuery. It must
	// bring session parameters back to their defaults (DISCARD ALL and
	// RESET ALL do): the pool replays the connection's startup parameters
	// to every client.
	ResetQuery string
	// CloseOpenTransactions closes a connection released inside a
	// transaction instead of rolling it back.
	CloseOpenTransactions bool
}

// maxKeys bounds the cancel registry of one Handler: the backend keys of
// the connections set up or leased most recently.
const maxKeys = 4096

// maxOpening bounds the client's opening (SSLRequest and StartupMessage).
const maxOpening = 10 << 10

// Handler is a PostgreSQL pool's protocol.Handler. Safe for concurrent
// use.
type Handler struct {
	o         Options
	tlsConfig *tls.Config // nil: SSLDisable; ServerName filled per connection
	tlsErr    error       // a bad CAPEM, reported by Setup

	mu sync.Mutex // protects keys and lru
	// keys maps a backend key to its element in lru.
	keys map[backendKey]*list.Element
	// lru holds *keyEntry values, the most recently used last.
	lru list.List
}

type keyEntry struct {
	key  backendKey
	addr string // the server's address
	name string // the name its TLS certificate is verified for
}

var _ protocol.Handler = (*Handler)(nil)

type backendKey struct {
	pid    uint32
	secret string
}

// New returns the Handler for o.
func New(o Options) *Handler {
	if o.ResetQuery == "" {
		o.ResetQuery = DefaultResetQuery
	}
	h := &Handler{o: o, keys: make(map[backendKey]*list.Element)}
	switch o.SSLMode {
	case "", SSLDisable:
	case SSLRequire:
		h.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // sslmode=require does not verify, as libpq
	case SSLVerifyFull:
		h.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
		if o.CAPEM != "" {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM([]byte(o.CAPEM)) {
				h.tlsErr = errors.New("postgres: ca_pem holds no certificate")
			}
			h.tlsConfig.RootCAs = pool
		}
	default:
		h.tlsErr = fmt.Errorf("postgres: unknown ssl mode %q", o.SSLMode)
	}
	return h
}

// ConnState is what Setup learned of a connection, for its sessions.
type ConnState struct {
	// Params are the ParameterStatus values the server reported at
	// startup. Read-only.
	Params map[string]string
	// reported are the ParameterStatus values in force now, and applied
	// the startup parameters a lease's client asked for that the
	// connection keeps beyond its own startup values: the reset sets them
	// again after the reset query, so that the next client asking for the
	// same ones (every pgbench, every instance of a service) needs no
	// round trip of its own. A client that asks for other values, or for
	// none, gets its own or the startup ones at its startup. Both belong
	// to the connection's one session at a time.
	reported, applied map[string]string
	// PID and Secret are the backend key.
	PID    uint32
	Secret []byte
	addr   string
	name   string // the server name TLS verifies

	// fe speaks on feConn, the connection's net.Conn, for the pool's own
	// round trips (startup SETs, resets): kept for the connection's life,
	// and so its buffers. Every such round trip reads through the last
	// ReadyForQuery, so it holds no bytes between them.
	fe     *pgproto3.Frontend
	feConn net.Conn
	// greeting is the encoded tail of the greeting (the parameters in
	// greetParams, the backend key, ReadyForQuery), built again when
	// reported no longer equals greetParams.
	greeting    []byte
	greetParams map[string]string
}

// frontend returns the connection's Frontend on nc.
func (st *ConnState) frontend(nc net.Conn) *pgproto3.Frontend {
	if st.fe == nil || st.feConn != nc {
		st.fe, st.feConn = pgproto3.NewFrontend(nc, nc), nc
	}
	return st.fe
}

// greetingTail returns what follows AuthenticationOk in the greeting: a
// ParameterStatus for each parameter in force, the backend key and
// ReadyForQuery (idle). The caller must not change it.
func (st *ConnState) greetingTail() []byte {
	if st.greeting != nil && maps.Equal(st.greetParams, st.reported) {
		return st.greeting
	}
	var out []byte
	for _, k := range sortedKeys(st.reported) {
		out, _ = (&pgproto3.ParameterStatus{Name: k, Value: st.reported[k]}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: st.PID, SecretKey: st.Secret}).Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	st.greeting, st.greetParams = out, maps.Clone(st.reported)
	return out
}

// connTLS returns the TLS configuration for a connection to host.
func (h *Handler) connTLS(host string) *tls.Config {
	if h.tlsConfig == nil {
		return nil
	}
	c := h.tlsConfig.Clone()
	if c.ServerName == "" && !c.InsecureSkipVerify {
		c.ServerName = host
	}
	return c
}

// Setup starts up and authenticates on nc with pgconn and returns the
// connection to use (a TLS session over nc with SSLMode require or
// verify-full) and its *ConnState.
func (h *Handler) Setup(ctx context.Context, nc net.Conn) (net.Conn, any, error) {
	if h.tlsErr != nil {
		return nil, nil, h.tlsErr
	}
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, nil, fmt.Errorf("postgres config: %w", err)
	}
	host, portStr, err := net.SplitHostPort(nc.RemoteAddr().String())
	if err != nil {
		return nil, nil, fmt.Errorf("postgres address: %w", err)
	}
	port, _ := strconv.ParseUint(portStr, 10, 16)
	cfg.Host, cfg.Port = host, uint16(port)
	cfg.User, cfg.Password, cfg.Database = h.o.User, h.o.Password, h.o.Database
	cfg.RuntimeParams = make(map[string]string, len(h.o.Params))
	for k, v := range h.o.Params {
		cfg.RuntimeParams[k] = v
	}
	name := protocol.EndpointHost(ctx) // the endpoint's name, not the address dialed
	if name == "" {
		name = host
	}
	cfg.TLSConfig = h.connTLS(name)
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = 0
	cfg.SSLNegotiation = ""
	cfg.MinProtocolVersion, cfg.MaxProtocolVersion = "3.0", "3.0" // 4-byte keys, what every client expects
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{host}, nil }
	var once sync.Once
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) {
		var c net.Conn
		once.Do(func() { c = nc })
		if c == nil {
			return nil, errors.New("postgres: the connection was already used")
		}
		return c, nil
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres startup: %w", err)
	}
	// As pgconn asks before Hijack: its background reader (started when
	// a write is slow, as during a loaded startup) may still be in a Read
	// that would take the first reply meant for the relay. SyncConn waits
	// it out and drains pgconn's buffers; when neither is there, it does
	// no I/O.
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(ctx)
		return nil, nil, fmt.Errorf("postgres startup: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("postgres startup: %w", err)
	}
	if err := hc.Conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	st := &ConnState{Params: hc.ParameterStatuses, PID: hc.PID, Secret: hc.SecretKey, addr: nc.RemoteAddr().String(), name: name}
	if st.Params == nil {
		st.Params = map[string]string{}
	}
	h.register(st)
	return hc.Conn, st, nil
}

// register records (or refreshes) st's backend key in the cancel
// registry, evicting the least recently used key beyond maxKeys.
func (h *Handler) register(st *ConnState) {
	k := backendKey{st.PID, string(st.Secret)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.keys[k]; ok {
		h.lru.MoveToBack(e)
		return
	}
	h.keys[k] = h.lru.PushBack(&keyEntry{key: k, addr: st.addr, name: st.name})
	if h.lru.Len() > maxKeys {
		old := h.lru.Remove(h.lru.Front()).(*keyEntry)
		delete(h.keys, old.key)
	}
}

// forget removes st's backend key from the registry (its connection is
// about to be closed).
func (h *Handler) forget(st *ConnState) {
	k := backendKey{st.PID, string(st.Secret)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.keys[k]; ok {
		h.lru.Remove(e)
		delete(h.keys, k)
	}
}

func (h *Handler) lookup(pid uint32, secret []byte) (addr, name string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.keys[backendKey{pid, string(secret)}]
	if !ok {
		return "", "", false
	}
	ke := e.Value.(*keyEntry)
	return ke.addr, ke.name, true
}

// Probe runs SELECT 1 and expects its ReadyForQuery, idle. The caller sets
// the deadline.
func (h *Handler) Probe(nc net.Conn) error {
	return simpleQuery(nc, "SELECT 1")
}

// simpleQuery runs one simple query on an idle connection and expects
// success and an idle ReadyForQuery.
func simpleQuery(nc net.Conn, sql string) error {
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		return err
	}
	_, err := readResults(fe, 1, nil)
	return err
}

// readResults reads messages until n ReadyForQuery arrived and returns the
// last one's status; an ErrorResponse is returned (after its
// ReadyForQuery) as a *pgconn.PgError, and the last status must then be
// anything. params, when not nil, receives ParameterStatus values.
func readResults(fe *pgproto3.Frontend, n int, params map[string]string) (byte, error) {
	var firstErr error
	var status byte
	for n > 0 {
		msg, err := fe.Receive()
		if err != nil {
			return 0, err
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			n--
			status = m.TxStatus
		case *pgproto3.ErrorResponse:
			if firstErr == nil {
				firstErr = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ParameterStatus:
			if params != nil {
				params[m.Name] = m.Value
			}
		case *pgproto3.CopyInResponse, *pgproto3.CopyOutResponse, *pgproto3.CopyBothResponse:
			return 0, errors.New("postgres: unexpected COPY")
		}
	}
	if firstErr != nil {
		return status, firstErr
	}
	if status != 'I' {
		return status, fmt.Errorf("postgres: transaction status %q after the query", status)
	}
	return status, nil
}

// NewSession starts following a lease on a connection whose Setup returned
// state (a *ConnState).
func (h *Handler) NewSession(state any) protocol.Session {
	st, _ := state.(*ConnState)
	if st == nil {
		st = &ConnState{Params: map[string]string{}}
	} else {
		h.register(st)
	}
	if st.reported == nil {
		st.reported = maps.Clone(st.Params)
		if st.reported == nil {
			st.reported = map[string]string{}
		}
	}
	return &Session{h: h, st: st, tx: 'I'}
}

// quoteIdent quotes s as an SQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// applyQuery returns the statements that bring the connection's startup
// parameters from what is in force (the startup values, and applied) to
// want: set_config for each parameter want gives another value, RESET for
// each applied one want does not give. "" when nothing is to change.
func applyQuery(st *ConnState, applied, want map[string]string) string {
	var stmts []string
	for _, k := range sortedKeys(want) {
		cur, ok := applied[k]
		if !ok {
			cur, ok = st.Params[k]
		}
		if !ok || cur != want[k] {
			stmts = append(stmts, "SELECT pg_catalog.set_config("+quoteLiteral(k)+", "+quoteLiteral(want[k])+", false)")
		}
	}
	for _, k := range sortedKeys(applied) {
		if _, ok := want[k]; !ok {
			stmts = append(stmts, "RESET "+quoteIdent(k))
		}
	}
	return strings.Join(stmts, "; ")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// errCancelUnconfirmed is cancel's error for a request that may have been
// sent but that the server did not confirm (by closing the connection)
// within cancelTimeout: it may still act on it later.
var errCancelUnconfirmed = errors.New("postgres cancel: the server did not confirm the request")

// cancelTimeout bounds one cancel request, from the dial to the server's
// close.
const cancelTimeout = 5 * time.Second

// cancel forwards a CancelRequest for a backend of addr on a fresh
// connection (over TLS when the pool's SSLMode asks for it), and waits
// for the server to close it, which it does once it has signalled the
// backend. An error wraps errCancelUnconfirmed when the request may have
// been sent without that close.
func (h *Handler) cancel(addr, name string, pid uint32, secret []byte) error {
	ctx, stop := context.WithTimeout(context.Background(), cancelTimeout)
	defer stop()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	dl, _ := ctx.Deadline()
	if err := c.SetDeadline(dl); err != nil {
		return err
	}
	if tc := h.connTLS(name); tc != nil {
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		if _, err := c.Write(req); err != nil {
			return err
		}
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			return err
		}
		if b[0] != 'S' {
			return errors.New("postgres cancel: the server refused TLS")
		}
		c = tls.Client(c, tc)
	}
	req, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("%w: %w", errCancelUnconfirmed, err)
	}
	// The server closes the connection once it has signalled the backend
	// (EOF, or a reset); only the deadline leaves that unknown.
	var b [1]byte
	if _, err := c.Read(b[:]); errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w within %s", errCancelUnconfirmed, cancelTimeout)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (an E'...' literal when it
// holds a backslash, so that it reads the same whatever
// standard_conforming_strings says).
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return ` E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return "'" + s + "'"
}

// errorResponse encodes a FATAL ErrorResponse.
func errorResponse(code, msg string) []byte {
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	return b
}

// be32 reads a big-endian int32 length.
func be32(b []byte) int { return int(int32(binary.BigEndian.Uint32(b))) }
