package postgres

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/poolplane/poolplane/protocol"
)

// Codes of the messages the client may open with.
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
	protocolVersion30 = 196608
)

// Session follows one lease. Greet, Request, State and Reset run on the
// client's writing side (never concurrently), Reply on the upstream reader.
type Session struct {
	h  *Handler
	st *ConnState

	// The opening.
	opening []byte // the client's opening so far (bounded by maxOpening)
	greeted int    // bytes of opening already answered (SSLRequests)
	used    bool   // something ran on the connection this lease

	// Client to server (Request).
	req        scanner
	unsynced   bool // extended-protocol messages without their Sync
	reqBroken  bool // the client broke the protocol
	terminated bool // the client sent Terminate
	sent       int  // queries, Syncs and function calls sent
	// Server to client (Reply).
	rep       scanner
	answered  int  // ReadyForQuery messages seen
	tx        byte // the last ReadyForQuery's transaction status
	copying   bool // a COPY is under way
	repBroken bool // the server stream broke the protocol (or CopyBoth)
}

var _ protocol.Greeter = (*Session)(nil)

// scanner follows a stream of typed messages (a type byte, an int32
// length including itself, the body) without keeping their bodies: only
// the header and a message's first body byte.
type scanner struct {
	hdr   [5]byte
	nhdr  int  // header bytes seen of the current message
	left  int  // body bytes still to skip
	typ   byte // the current message's type
	first bool // the first body byte is still to come
}

// feed follows b: it calls msg with each message's type as the message
// starts (at is its offset in b) and first with a message's first body
// byte. msg returns false to stop before the message; feed returns the
// number of bytes consumed.
func (s *scanner) feed(b []byte, msg func(typ byte, at int) bool, first func(typ, c byte)) (int, error) {
	i := 0
	for i < len(b) {
		if s.left > 0 {
			if s.first {
				first(s.typ, b[i])
				s.first = false
			}
			k := min(s.left, len(b)-i)
			s.left -= k
			i += k
			continue
		}
		if s.nhdr == 0 && !msg(b[i], i) {
			return i, nil
		}
		k := copy(s.hdr[s.nhdr:], b[i:])
		s.nhdr += k
		i += k
		if s.nhdr < len(s.hdr) {
			break
		}
		s.nhdr = 0
		s.typ = s.hdr[0]
		n := be32(s.hdr[1:])
		if n < 4 {
			return i, fmt.Errorf("postgres: message %q with length %d", s.typ, n)
		}
		s.left = n - 4
		s.first = s.left > 0
	}
	return i, nil
}

// partial reports whether the stream stopped inside a message.
func (s *scanner) partial() bool { return s.nhdr > 0 || s.left > 0 }

// Request follows client messages. It returns the offset of a Terminate,
// which the pool answers itself by ending the lease.
func (s *Session) Request(b []byte) int {
	if s.reqBroken || s.terminated {
		if s.terminated {
			return 0
		}
		return len(b)
	}
	stopAt := -1
	_, err := s.req.feed(b, func(typ byte, at int) bool {
		if typ != 'X' {
			s.used = true
		}
		switch typ {
		case 'Q', 'F':
			s.sent++
		case 'S':
			s.sent++
			s.unsynced = false
		case 'P', 'B', 'E', 'D', 'C', 'H':
			s.unsynced = true
		case 'd', 'c', 'f':
			// COPY data from the client.
		case 'X':
			s.terminated = true
			stopAt = at
			return false
		default:
			s.reqBroken = true
		}
		return true
	}, func(byte, byte) {})
	if err != nil {
		s.reqBroken = true
	}
	if stopAt >= 0 {
		return stopAt
	}
	return len(b)
}

// Reply follows server messages.
func (s *Session) Reply(b []byte) {
	if s.repBroken {
		return
	}
	_, err := s.rep.feed(b, func(typ byte, _ int) bool {
		switch typ {
		case 'Z':
			s.answered++
			s.copying = false
		case 'G', 'H':
			s.copying = true
		case 'W':
			s.repBroken = true // streaming replication
		}
		return true
	}, func(typ, c byte) {
		if typ == 'Z' {
			s.tx = c
		}
	})
	if err != nil {
		s.repBroken = true
	}
}

// State reports where the lease stands: NotResettable after a protocol
// error, inside a message, during a COPY or replication; Outstanding while
// a query, Sync or function call has no ReadyForQuery yet, or
// extended-protocol messages wait for their Sync; Idle otherwise (in a
// transaction or not: Reset ends it).
func (s *Session) State() protocol.State {
	switch {
	case s.reqBroken || s.repBroken || s.req.partial() || s.rep.partial() || s.copying:
		return protocol.NotResettable
	case s.answered < s.sent || s.unsynced:
		return protocol.Outstanding
	}
	return protocol.Idle
}

// Drained reports that no reply is to come to a client that half-closed:
// every query, Sync and function call has its ReadyForQuery, or the stream
// broke, or a COPY runs (the server would wait for COPY data that cannot
// come, or stream COPY data to a client about to be reset). Messages
// without their Sync get no reply until it comes, which it will not.
func (s *Session) Drained() bool {
	return s.answered >= s.sent || s.reqBroken || s.repBroken || s.copying
}

