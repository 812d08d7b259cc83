package main

import (
	"archive/tar"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/goleak"

	"github.com/poolplane/poolplane/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testVersion and testCommit are what the test stamps, as make build does.
const (
	testVersion = "v0.0.0-imagetest"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
)

// buildStatic builds static poold and poolctl into dir, stamped with
// testVersion as `make build` stamps them.
func buildStatic(t *testing.T, dir string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	const pkg = "github.com/poolplane/poolplane/internal/version"
	args := []string{"build", "-trimpath", "-ldflags", "-X " + pkg + ".Version=" + testVersion + " -X " + pkg + ".Commit=" + testCommit,
		"-o", dir + "/", "./cmd/poold", "./cmd/poolctl"}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestImage builds the image from freshly built binaries, reads it back
// from its OCI layout and its tarball, checks what it holds and how it
// runs, then takes poold and poolctl out of its layer and runs them: the
// version they print, and a poold that starts, serves /healthz and /readyz
// and answers poolctl.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds poold and poolctl")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("no go command: %v", err)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	buildStatic(t, bin)

	cfg := Config{
		Poold: filepath.Join(bin, "poold"), Poolctl: filepath.Join(bin, "poolctl"),
		Ref: "example.test/poolplane/poold:" + testVersion, Version: testVersion, Revision: testCommit,
		Arch: runtime.GOARCH, Created: time.Unix(1700000000, 0).UTC(),
	}
	img, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir, tarPath := filepath.Join(tmp, "layout"), filepath.Join(tmp, "image.tar")
	if err := WriteLayout(dir, cfg.Ref, img); err != nil {
		t.Fatal(err)
	}
	if err := WriteTarball(tarPath, cfg.Ref, img); err != nil {
		t.Fatal(err)
	}

	// Read back what was written, not the value in memory.
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != cfg.Ref {
		t.Fatalf("layout index: %+v, want one image named %s", im.Manifests, cfg.Ref)
	}
	fromLayout, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	fromTar, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := fromLayout.Digest()
	d2, _ := img.Digest()
	if d1 != d2 {
		t.Errorf("layout digest %v, built %v", d1, d2)
	}
	c1, _ := fromLayout.ConfigName()
	c2, _ := fromTar.ConfigName()
	if c1 != c2 {
		t.Errorf("tarball config %v, layout %v", c2, c1)
	}
	if mt, _ := fromLayout.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %v, want OCI", mt)
	}

	cf, err := fromLayout.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	checkConfig(t, cf)

	// Building again gives the same image.
	again, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d3, _ := again.Digest(); d3 != d1 {
		t.Errorf("second build digest %v, first %v: the build is not reproducible", d3, d1)
	}

	rootfs, cred := userDir(t)
	files := checkLayer(t, fromLayout, rootfs)
	dataDir := filepath.Join(rootfs, filepath.FromSlash(DataDir))
	if cred != nil {
		if err := os.Chown(dataDir, UID, UID); err != nil {
			t.Fatal(err)
		}
	}
	runFromImage(t, files[PooldPath], files[PoolctlPath], dataDir, cred)
}

