package main

import (
	"io"
	"testing"
)

// TestVersionFlag: --version asks for the version whatever else is set, and
// only the command line asks for it (POOLPLANE_VERSION does not turn a
// poold into one that prints its version and exits).
func TestVersionFlag(t *testing.T) {
	t.Setenv("POOLPLANE_LOG_FORMAT", "xml") // would be a usage error
	o, err := parseFlags([]string{"--version"}, io.Discard)
	if err != nil || !o.version {
		t.Fatalf("parseFlags(--version) = version %v, %v; want true, nil", o.version, err)
	}

	t.Setenv("POOLPLANE_LOG_FORMAT", "")
	t.Setenv("POOLPLANE_VERSION", "true")
	o, err = parseFlags([]string{"--log-format", "text"}, io.Discard)
	if err != nil || o.version {
		t.Fatalf("parseFlags with POOLPLANE_VERSION=true = version %v, %v; want false, nil", o.version, err)
	}
}
