package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text", "plain text"},
		{"café 日本", "café 日本"},
		{"\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"a\nb\tc\rd", `a\nb\tc\rd`},
		{"bidi\u202eevil", `bidi\u202eevil`},
		{"bell\a", `bell\a`},
		{"bad\xffutf8", `bad\xffutf8`},
		{"\uFFFD", "\uFFFD"},
	} {
		if got := printable(tc.in); got != tc.want {
			t.Errorf("printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestTableEscapesServerText: what the server hands poolctl (a lease's
// client name, a label) reaches the terminal with its control characters
// escaped, in tables and in error messages alike.
func TestTableEscapesServerText(t *testing.T) {
	var out bytes.Buffer
	tb := newTable(&out, "NAME", "CLIENT")
	tb.row("pools/a/leases/x", "\x1b]0;pwned\a\x1b[2J")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(out.Bytes(), "\x1b\a") || !strings.Contains(out.String(), `\x1b]0;pwned\a\x1b[2J`) {
		t.Fatalf("table:\n%q", out.String())
	}
	if lines := strings.Count(out.String(), "\n"); lines != 2 {
		t.Fatalf("table has %d lines, want 2:\n%s", lines, out.String())
	}
}

// TestGetEscapesLabels: a label value with a terminal escape sequence,
// stored through the API, is printed escaped by poolctl get.
func TestGetEscapesLabels(t *testing.T) {
	ts := startServer(t)
	echo := testkit.EchoServer(t)
	file := writeFile(t, "pools.yaml", "pools:\n  - id: evil\n    endpoints: ["+echo+"]\n    labels: {note: \"\\e[2J\\e]0;owned\\a\"}\n")
	ts.ok(t, "", "apply", "-f", file)
	out := ts.ok(t, "", "get", "evil")
	if strings.ContainsAny(out, "\x1b\a") || !strings.Contains(out, `\x1b[2J\x1b]0;owned\a`) {
		t.Fatalf("poolctl get:\n%q", out)
	}
}
