package http1

import (
	"strings"
	"testing"

	"github.com/poolplane/poolplane/protocol"
)

var (
	benchRequest  = []byte("GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n")
	benchResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n" +
		"Date: Sat, 05 Dec 2026 12:00:00 GMT\r\n\r\n" + strings.Repeat("x", 1024))
)

// BenchmarkSession follows keep-alive GET/200 exchanges with a 1 KiB body.
func BenchmarkSession(b *testing.B) {
	s := newSession()
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest) + len(benchResponse)))
	for b.Loop() {
		s.Request(benchRequest)
		s.Reply(benchResponse)
	}
	if st := s.State(); st != protocol.Idle {
		b.Fatalf("State() = %v (%v)", st, s.why())
	}
}

// TestNoAllocs checks that following exchanges allocates nothing.
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	s := newSession()
	var exch [][]byte
	for _, e := range exchanges() {
		if e.want != protocol.Idle || e.name == "pipeline drains" {
			continue
		}
		for _, st := range e.steps {
			exch = append(exch, []byte(st))
		}
	}
	allocs := testing.AllocsPerRun(10, func() {
		for _, st := range exch {
			if st[0] == '>' {
				s.Request(st[1:])
			} else {
				s.Reply(st[1:])
			}
		}
	})
	if st := s.State(); st != protocol.Idle {
		t.Fatalf("State() = %v (%v)", st, s.why())
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}
