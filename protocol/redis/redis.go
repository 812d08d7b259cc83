// Package redis makes Redis connections safe to share: the pool's own
// connection setup (HELLO with AUTH and SETNAME, SELECT) after every dial
// and every reset, a PING probe, and a Session that follows a lease's
// commands and replies (RESP2 and RESP3, inline commands, pipelines, push
// messages) and brings the connection back with RESET.
//
// The reset is a pipeline: RESET, the pool's setup, and a PING carrying a
// random nonce. Replies the client left outstanding (a slow EVAL, a BLPOP,
// a subscription's messages) come first and are discarded; the nonce's
// echo marks the end of the pool's own replies, which no reply the client
// caused can imitate, so the connection goes back to the pool only when
// RESET and every setup command answered, and nothing follows them. RESET
// (Redis 6.2) ends MULTI, WATCH, subscriptions, MONITOR, CLIENT REPLY
// OFF|SKIP, CLIENT TRACKING, READONLY, ASKING, NO-EVICT and NO-TOUCH,
// selects database 0, returns to RESP2, drops the client name and
// authenticates as the default user; the setup then restores the pool's
// own. It does not clear CLIENT SETINFO's library name and version.
package redis

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/poolplane/poolplane/protocol"
	"github.com/poolplane/poolplane/protocol/redis/internal/resp"
)

// Options is the pool's connection setup.
type Options struct {
	// Username and Password authenticate every connection (HELLO ...
	// AUTH). An empty Username with a Password is the "default" user.
	Username, Password string
	// Database is SELECTed when not 0.
	Database int
	// ProtocolVersion is 2 or 3 (HELLO's protover); 0 means 2.
	ProtocolVersion int
	// ClientName is set with HELLO's SETNAME when not empty.
	ClientName string
}

// Handler is a Redis pool's protocol.Handler.
type Handler struct {
	setup      []byte // the setup pipeline
	setupCount int    // its commands
}

var _ protocol.Handler = (*Handler)(nil)

// New returns the Handler for o.
func New(o Options) *Handler {
	h := &Handler{}
	ver := o.ProtocolVersion
	if ver == 0 {
		ver = 2
	}
	if ver != 2 || o.Password != "" || o.ClientName != "" {
		args := []string{"HELLO", strconv.Itoa(ver)}
		if o.Password != "" {
			user := o.Username
			if user == "" {
				user = "default"
			}
			args = append(args, "AUTH", user, o.Password)
		}
		if o.ClientName != "" {
			args = append(args, "SETNAME", o.ClientName)
		}
		h.setup = appendCommand(h.setup, args...)
		h.setupCount++
	}
	if o.Database != 0 {
		h.setup = appendCommand(h.setup, "SELECT", strconv.Itoa(o.Database))
		h.setupCount++
	}
	return h
}

// appendCommand appends args as a RESP array of bulk strings.
func appendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// Setup runs the pool's setup on a new connection and checks each reply.
func (h *Handler) Setup(ctx context.Context, nc net.Conn) (net.Conn, any, error) {
	return nc, nil, h.setup1(ctx, nc)
}

func (h *Handler) setup1(ctx context.Context, nc net.Conn) error {
	if h.setupCount == 0 {
		return nil
	}
	if d, ok := ctx.Deadline(); ok {
		if err := nc.SetDeadline(d); err != nil {
			return err
		}
		defer func() { _ = nc.SetDeadline(time.Time{}) }()
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := nc.Write(h.setup); err != nil {
		return fmt.Errorf("redis setup: %w", err)
	}
	var r replies
	r.want = h.setupCount
	if err := r.read(nc, nil); err != nil {
		return fmt.Errorf("redis setup: %w", err)
	}
	return nil
}

var (
	ping = []byte("*1\r\n$4\r\nPING\r\n")
	pong = []byte("+PONG\r\n")
)

// Probe sends PING and expects +PONG (the same in RESP2 and RESP3).
func (h *Handler) Probe(nc net.Conn) error {
	return Ping(nc)
}

// Ping sends PING on an idle connection and expects +PONG. The caller sets
// the deadline.
func Ping(nc net.Conn) error {
	if _, err := nc.Write(ping); err != nil {
		return err
	}
	var buf [len("+PONG\r\n")]byte
	n, err := readFull(nc, buf[:])
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], pong) {
		return fmt.Errorf("redis: PING answered %q", buf[:n])
	}
	return nil
}

