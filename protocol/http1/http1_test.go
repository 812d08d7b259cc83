package http1

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/protocol"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// An exchange is a sequence of steps: ">" prefixes client bytes, "<"
// upstream bytes.
type exchange struct {
	name  string
	steps []string
	want  protocol.State
	err   error // the reason for NotResettable, when one is checked
}

const (
	get     = ">GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	head    = ">HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
	ok5     = "<HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
	ok0     = "<HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	chunked = "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5;name=value;q=\"a b\"\r\nhello\r\n" +
		"A \r\n0123456789\r\n" +
		"0;last\r\nExpires: never\r\nX-Checksum: 1\r\n\r\n"
)

func exchanges() []exchange {
	big := strings.Repeat("x", maxHeader)
	pipelined := func(n int) string {
		return ">" + strings.Repeat(get[1:], n)
	}
	return []exchange{
		{name: "nothing", want: protocol.Idle},
		{name: "GET", steps: []string{get, ok5}, want: protocol.Idle},
		{name: "GET no response", steps: []string{get}, want: protocol.Outstanding},
		{name: "GET status line", steps: []string{get, "<HTTP/1.1 200 OK\r\n"}, want: protocol.Outstanding},
		{name: "GET part of body", steps: []string{get, "<HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"}, want: protocol.Outstanding},
		{name: "GET no reason", steps: []string{get, "<HTTP/1.1 200\r\ncontent-length:  2 \r\n\r\nhi"}, want: protocol.Idle},
		{name: "GET empty reason", steps: []string{get, "<HTTP/1.1 404 \r\nContent-Length:0\r\n\r\n"}, want: protocol.Idle},
		{name: "part of a request line", steps: []string{">GET / HT"}, want: protocol.NotResettable, err: errUnfinished},
		{name: "part of headers", steps: []string{">GET / HTTP/1.1\r\nHost: a\r\n"}, want: protocol.NotResettable, err: errUnfinished},
		{name: "pipelined", steps: []string{pipelined(3), ok5, ok0, chunked}, want: protocol.Idle},
		{name: "pipelined one due", steps: []string{pipelined(3), ok5, ok0}, want: protocol.Outstanding},
		{name: "pipeline full", steps: []string{pipelined(maxPipeline)}, want: protocol.Outstanding},
		{name: "pipeline overflow", steps: []string{pipelined(maxPipeline + 1)}, want: protocol.NotResettable, err: errPipeline},
		{name: "pipeline drains", steps: []string{pipelined(maxPipeline), "<" + strings.Repeat(ok0[1:], maxPipeline), get, ok5}, want: protocol.Idle},
		{name: "HEAD with Content-Length", steps: []string{head, "<HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"}, want: protocol.Idle},
		{name: "HEAD chunked", steps: []string{head, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}, want: protocol.Idle},
		{name: "HEAD then GET", steps: []string{head, get, "<HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", ok5}, want: protocol.Idle},
		{name: "HEAD no length", steps: []string{head, "<HTTP/1.1 200 OK\r\n\r\n"}, want: protocol.Idle},
		{name: "304 with Content-Length", steps: []string{get, "<HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", get, ok5}, want: protocol.Idle},
		{name: "204 with Content-Length", steps: []string{get, "<HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"}, want: protocol.Idle},
		{name: "chunked response", steps: []string{get, chunked}, want: protocol.Idle},
		{name: "chunked response cut", steps: []string{get, chunked[:len(chunked)-2]}, want: protocol.Outstanding},
		{name: "chunked response upper hex", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1A\r\n" + strings.Repeat("z", 26) + "\r\n0\r\n\r\n"}, want: protocol.Idle},
		{name: "gzip, chunked", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"}, want: protocol.Idle},
		{name: "chunked, gzip", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"}, want: protocol.NotResettable, err: errTE},
		{name: "chunked twice", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"}, want: protocol.NotResettable, err: errTE},
		{name: "gzip only", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"}, want: protocol.NotResettable, err: errTE},
		{name: "chunk data without CRLF", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nzz\r\n0\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "chunk size not hex", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nz\r\n0\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "chunk size too long", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("0", 16) + "1\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "chunk line too long", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + strings.Repeat("e", maxChunkLine) + "\r\n"}, want: protocol.NotResettable, err: errChunkLine},
		{name: "chunked request", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n0\r\nTrailer-A: 1\r\n\r\n", ok0}, want: protocol.Idle},
		{name: "chunked request cut", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n0\r\n", ok0}, want: protocol.NotResettable, err: errUnfinished},
		{name: "POST", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", ok5}, want: protocol.Idle},
		{name: "POST body cut", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab", ok5}, want: protocol.NotResettable, err: errUnfinished},
		{name: "100-continue", steps: []string{">PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "<HTTP/1.1 100 Continue\r\n\r\n", ">abc", ok5}, want: protocol.Idle},
		{name: "100-continue waiting", steps: []string{">PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "<HTTP/1.1 100 Continue\r\n\r\n", ">abc"}, want: protocol.Outstanding},
		{name: "100-continue refused", steps: []string{">PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "<HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"}, want: protocol.NotResettable, err: errUnfinished},
		{name: "100-continue refused, body sent", steps: []string{">PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "<HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n", ">abc"}, want: protocol.Idle},
		{name: "early response", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na", "<HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", ">bc", get, ok5}, want: protocol.Idle},
		{name: "103 then 200", steps: []string{get, "<HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", ok5}, want: protocol.Idle},
		{name: "103 only", steps: []string{get, "<HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"}, want: protocol.Outstanding},
		{name: "101", steps: []string{get, "<HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"}, want: protocol.NotResettable, err: errSwitched},
		{name: "Upgrade request", steps: []string{">GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"}, want: protocol.NotResettable, err: errUpgrade},
		{name: "CONNECT", steps: []string{">CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "<HTTP/1.1 200 OK\r\n\r\n"}, want: protocol.NotResettable, err: errConnect},
		{name: "Connection: close request", steps: []string{">GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", ok5}, want: protocol.NotResettable, err: errCloseReq},
		{name: "Connection: close response", steps: []string{get, "<HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n"}, want: protocol.NotResettable, err: errCloseResp},
		{name: "Connection: closed", steps: []string{get, "<HTTP/1.1 200 OK\r\nConnection: closed, close d\r\nContent-Length: 0\r\n\r\n"}, want: protocol.Idle},
		{name: "HTTP/1.0 request", steps: []string{">GET / HTTP/1.0\r\n\r\n"}, want: protocol.NotResettable, err: errCloseReq},
		{name: "HTTP/1.0 keep-alive request", steps: []string{">GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ok5}, want: protocol.Idle},
		{name: "HTTP/1.0 response", steps: []string{get, "<HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"}, want: protocol.NotResettable, err: errCloseResp},
		{name: "HTTP/1.0 keep-alive response", steps: []string{get, "<HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"}, want: protocol.Idle},
		{name: "HTTP/1.0 chunked", steps: []string{get, "<HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"}, want: protocol.NotResettable, err: errTE10},
		{name: "HTTP/2.0", steps: []string{">GET / HTTP/2.0\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "close-delimited", steps: []string{get, "<HTTP/1.1 200 OK\r\n\r\nhello"}, want: protocol.NotResettable, err: errCloseBody},
		{name: "close-delimited 404", steps: []string{get, "<HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n"}, want: protocol.NotResettable, err: errCloseBody},
		{name: "smuggling CL+TE request", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}, want: protocol.NotResettable, err: errLengthAndTE},
		{name: "smuggling TE+CL request", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"}, want: protocol.NotResettable, err: errLengthAndTE},
		{name: "CL+TE response", steps: []string{get, "<HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"}, want: protocol.NotResettable, err: errLengthAndTE},
		{name: "duplicate CL", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"}, want: protocol.NotResettable, err: errDupLength},
		{name: "conflicting CL", steps: []string{get, "<HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 5\r\n\r\n"}, want: protocol.NotResettable, err: errDupLength},
		{name: "CL list", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"}, want: protocol.NotResettable, err: errMalformed},
		{name: "CL sign", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"}, want: protocol.NotResettable, err: errMalformed},
		{name: "CL empty", steps: []string{">POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "CL huge", steps: []string{get, "<HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "headers at the bound", steps: []string{">GET / HTTP/1.1\r\nX: " + big[:maxHeader-len("GET / HTTP/1.1\r\nX: \r\n\r\n")] + "\r\n\r\n", ok0}, want: protocol.Idle},
		{name: "headers at the bound twice", steps: []string{">GET / HTTP/1.1\r\nX: " + big[:maxHeader-len("GET / HTTP/1.1\r\nX: \r\n\r\n")] + "\r\n\r\n", ok0, ">GET / HTTP/1.1\r\nX: " + big[:maxHeader-len("GET / HTTP/1.1\r\nX: \r\n\r\n")] + "\r\n\r\n", ok0}, want: protocol.Idle},
		{name: "response headers at the bound twice", steps: []string{get, get, "<HTTP/1.1 200 OK\r\nX: " + big[:maxHeader-len("HTTP/1.1 200 OK\r\nX: \r\nContent-Length: 0\r\n\r\n")] + "\r\nContent-Length: 0\r\n\r\n", "<HTTP/1.1 200 OK\r\nX: " + big[:maxHeader-len("HTTP/1.1 200 OK\r\nX: \r\n\r\n")] + "\r\n\r\n"}, want: protocol.NotResettable, err: errCloseBody},
		{name: "oversized request headers", steps: []string{">GET / HTTP/1.1\r\nX: " + big + "\r\n\r\n"}, want: protocol.NotResettable, err: errHeaderTooLong},
		{name: "oversized response headers", steps: []string{get, "<HTTP/1.1 200 OK\r\nX: " + big + "\r\n\r\n"}, want: protocol.NotResettable, err: errHeaderTooLong},
		{name: "oversized trailers", steps: []string{get, "<HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + big + "\r\n\r\n"}, want: protocol.NotResettable, err: errHeaderTooLong},
		{name: "long request target", steps: []string{">GET /" + big + " HTTP/1.1\r\n"}, want: protocol.NotResettable, err: errHeaderTooLong},
		{name: "unsolicited", steps: []string{ok5}, want: protocol.NotResettable, err: errUnsolicited},
		{name: "extra response", steps: []string{get, ok5 + ok5[1:]}, want: protocol.NotResettable, err: errUnsolicited},
		{name: "bare LF", steps: []string{">GET / HTTP/1.1\nHost: a\n\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "bare LF in header", steps: []string{get, "<HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "obs-fold", steps: []string{get, "<HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "space before colon", steps: []string{">GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc"}, want: protocol.NotResettable, err: errMalformed},
		{name: "NUL in value", steps: []string{">GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "leading CRLF", steps: []string{">\r\nGET / HTTP/1.1\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "status 099", steps: []string{get, "<HTTP/1.1 099 X\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "status 2000", steps: []string{get, "<HTTP/1.1 2000 X\r\n\r\n"}, want: protocol.NotResettable, err: errMalformed},
		{name: "long method", steps: []string{">PROPPATCHES / HTTP/1.1\r\nHost: a\r\n\r\n", ok5}, want: protocol.Idle},
		{name: "method HEADX", steps: []string{">HEADX / HTTP/1.1\r\nHost: a\r\n\r\n", ok5}, want: protocol.Idle},
	}
}

// run feeds e's steps in pieces of step bytes (0: whole).
func run(e exchange, step int) *Session {
	s := newSession()
	for _, st := range e.steps {
		feed := func(b []byte) { s.Request(b) }
		if st[0] == '<' {
			feed = s.Reply
		}
		b := []byte(st[1:])
		if step == 0 {
			feed(b)
			continue
		}
		for i := 0; i < len(b); i += step {
			feed(b[i:min(i+step, len(b))])
		}
	}
	return s
}

func TestExchanges(t *testing.T) {
	for _, e := range exchanges() {
		for _, step := range []int{0, 1, 2, 3, 7} {
			t.Run(fmt.Sprintf("%s/%d", e.name, step), func(t *testing.T) {
				s := run(e, step)
				if got := s.State(); got != e.want {
					t.Fatalf("State() = %v (%v), want %v", got, s.why(), e.want)
				}
				if e.err != nil && !errors.Is(s.why(), e.err) {
					t.Fatalf("reason %v, want %v", s.why(), e.err)
				}
			})
		}
	}
}

// TestSplitEverywhere feeds each exchange's steps cut at every position
// in two and checks the state is the same as fed whole.
func TestSplitEverywhere(t *testing.T) {
	for _, e := range exchanges() {
		if len(strings.Join(e.steps, "")) > 4<<10 {
			continue
		}
		want := run(e, 0)
		for i, st := range e.steps {
			for cut := 1; cut < len(st)-1; cut++ {
				steps := append(append(append([]string(nil), e.steps[:i]...), st[:cut+1], st[:1]+st[cut+1:]), e.steps[i+1:]...)
				s := run(exchange{steps: steps}, 0)
				if s.State() != want.State() || !errors.Is(s.why(), want.why()) || s.rep.messages != want.rep.messages {
					t.Fatalf("%s cut at step %d byte %d: %v (%v), want %v (%v)", e.name, i, cut, s.State(), s.why(), want.State(), want.why())
				}
			}
		}
	}
}

// TestConnectResponse checks the response framer's own view of CONNECT:
// a 2xx opens a tunnel, anything else is an ordinary response.
func TestConnectResponse(t *testing.T) {
	connect := ">CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
	s := run(exchange{steps: []string{connect, "<HTTP/1.1 200 Connection Established\r\n\r\n"}}, 0)
	if !errors.Is(s.rep.err, errTunnel) {
		t.Fatalf("2xx to CONNECT: %v, want %v", s.rep.err, errTunnel)
	}
	s = run(exchange{steps: []string{connect, "<HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno"}}, 0)
	if s.rep.err != nil || s.rep.messages != 1 || s.State() != protocol.NotResettable {
		t.Fatalf("407 to CONNECT: %v, %d messages, %v", s.rep.err, s.rep.messages, s.State())
	}
}
