// Package docs holds poolplane's documents and the test that keeps the
// README honest: every console block of README.md runs against the real
// binaries and must print what the README shows.
package docs

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// A console block is a fenced ```console block. Lines starting with "$ " are
// commands; the lines after a command, up to the next one, are its expected
// output. A command ending in " &" runs in the background until the test
// ends. Output is compared line by line with runs of blank space folded to
// one space; an expected line matches an output line that contains it, and
// "..." stands for any number of lines.
//
// A block right after a line "<!-- tour: after D -->" (D a Go duration) runs
// once D has passed since the previous block ended: it shows what still
// holds after a while (health checks, expiry), not only right after a change.
type consoleCmd struct {
	line       int
	cmd        string
	background bool
	want       []string
}

type consoleBlock struct {
	section string
	after   time.Duration // wait this long after the previous block
	cmds    []consoleCmd
}

var afterDirective = regexp.MustCompile(`^<!-- tour: after (\S+) -->$`)

func parseConsoleBlocks(t *testing.T, path string) []consoleBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks  []consoleBlock
		cur     *consoleBlock
		section string
		after   time.Duration // from the directive before the next block
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
		case cur == nil && afterDirective.MatchString(line):
			d, err := time.ParseDuration(afterDirective.FindStringSubmatch(line)[1])
			if err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
			after = d
		case cur == nil && line == "```console":
			cur = &consoleBlock{section: section, after: after}
			after = 0
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil && strings.HasPrefix(line, "$ "):
			c := consoleCmd{line: n, cmd: strings.TrimPrefix(line, "$ ")}
			if s, ok := strings.CutSuffix(c.cmd, " &"); ok {
				c.cmd, c.background = s, true
			}
			cur.cmds = append(cur.cmds, c)
		case cur != nil:
			if len(cur.cmds) == 0 {
				t.Fatalf("%s:%d: output before any command", path, n)
			}
			c := &cur.cmds[len(cur.cmds)-1]
			c.want = append(c.want, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s: unterminated console block", path)
	}
	return blocks
}

var space = regexp.MustCompile(`\s+`)

func fold(s string) string { return strings.TrimSpace(space.ReplaceAllString(s, " ")) }

// matchOutput reports whether out shows every expected line, in order.
func matchOutput(want []string, out string) error {
	got := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if out == "" {
		got = nil
	}
	i := 0
	skip := false
	for _, w := range want {
		if w == "..." {
			skip = true
			continue
		}
		fw := fold(w)
		for {
			if i >= len(got) {
				return fmt.Errorf("missing line %q", w)
			}
			ok := strings.Contains(fold(got[i]), fw)
			i++
			if ok {
				break
			}
			if !skip {
				return fmt.Errorf("line %d is %q, want %q", i, got[i-1], w)
			}
		}
		skip = false
	}
	if !skip && i < len(got) && len(want) > 0 {
		return fmt.Errorf("unexpected line %q", got[i])
	}
	return nil
}

func TestMatchOutput(t *testing.T) {
	tests := []struct {
		want []string
		out  string
		ok   bool
	}{
		{[]string{"a", "b"}, "a\nb\n", true},
		{[]string{"a b"}, "x  a   b  y\n", true},
		{[]string{"a", "...", "c"}, "a\nb\nb\nc\n", true},
		{[]string{"a", "c"}, "a\nb\nc\n", false},
		{[]string{"a"}, "a\nextra\n", false},
		{[]string{"a", "..."}, "a\nextra\n", true},
		{[]string{"...", "z"}, "a\nb\n", false},
		{nil, "anything\n", true},
	}
	for _, tt := range tests {
		if err := matchOutput(tt.want, tt.out); (err == nil) != tt.ok {
			t.Errorf("matchOutput(%q, %q) = %v, want ok=%v", tt.want, tt.out, err, tt.ok)
		}
	}
}

// freePort returns a free loopback port.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// tourEnv runs the README's commands.
type tourEnv struct {
	dir string // the working directory
	env []string
}

// command runs cmdline with bash, in its own process group.
func (e *tourEnv) command(ctx context.Context, cmdline string, out *testkit.SyncBuffer) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-c", cmdline)
	cmd.Dir = e.dir
	cmd.Env = e.env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// start runs a background command and stops it, by PID, at cleanup.
func (e *tourEnv) start(t *testing.T, cmdline string) *testkit.SyncBuffer {
	t.Helper()
	out := &testkit.SyncBuffer{}
	// exec: the server is the process the signals reach.
	cmd := e.command(context.Background(), "exec "+cmdline, out)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", cmdline, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return out
}

