// Command image builds poolplane's container image without a container
// engine or a registry: one layer holding the static poold and poolctl
// binaries, /etc/passwd and /etc/group entries for the non-root user it runs
// as (uid and gid 65532, "nonroot"), a CA bundle, and the directories poold
// writes to, owned by that user. There is no shell and no package manager;
// the entrypoint is poold.
//
//	make image                       # bin/poolplane-image (OCI layout) and bin/poolplane-image.tar
//	cd deploy && go run ./image -bin ../bin -o ../bin/poolplane-image -tar ../bin/poolplane-image.tar
//
// The OCI layout directory is what skopeo, crane and podman read
// (skopeo copy oci:bin/poolplane-image docker://registry/poolplane:TAG); the
// tarball is what `docker load` and `podman load` read. The binaries must
// be statically linked (CGO_ENABLED=0): the image has no C library, and the
// build refuses a binary that asks for a dynamic loader.
//
// File times and the image's creation time are SOURCE_DATE_EPOCH (or the
// Unix epoch), so building the same binaries again gives the same digest.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		cfg     Config
		out     string
		tarPath string
		bin     string
	)
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&bin, "bin", "bin", "directory holding the static poold and poolctl binaries (make build with CGO_ENABLED=0)")
	fs.StringVar(&out, "o", "", "write the image as an OCI image layout into this directory (replaced)")
	fs.StringVar(&tarPath, "tar", "", "also write it as a tarball for docker load / podman load")
	fs.StringVar(&cfg.Ref, "ref", "ghcr.io/poolplane/poold:latest", "the image's name and tag, recorded in the tarball and the layout's index")
	fs.StringVar(&cfg.Version, "version", "", "the version recorded in the org.opencontainers.image.version label (make image passes its VERSION)")
	fs.StringVar(&cfg.Revision, "revision", "", "the VCS revision recorded in the org.opencontainers.image.revision label (make image passes its COMMIT)")
	fs.StringVar(&cfg.Arch, "arch", runtime.GOARCH, "the binaries' GOARCH")
	fs.StringVar(&cfg.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", `PEM CA bundle installed as /etc/ssl/certs/ca-certificates.crt (the system roots of etcds:// and TLS pools); "" for none`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if out == "" && tarPath == "" {
		return fmt.Errorf("nothing to write: give -o DIR and/or -tar FILE")
	}
	cfg.Poold = bin + "/poold"
	cfg.Poolctl = bin + "/poolctl"
	created, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	cfg.Created = created
	img, err := Build(cfg)
	if err != nil {
		return err
	}
	if out != "" {
		if err := WriteLayout(out, cfg.Ref, img); err != nil {
			return err
		}
	}
	if tarPath != "" {
		if err := WriteTarball(tarPath, cfg.Ref, img); err != nil {
			return err
		}
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\n", cfg.Ref, d)
	return nil
}

// sourceDateEpoch returns the time of SOURCE_DATE_EPOCH, or the Unix epoch
// when it is not set (https://reproducible-builds.org/specs/source-date-epoch/).
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}
