// Package version says which build of poolplane a binary is: the version
// stamped at build time, or else what the go command recorded.
//
// `make build` stamps the version with the linker:
//
//	go build -ldflags "-X github.com/poolplane/poolplane/internal/version.Version=v1.2.3 \
//	    -X github.com/poolplane/poolplane/internal/version.Commit=0123abcd..." ./cmd/...
//
// A plain `go build` or `go install` without -ldflags falls back to the
// build information the go command embeds (runtime/debug.ReadBuildInfo): the
// module version of `go install ...@v1.2.3`, and the VCS revision of a build
// inside a git checkout. poold, poolctl and the poolplane_build_info metric
// all read Get, so they always agree.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Version and Commit are set at build time with -ldflags -X; empty means
// not stamped. They are variables only so that the linker can set them:
// read them through Get.
var (
	// Version is the release or `git describe` version, e.g. v1.2.3 or
	// v1.2.3-4-gabcdef0-dirty.
	Version = ""
	// Commit is the full VCS revision the binary was built from.
	Commit = ""
)

// Devel is the version of a build that carries no version at all: neither
// stamped nor a module version (`go build` with -buildvcs=false, or outside
// a checkout). It is the go command's own word for it.
const Devel = "(devel)"

// Info describes a build. Its zero value is not meaningful; use Get.
type Info struct {
	// Version is the stamped version, else the module version, else
	// devel-<commit> when only the VCS revision is known, else Devel.
	Version string `json:"version"`
	// Commit is the VCS revision, shortened to 12 characters, or "".
	Commit string `json:"commit"`
	// Modified is true when the build had uncommitted changes (as far as
	// the go command or the stamped version tells).
	Modified bool `json:"modified"`
	// GoVersion is the Go toolchain the binary was built with.
	GoVersion string `json:"go"`
	// Platform is GOOS/GOARCH.
	Platform string `json:"platform"`
}

// Get returns this binary's build information. It is safe for concurrent
// use and cheap enough to call per request, though callers usually call it
// once.
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return resolve(Version, Commit, bi)
}

// String returns Get in one line, as `poold --version` prints it:
// "v1.2.3 (0123456789ab) go1.26.8 linux/amd64".
func String() string { return Get().String() }

// String formats i as "VERSION [(COMMIT)] GO PLATFORM".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	if i.Commit != "" && !strings.Contains(i.Version, i.Commit) {
		b.WriteString(" (" + i.Commit + ")")
	}
	b.WriteString(" " + i.GoVersion + " " + i.Platform)
	return b.String()
}

// shortCommit is how many hex digits of a revision are shown.
const shortCommit = 12

// resolve computes an Info from the stamped values and the go command's
// build information (nil when there is none).
func resolve(stamped, stampedCommit string, bi *debug.BuildInfo) Info {
	i := Info{
		Version:   stamped,
		Commit:    stampedCommit,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi != nil {
		if bi.GoVersion != "" {
			i.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.modified":
				if stamped == "" {
					i.Modified = s.Value == "true"
				}
			}
		}
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != Devel {
			i.Version = bi.Main.Version
		}
	}
	if len(i.Commit) > shortCommit {
		i.Commit = i.Commit[:shortCommit]
	}
	if stamped != "" {
		i.Modified = strings.HasSuffix(stamped, "-dirty")
	}
	if i.Version == "" {
		i.Version = Devel
		if i.Commit != "" {
			i.Version = "devel-" + i.Commit
			if i.Modified {
				i.Version += "-dirty"
			}
		}
	}
	return i
}
