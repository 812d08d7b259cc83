package http1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/protocol"
)

// seeds returns the exchanges' steps in one direction, without the
// direction's prefix, short enough for a corpus.
func seeds(dir byte) [][]byte {
	var out [][]byte
	for _, e := range exchanges() {
		for _, st := range e.steps {
			if st[0] == dir && len(st) < 4<<10 {
				out = append(out, []byte(st[1:]))
			}
		}
	}
	return out
}

// outcome is what a framer made of a stream.
type outcome struct {
	state    protocol.State
	why      error
	messages int
}

func outcomeOf(s *Session, p *parser) outcome {
	return outcome{s.State(), s.why(), p.messages}
}

// pipelinedRequests is what FuzzResponses answers: three requests.
func pipelinedRequests(head bool) []byte {
	m := "GET"
	if head {
		m = "HEAD"
	}
	return []byte(strings.Repeat(m+" / HTTP/1.1\r\nHost: a\r\n\r\n", 3))
}

// frame feeds data to a new session's framer for dir ('>' requests, '<'
// responses, after pipelinedRequests(head)) in pieces of step bytes (0:
// whole). It returns the outcome and, fed byte by byte, the length of the
// first message (-1 when none completed before the stream ended or broke).
func frame(t *testing.T, dir byte, head bool, data []byte, step int) (outcome, int) {
	t.Helper()
	s := newSession()
	p, feed := &s.req, func(b []byte) { s.Request(b) }
	if dir == '<' {
		s.Request(pipelinedRequests(head))
		p, feed = &s.rep, s.Reply
	}
	first := -1
	if step == 0 {
		feed(data)
	}
	for i := 0; step > 0 && i < len(data); i += step {
		feed(data[i:min(i+step, len(data))])
		if step == 1 && first < 0 && p.messages > 0 {
			first = i + 1
		}
	}
	// Bounded: the framers hold only fixed-size state.
	if s.q.len() > maxPipeline || s.req.n > maxHeader || s.rep.n > maxHeader {
		t.Fatalf("bounds broken: %d queued, %d and %d header bytes", s.q.len(), s.req.n, s.rep.n)
	}
	if p.messages > 0 && first < 0 && step == 1 {
		t.Fatal("messages counted but no first message end")
	}
	return outcomeOf(s, p), first
}

// checkSplits checks that data framed whole and in pieces of any size come
// to the same outcome, and returns the first message's length.
func checkSplits(t *testing.T, dir byte, head bool, data []byte) (outcome, int) {
	t.Helper()
	want, _ := frame(t, dir, head, data, 0)
	var first int
	for _, step := range []int{1, 2, 3, 7, 64} {
		got, f := frame(t, dir, head, data, step)
		if got != want {
			t.Fatalf("fed in steps of %d: %+v, whole: %+v", step, got, want)
		}
		if step == 1 {
			first = f
		}
	}
	return want, first
}

// firstMessage frames data byte by byte and stops at the end of its first
// message or where the framer gave up; it returns that length (-1 when no
// message completed) and the framer's error.
func firstMessage(dir byte, head bool, data []byte) (int, error) {
	s := newSession()
	p, feed := &s.req, func(b []byte) { s.Request(b) }
	if dir == '<' {
		s.Request(pipelinedRequests(head))
		p, feed = &s.rep, s.Reply
	}
	for i := range data {
		feed(data[i : i+1])
		if p.err != nil {
			return -1, p.err
		}
		if p.messages > 0 {
			return i + 1, nil
		}
	}
	return -1, nil
}

// diffResponse checks the framer against net/http: when http.ReadResponse
// parses data's first response and its body reads to the end, a response
// net/http would close the connection after (Connection: close, HTTP/1.0,
// a body delimited by the close) must leave the framer NotResettable, and
// any other must end where net/http's ended, unless the framer rejected
// it (it is the stricter of the two).
func diffResponse(t *testing.T, head bool, data []byte) {
	t.Helper()
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	rd := bytes.NewReader(data)
	br := bufio.NewReader(rd)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return
	}
	consumed := len(data) - rd.Len() - br.Buffered()
	end, ferr := firstMessage('<', head, data)
	switch {
	case resp.Close && ferr == nil:
		t.Fatalf("net/http closes after %q (%d bytes) but the framer %s", data[:consumed], consumed, endString(end))
	case resp.Close, ferr != nil:
	case end != consumed:
		t.Fatalf("net/http's response is %q (%d bytes) but the framer %s", data[:consumed], consumed, endString(end))
	}
}

// diffRequest is diffResponse for http.ReadRequest.
func diffRequest(t *testing.T, data []byte) {
	t.Helper()
	rd := bytes.NewReader(data)
	br := bufio.NewReader(rd)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return
	}
	consumed := len(data) - rd.Len() - br.Buffered()
	end, ferr := firstMessage('>', false, data)
	switch {
	case req.Close && ferr == nil:
		t.Fatalf("net/http closes after %q (%d bytes) but the framer %s", data[:consumed], consumed, endString(end))
	case req.Close, ferr != nil:
	case end != consumed:
		t.Fatalf("net/http's request is %q (%d bytes) but the framer %s", data[:consumed], consumed, endString(end))
	}
}

func endString(end int) string {
	if end < 0 {
		return "found no end"
	}
	return "ended it after " + strconv.Itoa(end) + " bytes"
}

func FuzzResponses(f *testing.F) {
	for _, s := range seeds('<') {
		f.Add(false, s)
		f.Add(true, s)
	}
	f.Fuzz(func(t *testing.T, head bool, data []byte) {
		checkSplits(t, '<', head, data)
		diffResponse(t, head, data)
	})
}

func FuzzRequests(f *testing.F) {
	for _, s := range seeds('>') {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSplits(t, '>', false, data)
		diffRequest(t, data)
	})
}

// TestDifferential runs the net/http comparison over the table's
// responses and requests, and responses net/http frames in its own ways.
func TestDifferential(t *testing.T) {
	extra := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \t\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
	}
	for _, head := range []bool{false, true} {
		for _, s := range seeds('<') {
			diffResponse(t, head, s)
		}
		for _, s := range extra {
			diffResponse(t, head, []byte(s))
		}
	}
	for _, s := range seeds('>') {
		diffRequest(t, s)
	}
}
