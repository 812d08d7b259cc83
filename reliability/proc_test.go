package reliability_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

// binDir holds the poold binary built for the process tests, created with
// it; TestMain removes it.
var binDir string

var (
	buildOnce sync.Once
	pooldBin  string
)

// buildPoold builds cmd/poold once per test process (with -race when this
// test binary has it), so the process tests run the real binary.
func buildPoold(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "reliability-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
		out := filepath.Join(binDir, "poold")
		testkit.GoBuild(t, "", out, "github.com/poolplane/poolplane/cmd/poold", raceEnabled)
		pooldBin = out
	})
	if pooldBin == "" {
		t.Fatal("poold was not built (an earlier build failed)")
	}
	return pooldBin
}

// pooldProc is a poold child process.
type pooldProc struct {
	cmd         *exec.Cmd
	addr        string // gRPC address
	metricsAddr string
	donec       chan struct{} // closed once the process has exited and been waited for

	mu   sync.Mutex // protects tail
	tail []string   // the last lines of its log
}

// spawnPoold runs the built poold as a child process on 127.0.0.1:0 over
// dataDir and waits until it serves. The test's cleanup kills it if it
// still runs. (cmd/poold's tests run poold in-process instead.)
func spawnPoold(t testing.TB, dataDir string, extra ...string) *pooldProc {
	t.Helper()
	bin := buildPoold(t)
	args := append([]string{
		"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--data-dir", dataDir, "--log-format", "json", "--shutdown-grace", "1s",
	}, extra...)
	cmd := exec.Command(bin, args...)
	setPdeathsig(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &pooldProc{cmd: cmd, donec: make(chan struct{})}
	startedc := make(chan [2]string, 1) // the one "poold serving" line
	go func() {
		defer close(p.donec)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > 40 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
			var m struct{ Msg, Listen, Metrics string }
			if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "poold serving" {
				select {
				case startedc <- [2]string{m.Listen, m.Metrics}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait() // killed on purpose, or exited: the log tells why
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case a := <-startedc:
		p.addr, p.metricsAddr = a[0], a[1]
	case <-p.donec:
		t.Fatalf("poold exited before serving:\n%s", p.log())
	case <-time.After(30 * time.Second):
		p.kill()
		t.Fatalf("poold did not serve within 30s:\n%s", p.log())
	}
	return p
}

// kill sends SIGKILL and waits for the process. Idempotent.
func (p *pooldProc) kill() {
	select {
	case <-p.donec:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL) // it may have exited meanwhile
	<-p.donec
}

func (p *pooldProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// metrics scrapes poold's /metrics and returns the samples of the named
// metrics without labels.
func (p *pooldProc) metrics(names ...string) (map[string]float64, error) {
	resp, err := http.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]float64, len(names))
	for line := range bytes.Lines(body) {
		f := strings.Fields(string(line))
		if len(f) != 2 || !want[f[0]] {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", f[0], err)
		}
		out[f[0]] = v
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("metric %s missing", n)
		}
	}
	return out, nil
}