// Clean reports that the client ran nothing (only its startup): Reset has
// nothing to do.
func (s *Session) Clean() bool { return !s.used }

// Reset drains what the client left outstanding (sending the Sync its
// extended-protocol messages lack, failing a COPY FROM STDIN that starts
// meanwhile), rolls back an open transaction (or, with
// CloseOpenTransactions, fails), and runs the reset query. A session that
// ran nothing resets without I/O. A failed reset forgets the connection's
// backend key.
func (s *Session) Reset(nc net.Conn) error {
	if !s.used {
		return nil
	}
	err := s.reset(nc)
	if err != nil {
		s.h.forget(s.st)
	}
	return err
}

func (s *Session) reset(nc net.Conn) error {
	if st := s.State(); st == protocol.NotResettable {
		return errors.New("postgres: the session cannot be reset")
	}
	fe := s.st.frontend(nc)
	if s.unsynced {
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
		}
		s.sent++
		s.unsynced = false
	}
	if s.answered < s.sent && s.st != nil {
		// A query still running when its client left: cancel it unless it
		// ends within cancelAfter, rather than wait out reset_timeout and
		// close the connection (the server would go on running it).
		stop, cancelled := make(chan struct{}), make(chan error, 1)
		go s.cancelUntil(stop, cancelled)
		err := s.drain(fe)
		// Every cancel sent has reached the server before anything else
		// runs on the connection: a backend that gets it while idle
		// ignores it, one that gets it during the reset query fails the
		// reset (which closes the connection); it never reaches the next
		// client's query. One the server did not confirm might: the
		// connection is closed.
		close(stop)
		if cerr := <-cancelled; err == nil && cerr != nil {
			err = fmt.Errorf("postgres reset: %w", cerr)
		}
		if err != nil {
			return err
		}
	}
	n := 1
	if s.tx == 'T' || s.tx == 'E' {
		if s.h.o.CloseOpenTransactions {
			return errors.New("postgres: released inside a transaction")
		}
		fe.Send(&pgproto3.Query{String: "ROLLBACK"})
		n++
	}
	fe.Send(&pgproto3.Query{String: s.h.o.ResetQuery})
	// The reset query (DISCARD ALL) brings the startup parameters back to
	// the connection's own; the client's are set again in the same round
	// trip, for the next client asking for the same (ConnState.applied).
	if q := applyQuery(s.st, nil, s.st.applied); q != "" {
		fe.Send(&pgproto3.Query{String: q})
		n++
	}
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("postgres reset: %w", err)
	}
	if _, err := readResults(fe, n, s.st.reported); err != nil {
		return fmt.Errorf("postgres reset: %w", err)
	}
	return nil
}

// cancelAfter is how long a query its client left running may go on
// before the reset cancels it; cancelEvery bounds how often the cancel
// goes again while the query still runs.
const (
	cancelAfter = 10 * time.Millisecond
	cancelEvery = 500 * time.Millisecond
)

// cancelUntil cancels the backend's query cancelAfter from now, and again
// at growing intervals up to cancelEvery until stop is closed (the
// replies were drained, or the reset's deadline passed): a backend ignores
// a cancel that reaches it before it has read the query (a loaded server
// runs it after), and a query may outlive one (PL/pgSQL that catches
// query_canceled). Once no cancel is in flight it sends done the first
// error of a cancel the server may still act on (errCancelUnconfirmed),
// or nil.
func (s *Session) cancelUntil(stop <-chan struct{}, done chan<- error) {
	var unconfirmed error
	defer func() { done <- unconfirmed }()
	wait := cancelAfter
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		select {
		case <-stop:
			return // both were ready: the drain is done, no cancel is due
		default:
		}
		if err := s.h.cancel(s.st.addr, s.st.name, s.st.PID, s.st.Secret); errors.Is(err, errCancelUnconfirmed) && unconfirmed == nil {
			unconfirmed = err
		}
		wait = min(4*wait, cancelEvery)
		t.Reset(wait)
	}
}

// drain reads and discards the replies still due, failing a COPY FROM
// STDIN the client left, until every Query and Sync has its
// ReadyForQuery.
func (s *Session) drain(fe *pgproto3.Frontend) error {
	for s.answered < s.sent {
		msg, err := fe.Receive()
		if err != nil {
			return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			s.answered++
			s.tx = m.TxStatus
		case *pgproto3.CopyInResponse:
			fe.Send(&pgproto3.CopyFail{Message: "the client left during COPY"})
			if err := fe.Flush(); err != nil {
				return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
			}
		case *pgproto3.CopyBothResponse:
			return fmt.Errorf("%w: replication started", protocol.ErrOutstanding)
		}
	}
	return nil
}

