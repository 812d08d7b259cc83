// Package resp follows a Redis (RESP2 and RESP3) byte stream at message
// level without copying or re-encoding it: it finds where each top-level
// message ends, tells replies from out-of-band push messages and
// attributes, and hands the relay the first two elements of each command,
// which are what its state tracking needs (MULTI, SUBSCRIBE, CLIENT REPLY,
// SELECT...). Framing follows the protocol specification and go-redis's
// reader (internal/proto/reader.go): every type prefix, null and empty
// aggregates, inline commands.
//
// What the Scanner buffers is bounded: a header line (MaxLine), a command
// name and argument (MaxName each), the nesting depth (MaxDepth). Any
// violation is an error, after which the stream is not trusted: the relay
// closes the connection.
package resp

import (
	"errors"
	"fmt"
)

// Bounds of what the Scanner buffers or accepts.
const (
	// MaxLine bounds a header or simple line (type byte to CRLF), and an
	// inline command.
	MaxLine = 64 << 10
	// MaxDepth bounds the nesting of aggregates.
	MaxDepth = 128
	// MaxName is how much of a command's first two elements is kept for
	// the callback; longer ones are cut (a command name never is that
	// long).
	MaxName = 32
	// maxBulk is Redis's own proto-max-bulk-len ceiling.
	maxBulk = 512 << 20
)

// Message is one complete top-level message, valid during the callback.
type Message struct {
	// Type is the message's RESP type byte: '*' for a command (an inline
	// command too), and for replies '+', '-', ':', '$', '*', '%', '~',
	// '_', ',', '#', '(', '!', '=', and '>' for a push message.
	Type byte
	// Name and Arg are the first two elements of an array of bulk or
	// simple strings (for commands: the command and its first argument),
	// at most MaxName bytes each, as sent (not case-folded). For a
	// top-level simple string, error or bulk string, Name is its first
	// MaxName bytes.
	// Empty otherwise.
	Name, Arg []byte
}

// ErrProtocol is wrapped by every framing error.
var ErrProtocol = errors.New("resp: protocol error")

type state uint8

const (
	stType   state = iota // the next byte is a type prefix (or an inline command)
	stLine                // reading a header or simple line up to LF
	stBulk                // skipping a bulk payload and its CRLF
	stInline              // reading an inline command up to LF
)

// Scanner follows one direction of a RESP stream. The zero value scans
// replies; set Commands to scan the client's direction (inline commands
// allowed). Not safe for concurrent use.
type Scanner struct {
	// Commands: the stream is the client's (arrays of bulk strings or
	// inline commands).
	Commands bool
	// OnMessage, if set, is called for each complete top-level message.
	OnMessage func(*Message)

	state   state
	typ     byte    // the type of the value being read
	lineLen int     // bytes of the current line so far
	num     int64   // the number on a header line
	neg     bool    // the number has a minus sign
	digits  int     // digits of num so far
	bulk    int64   // payload bytes, plus CRLF, left in a bulk
	stack   []int64 // elements left in each open aggregate
	top     byte    // the type of the top-level value being read
	elem    int     // which element of the top-level aggregate is being read
	capWhat int     // the element being captured: 0 name, 1 arg, -1 none

	name, arg   [MaxName]byte
	nameN, argN int
	inTok       bool // inline: inside a token
	tok         int  // inline: tokens started so far
	msg         Message
}

// Feed scans b and reports how many complete top-level messages it ended
// (attributes not counted). An error means the stream broke the protocol
// or a bound; the Scanner is then unusable.
func (s *Scanner) Feed(b []byte) (int, error) {
	n := 0
	for i := 0; i < len(b); {
		switch s.state {
		case stType:
			c := b[i]
			if len(s.stack) == 0 {
				s.top, s.elem, s.nameN, s.argN = c, 0, 0, 0
				if s.Commands && c != '*' {
					if c == '\r' || c == '\n' {
						i++ // empty lines between inline commands
						continue
					}
					s.state, s.lineLen, s.inTok, s.tok = stInline, 0, false, 0
					s.top = '*'
					continue // the byte is the command's first
				}
			}
			if !validType(c) {
				return n, fmt.Errorf("%w: unknown type byte %q", ErrProtocol, c)
			}
			if s.Commands && len(s.stack) > 0 && c != '$' {
				return n, fmt.Errorf("%w: a command element of type %q", ErrProtocol, c)
			}
			s.typ, s.state, s.lineLen, s.num, s.neg, s.digits = c, stLine, 1, 0, false, 0
			s.capWhat = -1
			switch {
			case len(s.stack) == 1 && s.elem < 2 && (s.top == '*' || s.top == '>') && (c == '$' || c == '+'):
				s.capWhat = s.elem
			case len(s.stack) == 0 && (c == '+' || c == '-' || c == '$'):
				s.capWhat = 0 // a top-level string or error: its first bytes
			}
			i++
		case stLine:
			c := b[i]
			i++
			s.lineLen++
			if s.lineLen > MaxLine {
				return n, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, MaxLine)
			}
			switch c {
			case '\n':
				done, err := s.endLine()
				if err != nil {
					return n, err
				}
				if done && s.complete() {
					n++
				}
			case '\r':
			default:
				if err := s.lineByte(c); err != nil {
					return n, err
				}
			}
		case stBulk:
			k := min(int64(len(b)-i), s.bulk)
			if s.capWhat >= 0 {
				// The payload's first bytes, not its CRLF.
				if take := min(k, s.bulk-2); take > 0 {
					s.keep(b[i : i+int(take)])
				}
			}
			i += int(k)
			s.bulk -= k
			if s.bulk == 0 {
				s.state = stType
				if s.complete() {
					n++
				}
			}
		case stInline:
			c := b[i]
			i++
			s.lineLen++
			if s.lineLen > MaxLine {
				return n, fmt.Errorf("%w: inline command longer than %d bytes", ErrProtocol, MaxLine)
			}
			switch c {
			case '\n':
				s.state = stType
				if s.tok > 0 { // a blank line is no command
					s.emit()
					n++
				}
			case ' ', '\t', '\r':
				s.inTok = false
			default:
				if !s.inTok {
					s.inTok = true
					s.tok++
				}
				if s.tok <= 2 {
					s.capWhat = s.tok - 1
					s.keep([]byte{c})
				}
			}
		}
	}
	return n, nil
}