func readFull(nc net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := nc.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// NewSession starts following a lease.
func (h *Handler) NewSession(any) protocol.Session {
	s := &Session{h: h}
	s.req.Commands = true
	s.req.OnMessage = s.onCommand
	s.rep.OnMessage = s.onReply
	return s
}

// Session follows one lease on a Redis connection.
type Session struct {
	h        *Handler
	req, rep resp.Scanner
	sent     int64 // commands the client sent
	answered int64 // replies (not push messages) the client got
	// Why the connection cannot be reset: reqBad is the client
	// direction's (Request's goroutine), repBad the upstream's (Reply's).
	reqBad, repBad error
	// dirty: the client sent a command that is not stateless, so the
	// release resets the connection.
	dirty bool
	// undo are the commands the reset adds after RESET for state RESET
	// leaves (Redis 7.0 keeps CLIENT NO-EVICT and NO-TOUCH): set when the
	// client sent the command that changes it.
	undo undoFlags
}

type undoFlags uint8

const (
	undoNoEvict undoFlags = 1 << iota
	undoNoTouch
	// undoReplySkip: CLIENT REPLY SKIP may be pending, and would swallow
	// RESET's reply; a first RESET takes it.
	undoReplySkip
)

var (
	noEvictOff = appendCommand(nil, "CLIENT", "NO-EVICT", "OFF")
	noTouchOff = appendCommand(nil, "CLIENT", "NO-TOUCH", "OFF")
)

func (s *Session) onCommand(m *resp.Message) {
	s.sent++
	if !s.dirty && !isStateless(m.Name) {
		s.dirty = true
	}
	switch {
	case equalFold(m.Name, "SYNC"), equalFold(m.Name, "PSYNC"), equalFold(m.Name, "REPLCONF"):
		// The connection becomes a replication stream.
		s.reqBad = fmt.Errorf("redis: %s turns the connection into a replica link", strings.ToUpper(string(m.Name)))
	case equalFold(m.Name, "QUIT"):
		s.reqBad = errors.New("redis: the client sent QUIT")
	case equalFold(m.Name, "CLIENT") && equalFold(m.Arg, "NO-EVICT"):
		s.undo |= undoNoEvict
	case equalFold(m.Name, "CLIENT") && equalFold(m.Arg, "NO-TOUCH"):
		s.undo |= undoNoTouch
	case equalFold(m.Name, "CLIENT") && equalFold(m.Arg, "REPLY"):
		s.undo |= undoReplySkip
	}
}

func (s *Session) onReply(m *resp.Message) {
	if m.Type != '>' {
		s.answered++
	}
}

func equalFold(b []byte, name string) bool {
	return len(b) == len(name) && strings.EqualFold(string(b), name)
}

// Request follows client bytes.
func (s *Session) Request(b []byte) int {
	if s.reqBad != nil {
		return len(b)
	}
	if _, err := s.req.Feed(b); err != nil {
		s.reqBad = err
	}
	return len(b)
}

// Reply follows upstream bytes.
func (s *Session) Reply(b []byte) {
	if s.repBad != nil {
		return
	}
	if _, err := s.rep.Feed(b); err != nil {
		s.repBad = err
	}
}

// State reports where the lease stands. A command the client did not
// finish sending cannot be reset: whatever the pool sent would complete it.
func (s *Session) State() protocol.State {
	switch {
	case s.reqBad != nil, s.repBad != nil, !s.req.Idle():
		return protocol.NotResettable
	case s.sent > s.answered || !s.rep.Idle():
		return protocol.Outstanding
	}
	return protocol.Idle
}

// Drained reports that no reply is due to a client that half-closed. After
// CLIENT REPLY OFF or SKIP the count of replies due is unknown: none is
// waited for.
func (s *Session) Drained() bool {
	return s.State() != protocol.Outstanding || s.undo&undoReplySkip != 0
}

// Clean reports that the lease sent only stateless commands and read
// every reply: Reset has nothing to do.
func (s *Session) Clean() bool { return !s.dirty && s.State() == protocol.Idle }

// resetPrefix is the first command of every reset.
var resetPrefix = appendCommand(nil, "RESET")

// nonceLen is the length of the reset's PING argument: 16 random bytes in
// hex, within what the scanner captures of a bulk string.
const nonceLen = 32

// Reset discards outstanding replies, then runs RESET, the pool's setup and
// a PING with a random nonce, and checks their replies.
func (s *Session) Reset(nc net.Conn) error {
	if s.State() == protocol.NotResettable {
		if s.reqBad != nil {
			return s.reqBad
		}
		if s.repBad != nil {
			return s.repBad
		}
		return errors.New("redis: the client left a command unfinished")
	}
	if !s.dirty && s.State() == protocol.Idle {
		// Only stateless commands, every reply read (or nothing sent): the
		// connection is as Setup left it.
		return nil
	}
	var nonce [nonceLen / 2]byte
	_, _ = rand.Read(nonce[:])
	var hexNonce [nonceLen]byte
	hex.Encode(hexNonce[:], nonce[:])

	bp := pipePool.Get().(*[]byte)
	defer pipePool.Put(bp)
	b := (*bp)[:0]
	if s.undo&undoReplySkip != 0 {
		// Its reply, if any, is read as one the client left.
		b = append(b, resetPrefix...)
	}
	b = append(b, resetPrefix...)
	want := s.h.setupCount + 2
	if s.undo&undoNoEvict != 0 {
		b = append(b, noEvictOff...)
		want++
	}
	if s.undo&undoNoTouch != 0 {
		b = append(b, noTouchOff...)
		want++
	}
	b = append(b, s.h.setup...)
	b = appendCommand(b, "PING", string(hexNonce[:]))
	*bp = b
	if _, err := nc.Write(b); err != nil {
		return fmt.Errorf("redis reset: %w", err)
	}
	r := replies{want: want, nonce: hexNonce[:]}
	outstanding := s.State() == protocol.Outstanding
	if err := r.read(nc, &s.rep); err != nil {
		if outstanding && !r.marked {
			return fmt.Errorf("%w: %w", protocol.ErrOutstanding, err)
		}
		return fmt.Errorf("redis reset: %w", err)
	}
	return nil
}

var (
	pipePool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}
	readPool = sync.Pool{New: func() any { return new([4 << 10]byte) }}
)

