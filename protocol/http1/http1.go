// Package http1 follows HTTP/1.1 exchanges on a pooled connection: a
// streaming framer for each direction finds where every request and
// response ends (RFC 9112 §6: Content-Length, chunked bodies with
// extensions and trailers, HEAD, 1xx interim responses, 204 and 304), so
// the pool knows at release whether the connection stands at a message
// boundary with every response complete, has responses still due (which
// Reset reads and discards), or cannot be reused at all.
//
// A connection cannot be reused (protocol.NotResettable) after a CONNECT
// or an Upgrade request, a 101 response or a 2xx response to CONNECT (the
// connection is a tunnel), a response whose body ends when the connection
// closes, Connection: close on either side or HTTP/1.0 without keep-alive,
// a request the client did not finish sending, and after anything the
// framer does not accept: malformed start lines or header fields,
// obsolete line folding, bare LF line endings, duplicate Content-Length,
// Content-Length with Transfer-Encoding (the request smuggling guard),
// Transfer-Encoding other than chunked last, Transfer-Encoding in an
// HTTP/1.0 message, a start line and header block (or a trailer block)
// over 64 KiB, a chunk-size line over 4 KiB, more than 1024 requests
// pipelined ahead of their responses, and upstream bytes when no request
// is outstanding.
//
// A Session copies none of the stream: each framer is a byte-level state
// machine of fixed size that skips bodies in bulk.
package http1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/poolplane/poolplane/protocol"
)

const (
	// maxHeader bounds a start line with its header block, and a trailer
	// block.
	maxHeader = 64 << 10
	// maxChunkLine bounds a chunk-size line with its extensions.
	maxChunkLine = 4 << 10
	// maxPipeline bounds the requests sent whose final response has not
	// completed.
	maxPipeline = 1024
	// maxCLDigits bounds a Content-Length (below 10^18).
	maxCLDigits = 18
	// maxChunkDigits bounds a chunk size (below 16^15).
	maxChunkDigits = 15
)

// Why a connection cannot be reused. Each is final for its Session.
var (
	errMalformed     = errors.New("http1: malformed message")
	errHeaderTooLong = errors.New("http1: start line and header fields over 64 KiB")
	errChunkLine     = errors.New("http1: chunk-size line over 4 KiB")
	errPipeline      = errors.New("http1: more than 1024 requests outstanding")
	errDupLength     = errors.New("http1: duplicate Content-Length")
	errLengthAndTE   = errors.New("http1: Content-Length with Transfer-Encoding")
	errTE            = errors.New("http1: Transfer-Encoding other than chunked last")
	errTE10          = errors.New("http1: Transfer-Encoding in an HTTP/1.0 message")
	errConnect       = errors.New("http1: CONNECT turns the connection into a tunnel")
	errUpgrade       = errors.New("http1: an Upgrade request")
	errSwitched      = errors.New("http1: 101 Switching Protocols")
	errTunnel        = errors.New("http1: a 2xx response to CONNECT opened a tunnel")
	errCloseReq      = errors.New("http1: the request asks the server to close the connection")
	errCloseResp     = errors.New("http1: the response closes the connection")
	errCloseBody     = errors.New("http1: a response body delimited by the connection's close")
	errUnsolicited   = errors.New("http1: upstream bytes with no request outstanding")
	errUnfinished    = errors.New("http1: the client left a request unfinished")
)

// Handler is an HTTP/1.1 pool's protocol.Handler. Safe for concurrent use.
type Handler struct{}

var _ protocol.Handler = (*Handler)(nil)

// New returns the HTTP/1.1 handler.
func New() *Handler { return &Handler{} }

// Setup does nothing: HTTP/1.1 has no connection setup.
func (*Handler) Setup(_ context.Context, nc net.Conn) (net.Conn, any, error) { return nc, nil, nil }

