package docs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTLSQuickstart runs every console block of tls-quickstart.md, as
// TestREADME runs the README's: in an empty directory, with the binaries
// built from the checkout first on PATH and the page's ports (7710, 7711)
// remapped to free ones. The page starts its own poold.
func TestTLSQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs the TLS quick start")
	}
	for _, tool := range []string{"openssl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the TLS quick start needs %s (apt-get install openssl); .ci/run installs it", tool)
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	blocks := parseConsoleBlocks(t, filepath.Join(root, "docs", "tls-quickstart.md"))
	if len(blocks) < 8 {
		t.Fatalf("tls-quickstart.md has %d console blocks; the quick start is missing", len(blocks))
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	buildBinaries(t, root, bin)
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}

	grpcPort, metricsPort := freePort(t), freePort(t)
	ports := strings.NewReplacer("7710", grpcPort, "7711", metricsPort)
	env := []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"), "NO_COLOR=1", "HOME=" + tmp}
	for _, kv := range os.Environ() {
		// The page says which server, token and certificates each
		// command uses; none may come from the environment.
		if !strings.HasPrefix(kv, "POOLPLANE_") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	e := &tourEnv{dir: work, env: env}
	e.runBlocks(t, "docs/tls-quickstart.md", blocks, ports, func(string) bool { return true }, []string{grpcPort}, nil)
}
