package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The user the image runs as: not root, the uid and gid distroless and
// the Chainguard images call nonroot, so one securityContext fits them all.
const (
	UID      = 65532
	UserName = "nonroot"
)

// Where the image puts things.
const (
	PooldPath   = "/usr/local/bin/poold"
	PoolctlPath = "/usr/local/bin/poolctl"
	// DataDir is poold's --data-dir (POOLPLANE_DATA_DIR in the image):
	// owned by the user, a volume in every manifest.
	DataDir = "/var/lib/poolplane"
	// RunDir holds a unix:// --listen socket: owned by the user.
	RunDir = "/run/poolplane"
	// CABundlePath is where Go's crypto/x509 looks first on Linux.
	CABundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// Config says what goes into the image.
type Config struct {
	Poold, Poolctl string // static binaries
	CABundle       string // PEM file for CABundlePath, or ""
	Ref            string // name:tag, for labels
	Version        string // for the version label, or ""
	Revision       string // for the revision label, or ""
	Arch           string // GOARCH of the binaries
	Created        time.Time
}

// errNotStatic is returned for a binary that needs a dynamic loader.
var errNotStatic = errors.New("dynamically linked (build with CGO_ENABLED=0): the image has no C library")

// checkStatic fails unless file is an ELF executable for arch without a
// program interpreter.
func checkStatic(file, arch string) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	defer func() { _ = f.Close() }() // read only
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w", file, errNotStatic)
		}
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390, "riscv64": elf.EM_RISCV}
	if m, ok := want[arch]; ok && f.Machine != m {
		return fmt.Errorf("%s: built for %v, not %s", file, f.Machine, arch)
	}
	return nil
}

// Build assembles the image from cfg.
func Build(cfg Config) (v1.Image, error) {
	for _, f := range []string{cfg.Poold, cfg.Poolctl} {
		if err := checkStatic(f, cfg.Arch); err != nil {
			return nil, err
		}
	}
	layerTar, err := rootfs(cfg)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: cfg.Created}, CreatedBy: "poolplane deploy/image", Comment: "poold and poolctl, static"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", cfg.Arch
	cf.Created = v1.Time{Time: cfg.Created}
	labels := map[string]string{
		"org.opencontainers.image.title":       "poolplane",
		"org.opencontainers.image.description": "poold, connection pooling as a service, and poolctl",
		"org.opencontainers.image.source":      "https://github.com/poolplane/poolplane",
	}
	if cfg.Version != "" {
		labels["org.opencontainers.image.version"] = cfg.Version
	}
	if cfg.Revision != "" {
		labels["org.opencontainers.image.revision"] = cfg.Revision
	}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, UID),
		Entrypoint: []string{PooldPath},
		WorkingDir: DataDir,
		Env: []string{
			"PATH=/usr/local/bin",
			"POOLPLANE_DATA_DIR=" + DataDir,
		},
		ExposedPorts: map[string]struct{}{"7700/tcp": {}, "7701/tcp": {}},
		Volumes:      map[string]struct{}{DataDir: {}},
		Labels:       labels,
		StopSignal:   "SIGTERM",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// rootfs returns the layer's tar: the directories, the user database, the
// CA bundle and the binaries, every entry at cfg.Created.
func rootfs(cfg Config) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	var dir func(name string, mode int64, uid int) error
	dir = func(name string, mode int64, uid int) error {
		if name == "/" || seen[name] {
			return nil
		}
		if err := dir(path.Dir(name), 0o755, 0); err != nil {
			return err
		}
		seen[name] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name[1:] + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: cfg.Created, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, b []byte) error {
		if err := dir(path.Dir(name), 0o755, 0); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name[1:], Mode: mode, Size: int64(len(b)), ModTime: cfg.Created, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []struct {
		name string
		mode int64
		uid  int
	}{
		{"/tmp", 0o1777, 0},
		{"/home/" + UserName, 0o700, UID},
		{DataDir, 0o700, UID},
		{RunDir, 0o755, UID},
	} {
		if err := dir(d.name, d.mode, d.uid); err != nil {
			return nil, err
		}
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/home/%s:/sbin/nologin\n", UserName, UID, UID, UserName, UserName)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", UserName, UID)
	files := []struct {
		name string
		mode int64
		b    []byte
	}{
		{"/etc/passwd", 0o644, []byte(passwd)},
		{"/etc/group", 0o644, []byte(group)},
	}
	if cfg.CABundle != "" {
		b, err := os.ReadFile(cfg.CABundle)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
		files = append(files, struct {
			name string
			mode int64
			b    []byte
		}{CABundlePath, 0o644, b})
	}
	for _, f := range []struct{ src, dst string }{{cfg.Poold, PooldPath}, {cfg.Poolctl, PoolctlPath}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		files = append(files, struct {
			name string
			mode int64
			b    []byte
		}{f.dst, 0o755, b})
	}
	for _, f := range files {
		if err := file(f.name, f.mode, f.b); err != nil {
			return nil, fmt.Errorf("layer %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteLayout writes img as the only image of an OCI image layout in dir,
// replacing whatever dir held, tagged ref (annotation
// org.opencontainers.image.ref.name).
func WriteLayout(dir, ref string, img v1.Image) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if err := p.AppendImage(img,
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}),
		layout.WithPlatform(v1.Platform{OS: cf.OS, Architecture: cf.Architecture}),
	); err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	return nil
}

// WriteTarball writes img as a docker load tarball named ref.
func WriteTarball(file, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("-ref: %w", err)
	}
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		return fmt.Errorf("tarball %s: %w", file, err)
	}
	return nil
}