// userDir returns a directory for the image's files. As root, poold runs as
// the image's user, as it does in a container: the directory is one that
// user may traverse (t.TempDir's parent is private to root), and cred is
// the user; otherwise cred is nil.
func userDir(t *testing.T) (string, *syscall.Credential) {
	t.Helper()
	if os.Geteuid() != 0 {
		return t.TempDir(), nil
	}
	dir, err := os.MkdirTemp("", "poolplane-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, &syscall.Credential{Uid: UID, Gid: UID}
}

func checkConfig(t *testing.T, cf *v1.ConfigFile) {
	t.Helper()
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("User %q, want 65532:65532 (not root)", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{PooldPath}) || len(c.Cmd) != 0 {
		t.Errorf("Entrypoint %q Cmd %q, want [%s] and no Cmd", c.Entrypoint, c.Cmd, PooldPath)
	}
	if !slices.Contains(c.Env, "POOLPLANE_DATA_DIR="+DataDir) {
		t.Errorf("Env %q lacks POOLPLANE_DATA_DIR=%s", c.Env, DataDir)
	}
	if c.Labels["org.opencontainers.image.version"] != testVersion || c.Labels["org.opencontainers.image.revision"] != testCommit {
		t.Errorf("labels %q, want version %s and revision %s", c.Labels, testVersion, testCommit)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
}

// checkLayer extracts the image's file system into dir, checks it, and
// returns the path in dir of each regular file by its path in the image.
func checkLayer(t *testing.T, img v1.Image, dir string) map[string]string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]string{}
	owners := map[string]int{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		owners[name] = h.Uid
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(h.Name)), 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			p := filepath.Join(dir, filepath.FromSlash(h.Name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil { //nolint:gosec // the test's own image
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			files[name] = p
		default:
			t.Errorf("%s: type %q; the image holds only directories and regular files (no links, no shell)", name, h.Typeflag)
		}
	}
	for _, sh := range []string{"/bin/sh", "/bin/bash", "/bin/busybox", "/usr/bin/env"} {
		if _, ok := files[sh]; ok {
			t.Errorf("the image has %s", sh)
		}
	}
	for _, want := range []string{PooldPath, PoolctlPath, "/etc/passwd", "/etc/group"} {
		if _, ok := files[want]; !ok {
			t.Errorf("the image lacks %s", want)
		}
	}
	for _, d := range []string{DataDir, RunDir} {
		if owners[d] != UID {
			t.Errorf("%s owned by %d, want %d", d, owners[d], UID)
		}
	}
	if p, ok := files["/etc/passwd"]; ok {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "nonroot:x:65532:65532:") {
			t.Errorf("/etc/passwd has no nonroot 65532 entry:\n%s", b)
		}
	}
	return files
}

var servingLine = regexp.MustCompile(`msg="poold serving".* listen=(\S+) metrics=(\S+)`)

// runFromImage runs the binaries taken out of the image, poold as cred
// (nil: as the test).
func runFromImage(t *testing.T, poold, poolctl, dataDir string, cred *syscall.Credential) {
	t.Helper()
	out, err := exec.Command(poold, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "poold "+testVersion+" (0123456789ab) go") {
		t.Errorf("poold --version: %v, %q; want poold %s (0123456789ab) go...", err, out, testVersion)
	}
	out, err = exec.Command(poolctl, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "poolctl "+testVersion+" ") {
		t.Errorf("poolctl version: %v, %q", err, out)
	}

	log := &testkit.SyncBuffer{}
	cmd := exec.Command(poold, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "1s")
	cmd.Env = append(os.Environ(), "POOLPLANE_DATA_DIR="+dataDir)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	var grpcAddr, metricsAddr string
	testkit.WaitFor(t, "poold from the image to serve", func() bool {
		m := servingLine.FindStringSubmatch(log.String())
		if m != nil {
			grpcAddr, metricsAddr = m[1], m[2]
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("poold exited before serving: %v\n%s", err, log)
		default:
		}
		return m != nil
	})
	if cred != nil {
		fi, err := os.Stat(filepath.Join(dataDir, "poolplane.db"))
		if err != nil {
			t.Fatal(err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != cred.Uid {
			t.Errorf("poolplane.db belongs to %v, want uid %d: poold did not run as the image's user", fi.Sys(), cred.Uid)
		}
	}
	if !strings.Contains(log.String(), "version="+testVersion) {
		t.Errorf("poold's start log does not name its version:\n%s", log)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, resp.Status)
		}
	}
	out, err = exec.Command(poolctl, "--server", grpcAddr, "list").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "NAME") {
		t.Errorf("poolctl list: %v\n%s", err, out)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = testkit.Recv(t, exited)
	stopped = true
	if err != nil {
		t.Errorf("poold after SIGTERM: %v\n%s", err, log)
	}
}

// TestRefuseDynamic: a binary that needs a dynamic loader does not go into
// an image without a C library.
func TestRefuseDynamic(t *testing.T) {
	dyn := ""
	for _, p := range []string{"/bin/true", "/usr/bin/true"} {
		if err := checkStatic(p, runtime.GOARCH); errors.Is(err, errNotStatic) {
			dyn = p
			break
		}
	}
	if dyn == "" {
		t.Skip("no dynamically linked /bin/true to try")
	}
	_, err := Build(Config{Poold: dyn, Poolctl: dyn, Arch: runtime.GOARCH})
	if !errors.Is(err, errNotStatic) {
		t.Errorf("Build with %s: %v, want %v", dyn, err, errNotStatic)
	}
}