// replies reads the replies to a pipeline of want commands. With a nonce,
// the pipeline is RESET, setup, PING nonce, after replies the client left:
// the last want messages up to the nonce's echo are the pipeline's.
// Without one, the next want messages are.
type replies struct {
	want   int
	nonce  []byte
	marked bool // the nonce's echo came

	// The last want messages seen: their type and captured first bytes.
	ring []summary
	seen int
	err  error
}

type summary struct {
	typ  byte
	text [resp.MaxName]byte
	n    int
}

func (r *replies) onMessage(m *resp.Message) {
	if r.marked {
		r.err = fmt.Errorf("unexpected %q reply after the pipeline", m.Type)
		return
	}
	if m.Type == '>' {
		return // a push message the client subscribed to
	}
	sm := &r.ring[r.seen%len(r.ring)]
	sm.typ = m.Type
	sm.n = copy(sm.text[:], m.Name)
	r.seen++
	if r.nonce == nil {
		if r.seen == r.want {
			r.marked = true
		}
		return
	}
	if m.Type == '$' && bytes.Equal(m.Name, r.nonce) {
		r.marked = true
	}
}

// read reads until the pipeline's replies came, then checks them. sc is
// the scanner to continue (a lease's, mid-stream), or nil for a fresh one.
func (r *replies) read(nc net.Conn, sc *resp.Scanner) error {
	if sc == nil {
		sc = new(resp.Scanner)
	}
	r.ring = make([]summary, r.want)
	sc.OnMessage = r.onMessage
	bp := readPool.Get().(*[4 << 10]byte)
	defer readPool.Put(bp)
	buf := bp[:]
	for !r.marked || !sc.Idle() {
		n, err := nc.Read(buf)
		if n > 0 {
			if _, ferr := sc.Feed(buf[:n]); ferr != nil {
				return ferr
			}
			if r.err != nil {
				return r.err
			}
		}
		if err != nil {
			if r.marked && sc.Idle() {
				break
			}
			return err
		}
	}
	if r.err != nil {
		return r.err
	}
	if r.seen < r.want {
		return errors.New("fewer replies than commands")
	}
	// The pipeline's replies, oldest first.
	for i := range r.want {
		sm := &r.ring[(r.seen-r.want+i)%r.want]
		text := string(sm.text[:sm.n])
		switch {
		case sm.typ == '-' || sm.typ == '!':
			return fmt.Errorf("%s", replyError(text))
		case i == 0 && r.nonce != nil && (sm.typ != '+' || text != "RESET"):
			return fmt.Errorf("RESET answered %q", string(sm.typ)+text)
		}
	}
	return nil
}

// replyError names a Redis error reply; its first bytes are all a
// Message keeps ("WRONGPASS invalid username-password pair" is cut).
func replyError(text string) string {
	if text == "" {
		return "an error reply"
	}
	return "error reply " + text
}
