package resp

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// scan feeds in as chunks of size step (0: whole) and returns the messages
// seen, as "type name arg".
func scan(commands bool, in string, step int) ([]string, int, error) {
	var got []string
	s := &Scanner{Commands: commands, OnMessage: func(m *Message) {
		got = append(got, fmt.Sprintf("%c %s %s", m.Type, m.Name, m.Arg))
	}}
	if step <= 0 {
		step = len(in) + 1
	}
	total := 0
	for i := 0; i < len(in); i += step {
		n, err := s.Feed([]byte(in[i:min(len(in), i+step)]))
		total += n
		if err != nil {
			return got, total, err
		}
	}
	if !s.Idle() {
		return got, total, errors.New("not idle at the end")
	}
	return got, total, nil
}

func TestReplies(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"simple", "+OK\r\n", []string{"+ OK "}},
		{"error", "-ERR unknown command\r\n", []string{"- ERR unknown command "}},
		{"integer", ":1000\r\n", []string{":  "}},
		{"bulk", "$5\r\nhello\r\n", []string{"$ hello "}},
		{"bulk with CRLF inside", "$4\r\n\r\n\r\n\r\n", []string{"$ \r\n\r\n "}},
		{"null bulk", "$-1\r\n", []string{"$  "}},
		{"empty bulk", "$0\r\n\r\n", []string{"$  "}},
		{"array", "*2\r\n$3\r\nfoo\r\n:1\r\n", []string{"* foo "}},
		{"null array", "*-1\r\n", []string{"*  "}},
		{"empty array", "*0\r\n", []string{"*  "}},
		{"nested", "*2\r\n*2\r\n+a\r\n+b\r\n*1\r\n:3\r\n", []string{"*  "}},
		{"pipeline", "+OK\r\n:1\r\n$1\r\nx\r\n", []string{"+ OK ", ":  ", "$ x "}},
		{"RESP3 map", "%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", []string{"%  "}},
		{"RESP3 set", "~2\r\n+a\r\n+b\r\n", []string{"~  "}},
		{"RESP3 scalars", "_\r\n,1.5\r\n#t\r\n(3492890328409238509324850943850943825024385\r\n", []string{"_  ", ",  ", "#  ", "(  "}},
		{"RESP3 blob error and verbatim", "!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n", []string{"!  ", "=  "}},
		{"push", ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", []string{"> message ch"}},
		{"RESP2 pub/sub message", "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", []string{"* message ch"}},
		{"long top-level string cut", "+" + strings.Repeat("y", 40) + "\r\n", []string{"+ " + strings.Repeat("y", MaxName) + " "}},
		{"attribute then reply", "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n", []string{"*  "}},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 3, 7} {
			got, n, err := scan(false, tt.in, step)
			if err != nil || n != len(tt.want) || strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("%s (step %d): %q, %d messages, %v; want %q", tt.name, step, got, n, err, tt.want)
			}
		}
	}
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"set", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n", []string{"* SET k"}},
		{"one element", "*1\r\n$5\r\nMULTI\r\n", []string{"* MULTI "}},
		{"subcommand", "*3\r\n$6\r\nclient\r\n$5\r\nreply\r\n$3\r\noff\r\n", []string{"* client reply"}},
		{"long name cut", "*1\r\n$40\r\n" + strings.Repeat("x", 40) + "\r\n", []string{"* " + strings.Repeat("x", MaxName) + " "}},
		{"inline", "PING\r\nselect 5\n  get   key  \r\n", []string{"* PING ", "* select 5", "* get key"}},
		{"blank lines", "\r\n\n*1\r\n$4\r\nPING\r\n", []string{"* PING "}},
		{"empty arrays run nothing", "*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", []string{"* PING "}},
		{"pipeline", "*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n*1\r\n$4\r\nEXEC\r\n", []string{"* MULTI ", "* INCR c", "* EXEC "}},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 5} {
			got, n, err := scan(true, tt.in, step)
			if err != nil || n != len(tt.want) || strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("%s (step %d): %q, %d messages, %v; want %q", tt.name, step, got, n, err, tt.want)
			}
		}
	}
}

func TestProtocolErrors(t *testing.T) {
	tests := []struct {
		name     string
		commands bool
		in       string
	}{
		{"unknown type", false, "?what\r\n"},
		{"bad length", false, "$x\r\n"},
		{"no length", false, "*\r\n"},
		{"negative map", false, "%-1\r\n"},
		{"negative two", false, "$-2\r\n"},
		{"bulk too large", false, "$999999999999\r\n"},
		{"too deep", false, strings.Repeat("*1\r\n", MaxDepth+1)},
		{"line too long", false, "+" + strings.Repeat("a", MaxLine) + "\r\n"},
		{"inline too long", true, strings.Repeat("a", MaxLine+1)},
		{"command element not bulk", true, "*1\r\n:1\r\n"},
	}
	for _, tt := range tests {
		_, _, err := scan(tt.commands, tt.in, 0)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v; want ErrProtocol", tt.name, err)
		}
	}
}

// FuzzScanner: any input, fed whole or in pieces, yields the same messages
// or the same failure, without panicking.
func FuzzScanner(f *testing.F) {
	for _, s := range []string{"+OK\r\n", "*2\r\n$3\r\nfoo\r\n:1\r\n", "|1\r\n+a\r\n+b\r\n:1\r\n", ">2\r\n+a\r\n+b\r\n", "PING\r\n", "%1\r\n_\r\n#f\r\n"} {
		f.Add(s, false, uint8(1))
		f.Add(s, true, uint8(3))
	}
	f.Fuzz(func(t *testing.T, in string, commands bool, step uint8) {
		whole, n1, err1 := scan(commands, in, 0)
		parts, n2, err2 := scan(commands, in, int(step%16)+1)
		if (err1 == nil) != (err2 == nil) || n1 != n2 || strings.Join(whole, "|") != strings.Join(parts, "|") {
			t.Fatalf("whole: %q %d %v; in pieces: %q %d %v", whole, n1, err1, parts, n2, err2)
		}
	})
}

// BenchmarkScanReplies scans a pipeline of GET replies of 64 bytes.
func BenchmarkScanReplies(b *testing.B) {
	one := "$64\r\n" + strings.Repeat("v", 64) + "\r\n"
	buf := []byte(strings.Repeat(one, 100))
	s := &Scanner{}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := s.Feed(buf); err != nil || n != 100 {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkScanCommands scans a pipeline of SET commands with 64-byte values.
func BenchmarkScanCommands(b *testing.B) {
	one := "*3\r\n$3\r\nSET\r\n$7\r\nkey:000\r\n$64\r\n" + strings.Repeat("v", 64) + "\r\n"
	buf := []byte(strings.Repeat(one, 100))
	var names int
	s := &Scanner{Commands: true, OnMessage: func(m *Message) { names += len(m.Name) }}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := s.Feed(buf); err != nil || n != 100 {
			b.Fatal(n, err)
		}
	}
}