// eventually retries check until it succeeds or the deadline passes.
func eventually(t *testing.T, d time.Duration, check func() error) error {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		timer := time.NewTimer(50 * time.Millisecond)
		<-timer.C
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func dialable(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// readOnly commands may be re-run until their output matches: the state they
// show settles asynchronously (a lease is released after its client exits).
var readOnly = regexp.MustCompile(`^poolctl (stats|list|get|leases|history)\b`)

func buildBinaries(t *testing.T, root, bin string) {
	t.Helper()
	for _, args := range [][]string{
		{"build", "-o", bin + "/", "./cmd/poold", "./cmd/poolctl"},
		{"build", "-modfile=tools/go.mod", "-o", bin + "/", "github.com/fullstorydev/grpcurl/cmd/grpcurl"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// linkTree makes dst a copy of the repository root made of symbolic links,
// except examples/pools.yaml, copied with the tour's ports remapped, so the
// tour's commands (go run ./examples/..., apply -f examples/pools.yaml) work
// in dst as in a checkout.
func linkTree(t *testing.T, root, dst string, ports *strings.Replacer) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dst, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := func(from, to string) {
		if err := os.Symlink(from, to); err != nil {
			t.Fatal(err)
		}
	}
	top, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range top {
		if name := e.Name(); name != "examples" && name != "data" && name != "bin" && name != ".git" {
			link(filepath.Join(root, name), filepath.Join(dst, name))
		}
	}
	ex, err := os.ReadDir(filepath.Join(root, "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ex {
		if e.Name() != "pools.yaml" {
			link(filepath.Join(root, "examples", e.Name()), filepath.Join(dst, "examples", e.Name()))
		}
	}
	pools, err := os.ReadFile(filepath.Join(root, "examples", "pools.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "examples", "pools.yaml"), []byte(ports.Replace(string(pools))), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs the README tour")
	}
	for _, tool := range []string{"redis-server", "redis-cli", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the README tour needs %s (apt-get install redis-server redis-tools); .ci/run installs it", tool)
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	blocks := parseConsoleBlocks(t, filepath.Join(root, "README.md"))
	if len(blocks) < 5 {
		t.Fatalf("README.md has %d console blocks; the tour is missing", len(blocks))
	}

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	buildBinaries(t, root, bin)

	// The tour's well-known ports, remapped to free ones.
	grpcPort, metricsPort, redisPort, fwdPort := freePort(t), freePort(t), freePort(t), freePort(t)
	ports := strings.NewReplacer("7700", grpcPort, "7701", metricsPort, "6379", redisPort, "6390", fwdPort)
	work := filepath.Join(tmp, "work")
	linkTree(t, root, work, ports)
	e := &tourEnv{
		dir: work,
		env: append(os.Environ(),
			"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
			"POOLPLANE_SERVER=127.0.0.1:"+grpcPort,
			"NO_COLOR=1",
		),
	}

	// `make run`, in the tour's other terminal.
	poold := e.start(t, fmt.Sprintf("poold --data-dir data --listen 127.0.0.1:%s --metrics-listen 127.0.0.1:%s", grpcPort, metricsPort))
	if err := eventually(t, 20*time.Second, func() error { return dialable("127.0.0.1:" + grpcPort) }); err != nil {
		t.Fatalf("poold did not start: %v\n%s", err, poold)
	}

	e.runBlocks(t, "README.md", blocks, ports, func(section string) bool { return section == "A five-minute tour" },
		[]string{redisPort, fwdPort}, func() string { return tail(poold.String(), 15) })
}

// runBlocks runs blocks of file in order, as TestREADME describes: each
// command must print its expected output; background commands run until the
// test ends. In the sections where remap says so, ports rewrites commands and
// expected output (the document's well-known ports to free ones). A
// background command without expected output is waited for until it accepts
// on the one of dialPorts its command line names. serverLog, if not nil,
// returns what to show of the server's log when a command fails.
func (e *tourEnv) runBlocks(t *testing.T, file string, blocks []consoleBlock, ports *strings.Replacer, remap func(section string) bool,
	dialPorts []string, serverLog func() string) {
	t.Helper()
	lastEnd := time.Now()
	for _, b := range blocks {
		if wait := b.after - time.Since(lastEnd); wait > 0 {
			// Time itself is what this block is about (see consoleBlock).
			<-time.After(wait)
		}
		tour := remap(b.section)
		for _, c := range b.cmds {
			cmdline, want := c.cmd, c.want
			if tour {
				cmdline = ports.Replace(cmdline)
				want = make([]string, len(c.want))
				for i, w := range c.want {
					want[i] = ports.Replace(w)
				}
			}
			where := fmt.Sprintf("%s:%d: $ %s", file, c.line, c.cmd)
			if c.background {
				out := e.start(t, cmdline)
				err := eventually(t, 20*time.Second, func() error {
					if len(want) > 0 {
						// Printed once it serves; a probe connection
						// would itself be a lease.
						return matchOutput(want, out.String())
					}
					for _, p := range dialPorts {
						if strings.Contains(cmdline, p) {
							return dialable("127.0.0.1:" + p)
						}
					}
					return nil
				})
				if err != nil {
					t.Fatalf("%s\n%v\noutput:\n%s", where, err, out)
				}
				continue
			}
			run := func() (string, error) {
				out := &testkit.SyncBuffer{}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				err := e.command(ctx, cmdline, out).Run()
				// "-h" exits 0 for poold; any failure a block shows would
				// show in its expected output.
				if err != nil {
					return out.String(), fmt.Errorf("exit: %w", err)
				}
				return out.String(), matchOutput(want, out.String())
			}
			out, err := run()
			if err != nil && readOnly.MatchString(cmdline) {
				err = eventually(t, 10*time.Second, func() error {
					out, err = run()
					return err
				})
			}
			if err != nil {
				log := ""
				if serverLog != nil {
					log = "\nserver log (tail):\n" + serverLog()
				}
				t.Fatalf("%s\n%v\noutput:\n%s%s", where, err, out, log)
			}
		}
		lastEnd = time.Now()
	}
}