// Probe sends HEAD / on an idle connection and requires one complete 2xx
// or 3xx response that keeps the connection open, and nothing after it.
// The caller sets nc's deadline.
func (*Handler) Probe(nc net.Conn) error {
	host := "localhost"
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		host = a.String()
	}
	req := []byte("HEAD / HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: poolplane-health\r\n\r\n")
	s := newSession()
	s.Request(req)
	if _, err := nc.Write(req); err != nil {
		return fmt.Errorf("http1 probe: %w", err)
	}
	if err := s.drain(nc); err != nil {
		return fmt.Errorf("http1 probe: %w", err)
	}
	if st := s.rep.lastStatus; st < 200 || st >= 400 {
		return fmt.Errorf("http1 probe: HEAD / answered %d", st)
	}
	return nil
}

// NewSession starts following a lease.
func (*Handler) NewSession(any) protocol.Session { return newSession() }

func newSession() *Session {
	s := &Session{}
	s.req.isReq = true
	s.req.q = &s.q
	s.rep.q = &s.q
	return s
}

// Session follows one lease on an HTTP/1.1 connection. Request and Reply
// may run concurrently with each other (they share only the queue of
// outstanding requests, under its mutex); State and Reset must not run
// concurrently with either.
type Session struct {
	q   queue
	req parser // client to upstream; only Request touches it
	rep parser // upstream to client; only Reply (or Reset) touches it
}

var _ protocol.Session = (*Session)(nil)

// Request follows client bytes about to be written to the upstream.
func (s *Session) Request(b []byte) int {
	s.req.feed(b)
	return len(b)
}

// Reply follows upstream bytes about to be delivered to the client.
func (s *Session) Reply(b []byte) { s.rep.feed(b) }

// State reports where the lease stands: NotResettable after any of the
// cases in the package comment, Outstanding while a request sent has no
// complete final response, Idle when every request has one and both
// directions stand at a message boundary.
func (s *Session) State() protocol.State {
	if s.why() != nil {
		return protocol.NotResettable
	}
	if s.q.len() > 0 || s.rep.st != sStart {
		return protocol.Outstanding
	}
	return protocol.Idle
}

// why returns the reason the connection cannot be reused, or nil.
func (s *Session) why() error {
	switch {
	case s.req.err != nil:
		return s.req.err
	case s.rep.err != nil:
		return s.rep.err
	case s.req.st != sStart:
		return errUnfinished
	}
	return nil
}

// Clean reports that the exchange stands at a boundary: Reset has nothing
// to do.
func (s *Session) Clean() bool { return s.State() == protocol.Idle }

// Reset returns nil at once when the lease is Idle. When responses are
// still due, it reads and discards them until every request has its final
// response; an error wraps protocol.ErrOutstanding when reading failed
// before that (the deadline the caller set passed, or the upstream
// closed). Any other error means the connection cannot be reused: the
// lease was NotResettable, a response turned out to be one (a close-
// delimited body, Connection: close, 101), or bytes followed the last
// response.
func (s *Session) Reset(nc net.Conn) error {
	if s.State() == protocol.Idle {
		return nil
	}
	if err := s.drain(nc); err != nil {
		return fmt.Errorf("http1 reset: %w", err)
	}
	return nil
}

// drain reads from nc into the response framer until the session is Idle.
func (s *Session) drain(nc net.Conn) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		switch s.State() {
		case protocol.Idle:
			return nil
		case protocol.NotResettable:
			return s.why()
		}
		n, err := nc.Read(buf)
		s.rep.feed(buf[:n])
		if err != nil && s.State() == protocol.Outstanding {
			return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// Request flags, kept for each outstanding request: what its response's
// framing depends on.
const (
	fHead    uint8 = 1 << iota // a HEAD request: its response has no body
	fConnect                   // a CONNECT request
)

// queue is the FIFO of outstanding requests: the request framer pushes
// each request when its request line ends, the response framer pops it
// when its final response ends.
type queue struct {
	mu      sync.Mutex // protects the following fields
	head, n int
	flags   [maxPipeline]uint8
}

func (q *queue) push(f uint8) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == maxPipeline {
		return false
	}
	q.flags[(q.head+q.n)%maxPipeline] = f
	q.n++
	return true
}

// peek returns the oldest outstanding request's flags, if any.
func (q *queue) peek() (uint8, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return 0, false
	}
	return q.flags[q.head], true
}

func (q *queue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		panic("http1: internal error: a response completed with no request outstanding")
	}
	q.head = (q.head + 1) % maxPipeline
	q.n--
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
