package store

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const crashEnv = "STORE_CRASH_WRITER_PATH"

// TestHelperCrashWriter is not a test: TestCrashDurability runs it in a
// child process that writes until it is killed, printing "rev key" once
// each Put has returned (and so was fsynced).
func TestHelperCrashWriter(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper for TestCrashDurability")
	}
	s, err := Open(path, Options{}) // NoSync false: the point of the test
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		key := fmt.Sprintf("k%04d", i%50)
		rev, err := s.Put(context.Background(), key, crashValue(key, i), Any(), "crash")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stdout, "REV %d %s %d\n", rev, key, i)
	}
}

func crashValue(key string, i int) []byte {
	return []byte(fmt.Sprintf("%s=%d:%s", key, i, strings.Repeat("x", i%300)))
}

func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	const rounds = 20
	deadline := time.Now().Add(60 * time.Second)
	path := filepath.Join(t.TempDir(), "crash.db")
	for round := range rounds {
		if time.Now().After(deadline) {
			t.Fatalf("too slow: %d rounds", round)
		}
		killAfter := 1 + rand.IntN(40)
		lines := runCrashWriter(t, path, killAfter)
		if len(lines) < killAfter {
			t.Fatalf("round %d: child printed %d lines before dying, want %d", round, len(lines), killAfter)
		}
		s, err := Open(path, Options{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		cur, err := s.Revision(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range lines {
			var (
				rev int64
				key string
				i   int
			)
			if _, err := fmt.Sscanf(line, "REV %d %s %d", &rev, &key, &i); err != nil {
				t.Fatalf("round %d: line %q: %v", round, line, err)
			}
			if rev > cur {
				t.Fatalf("round %d: printed revision %d lost: store at %d", round, rev, cur)
			}
			e, err := s.HistoryAt(t.Context(), key, rev)
			if err != nil || e.Revision != rev || string(e.Value) != string(crashValue(key, i)) {
				t.Fatalf("round %d: revision %d of %s: %+v, %v", round, rev, key, e, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// runCrashWriter starts the writer on path, SIGKILLs it after it printed
// killAfter revisions, and returns every revision line it printed.
func runCrashWriter(t *testing.T, path string, killAfter int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "REV ") {
			continue
		}
		lines = append(lines, sc.Text())
		if len(lines) == killAfter && !killed {
			_ = cmd.Process.Kill() // SIGKILL; keep reading what was already printed
			killed = true
		}
	}
	if !killed {
		_ = cmd.Process.Kill()
	}
	_ = cmd.Wait() // "signal: killed" is expected
	return lines
}