// Greet answers the client's opening: an SSLRequest or GSSEncRequest gets
// "N" (the lease is the secure channel), a CancelRequest is forwarded (see
// the package comment) and refused, and a StartupMessage for the pool's
// user and database is answered with AuthenticationOk, the connection's
// parameters (after SETting those the client asked for that differ),
// its backend key and ReadyForQuery. Any other user or database gets a
// FATAL ErrorResponse, as do a replication connection and the "options"
// parameter. Greet sets no deadline on nc for the SETs: the relay's cut
// bounds them. A connection whose SETs failed is NotResettable.
func (s *Session) Greet(nc net.Conn, b []byte) ([]byte, int, bool, error) {
	prev := len(s.opening)
	if prev+len(b) > maxOpening {
		return errorResponse("08P01", "startup packet too long"), 0, false, errors.New("postgres: startup packet too long")
	}
	s.opening = append(s.opening, b...)
	var reply []byte
	off := s.greeted
	for {
		rest := s.opening[off:]
		if len(rest) < 8 {
			s.greeted = off
			return reply, len(b), false, nil
		}
		n := be32(rest)
		if n < 8 || n > maxOpening {
			return append(reply, errorResponse("08P01", "invalid startup packet length")...), 0, false,
				fmt.Errorf("postgres: startup packet length %d", n)
		}
		if len(rest) < n {
			s.greeted = off
			return reply, len(b), false, nil
		}
		msg := rest[:n]
		off += n
		code := uint32(be32(msg[4:]))
		switch code {
		case sslRequestCode, gssEncRequestCode:
			reply = append(reply, 'N')
			continue
		case cancelRequestCode:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(msg[4:]); err != nil {
				return nil, 0, false, fmt.Errorf("postgres cancel request: %w", err)
			}
			if addr, name, ok := s.h.lookup(cr.ProcessID, cr.SecretKey); ok {
				if err := s.h.cancel(addr, name, cr.ProcessID, cr.SecretKey); err != nil {
					return nil, 0, false, fmt.Errorf("postgres cancel: %w", err)
				}
				return nil, 0, false, errors.New("postgres: cancel request forwarded")
			}
			return nil, 0, false, errors.New("postgres: cancel request for an unknown backend")
		}
		var sm pgproto3.StartupMessage
		if err := sm.Decode(msg[4:]); err != nil {
			return append(reply, errorResponse("08P01", "unsupported startup message")...), 0, false,
				fmt.Errorf("postgres startup: %w", err)
		}
		out, err := s.startup(nc, &sm)
		reply = append(reply, out...)
		if err != nil {
			return reply, 0, false, err
		}
		s.opening, s.greeted = nil, 0
		return reply, off - prev, true, nil
	}
}

// startup answers a StartupMessage.
func (s *Session) startup(nc net.Conn, sm *pgproto3.StartupMessage) ([]byte, error) {
	p := sm.Parameters
	if u := p["user"]; u != s.h.o.User {
		return errorResponse("28000", fmt.Sprintf("this pool serves user %q, not %q", s.h.o.User, u)),
			fmt.Errorf("postgres startup: user %q", u)
	}
	d := p["database"]
	if d == "" {
		d = p["user"] // as the server: the database defaults to the user's name
	}
	if d != s.h.o.Database {
		return errorResponse("3D000", fmt.Sprintf("this pool serves database %q, not %q", s.h.o.Database, d)),
			fmt.Errorf("postgres startup: database %q", d)
	}
	if r, ok := p["replication"]; ok && !isFalse(r) {
		return errorResponse("0A000", "replication connections are not pooled"),
			errors.New("postgres startup: replication")
	}
	if o := strings.TrimSpace(p["options"]); o != "" {
		return errorResponse("0A000", "the startup parameter \"options\" is not supported by the pool; set parameters as startup parameters"),
			errors.New("postgres startup: options")
	}
	// want: the client's startup parameters; the connection keeps those
	// that differ from its own startup values (ConnState.applied).
	want := map[string]string{}
	var unknown []string
	for k, v := range p {
		switch {
		case k == "user" || k == "database" || k == "replication" || k == "options":
		case strings.HasPrefix(k, "_pq_."):
			unknown = append(unknown, k)
		default:
			want[k] = v
		}
	}
	sort.Strings(unknown)
	var out []byte
	if sm.ProtocolVersion != protocolVersion30 || len(unknown) > 0 {
		out, _ = (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}).Encode(out)
	}
	if q := applyQuery(s.st, s.st.applied, want); q != "" {
		s.used = true
		fe := s.st.frontend(nc)
		fe.Send(&pgproto3.Query{String: q})
		err := fe.Flush()
		if err == nil {
			_, err = readResults(fe, 1, s.st.reported)
		}
		if err != nil {
			s.repBroken = true // the connection is closed, whatever happened
			return errorResponse("22023", fmt.Sprintf("startup parameters: %v", err)),
				fmt.Errorf("postgres startup parameters: %w", err)
		}
	}
	applied := map[string]string{}
	for k, v := range want {
		if cur, ok := s.st.Params[k]; !ok || cur != v {
			applied[k] = v
		}
	}
	s.st.applied = applied
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	return append(out, s.st.greetingTail()...), nil
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}