// Idle reports whether the Scanner stands between two top-level messages.
func (s *Scanner) Idle() bool { return s.state == stType && len(s.stack) == 0 }

func validType(c byte) bool {
	switch c {
	case '+', '-', ':', '$', '*', '%', '~', '_', ',', '#', '(', '!', '=', '>', '|':
		return true
	}
	return false
}

// keep appends b to the captured element, within MaxName.
func (s *Scanner) keep(b []byte) {
	switch s.capWhat {
	case 0:
		s.nameN += copy(s.name[s.nameN:], b)
	case 1:
		s.argN += copy(s.arg[s.argN:], b)
	}
}

// lineByte takes one byte of a header or simple line.
func (s *Scanner) lineByte(c byte) error {
	switch s.typ {
	case '$', '*', '%', '~', '>', '|', '!', '=':
		switch {
		case c == '-' && s.digits == 0 && !s.neg:
			s.neg = true
		case c >= '0' && c <= '9' && s.digits < 12:
			s.num = s.num*10 + int64(c-'0')
			s.digits++
		default:
			return fmt.Errorf("%w: bad length byte %q after %q", ErrProtocol, c, s.typ)
		}
	case '+', '-':
		if s.capWhat >= 0 {
			s.keep([]byte{c})
		}
	}
	return nil
}

// endLine finishes a header or simple line; done reports a complete value.
func (s *Scanner) endLine() (done bool, err error) {
	s.state = stType
	switch s.typ {
	case '+', '-', ':', '_', ',', '#', '(':
		return true, nil
	}
	if s.digits == 0 {
		return false, fmt.Errorf("%w: %q with no length", ErrProtocol, s.typ)
	}
	if s.neg {
		if s.num != 1 || (s.typ != '$' && s.typ != '*') {
			return false, fmt.Errorf("%w: negative length for %q", ErrProtocol, s.typ)
		}
		return true, nil // RESP2's null bulk string or null array
	}
	switch s.typ {
	case '$', '!', '=':
		if s.num > maxBulk {
			return false, fmt.Errorf("%w: bulk of %d bytes", ErrProtocol, s.num)
		}
		s.bulk = s.num + 2
		s.state = stBulk
		return false, nil
	}
	count := s.num
	if s.typ == '%' || s.typ == '|' {
		count *= 2
	}
	if count == 0 {
		return true, nil
	}
	if len(s.stack) >= MaxDepth {
		return false, fmt.Errorf("%w: nesting deeper than %d", ErrProtocol, MaxDepth)
	}
	s.stack = append(s.stack, count)
	return false, nil
}

// complete records the end of a value and reports whether it ended a
// top-level message other than an attribute.
func (s *Scanner) complete() bool {
	for len(s.stack) > 0 {
		if len(s.stack) == 1 {
			s.elem++
		}
		s.stack[len(s.stack)-1]--
		if s.stack[len(s.stack)-1] > 0 {
			return false
		}
		s.stack = s.stack[:len(s.stack)-1]
	}
	if s.top == '|' {
		return false // an attribute: the reply it describes follows
	}
	if s.Commands && s.elem == 0 {
		return false // *0 or *-1: Redis runs nothing and answers nothing
	}
	s.emit()
	return true
}

// emit hands the complete top-level message to OnMessage.
func (s *Scanner) emit() {
	if s.OnMessage == nil {
		return
	}
	s.msg = Message{Type: s.top, Name: s.name[:s.nameN], Arg: s.arg[:s.argN]}
	s.OnMessage(&s.msg)
}
