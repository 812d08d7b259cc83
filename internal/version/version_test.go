package version

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name            string
		stamped, commit string
		bi              *debug.BuildInfo
		want            Info
	}{
		{"nothing", "", "", nil, Info{Version: Devel}},
		{"go build -buildvcs=false", "", "", &debug.BuildInfo{Main: debug.Module{Version: Devel}}, Info{Version: Devel}},
		{"go build in a checkout", "", "", &debug.BuildInfo{Main: debug.Module{Version: Devel}, Settings: vcs("false")},
			Info{Version: "devel-0123456789ab", Commit: "0123456789ab"}},
		{"go build in a dirty checkout", "", "", &debug.BuildInfo{Main: debug.Module{Version: Devel}, Settings: vcs("true")},
			Info{Version: "devel-0123456789ab-dirty", Commit: "0123456789ab", Modified: true}},
		{"go install @version", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, Info{Version: "v1.4.0"}},
		{"stamped", "v1.5.0", rev, &debug.BuildInfo{Main: debug.Module{Version: Devel}, Settings: vcs("true")},
			Info{Version: "v1.5.0", Commit: "0123456789ab"}},
		{"stamped dirty, no build info", "v1.5.0-3-g0123456-dirty", "", nil, Info{Version: "v1.5.0-3-g0123456-dirty", Modified: true}},
		{"stamped wins over the module version", "v2.0.0-rc.1", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, Info{Version: "v2.0.0-rc.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolve(tt.stamped, tt.commit, tt.bi)
			tt.want.GoVersion, tt.want.Platform = got.GoVersion, got.Platform
			if got != tt.want {
				t.Errorf("resolve = %+v, want %+v", got, tt.want)
			}
			if got.GoVersion == "" || got.Platform != runtime.GOOS+"/"+runtime.GOARCH {
				t.Errorf("resolve: go %q platform %q", got.GoVersion, got.Platform)
			}
		})
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		in   Info
		want string
	}{
		{Info{Version: "v1.2.3", Commit: "0123456789ab", GoVersion: "go1.26.8", Platform: "linux/amd64"}, "v1.2.3 (0123456789ab) go1.26.8 linux/amd64"},
		{Info{Version: "devel-0123456789ab", Commit: "0123456789ab", GoVersion: "go1.26.8", Platform: "linux/arm64"}, "devel-0123456789ab go1.26.8 linux/arm64"},
		{Info{Version: Devel, GoVersion: "go1.26.8", Platform: "linux/amd64"}, "(devel) go1.26.8 linux/amd64"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestLinkerStamp builds a program that prints String with the -X flags
// `make build` passes, and one without them, and checks what each prints.
func TestLinkerStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two programs")
	}
	dir := t.TempDir()
	const pkg = "github.com/poolplane/poolplane/internal/version"
	build := func(name string, ldflags string) string {
		t.Helper()
		out := filepath.Join(dir, name)
		args := []string{"build", "-buildvcs=false", "-o", out}
		if ldflags != "" {
			args = append(args, "-ldflags", ldflags)
		}
		cmd := exec.Command("go", append(args, "./testdata/printversion")...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		b, err := exec.Command(out).Output()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return strings.TrimSpace(string(b))
	}
	stamped := build("stamped", "-X "+pkg+".Version=v9.8.7-1-gabcdef0 -X "+pkg+".Commit=abcdef0123456789")
	if want := "v9.8.7-1-gabcdef0 (abcdef012345) "; !strings.HasPrefix(stamped, want) {
		t.Errorf("stamped build prints %q, want prefix %q", stamped, want)
	}
	plain := build("plain", "")
	if want := Devel + " " + runtime.Version(); !strings.HasPrefix(plain, want) {
		t.Errorf("plain build prints %q, want prefix %q", plain, want)
	}
}
