package awake

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want []string // nil: no re-execution
	}{
		{[]string{"HOME=/root"}, []string{"HOME=/root", "GODEBUG=" + Setting}},
		{[]string{"GODEBUG=gctrace=1", "A=b"}, []string{"A=b", "GODEBUG=gctrace=1," + Setting}},
		{[]string{"GODEBUG="}, []string{"GODEBUG=" + Setting}},
		// The first GODEBUG is the one Getenv and the runtime read.
		{[]string{"GODEBUG=madvdontneed=1", "GODEBUG=gctrace=1"}, []string{"GODEBUG=madvdontneed=1," + Setting}},
		{[]string{"GODEBUG=schedtrace=0"}, nil},
		{[]string{"GODEBUG=gctrace=1,schedtrace=1000", "B=c"}, nil},
	} {
		got, ok := Env(tc.env)
		if ok != (tc.want != nil) || (ok && !slices.Equal(got, tc.want)) {
			t.Errorf("Env(%q) = %q, %v; want %q", tc.env, got, ok, tc.want)
		}
		if !ok && !slices.Equal(got, tc.env) {
			t.Errorf("Env(%q) changed the environment: %q", tc.env, got)
		}
	}
}

// TestHelperKeep is the process TestKeep starts: it runs Keep, then prints
// its PID and GODEBUG.
func TestHelperKeep(t *testing.T) {
	if os.Getenv("AWAKE_HELPER") != "1" {
		t.Skip("helper process for TestKeep")
	}
	Keep()
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("pid=%d godebug=%q comm=%q\n", os.Getpid(), os.Getenv("GODEBUG"), strings.TrimSuffix(string(comm), "\n"))
}

// TestKeep: the program executes itself again, in the same process, with
// schedtrace added to GODEBUG, and leaves a GODEBUG that sets schedtrace
// as it is; either way the process keeps its name (not "exe", the name of
// /proc/self/exe).
func TestKeep(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Keep re-executes on Linux only")
	}
	for _, tc := range []struct{ godebug, want string }{
		{"", Setting},
		{"gctrace=0", "gctrace=0," + Setting},
		{"schedtrace=0", "schedtrace=0"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKeep$", "-test.count=1", "-test.v")
		cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") }),
			"AWAKE_HELPER=1")
		if tc.godebug != "" {
			cmd.Env = append(cmd.Env, "GODEBUG="+tc.godebug)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v\n%s", tc.godebug, err, out)
		}
		name := filepath.Base(os.Args[0])
		want := fmt.Sprintf("pid=%d godebug=%q comm=%q", cmd.Process.Pid, tc.want, name[:min(len(name), maxComm)])
		if !strings.Contains(string(out), want) {
			t.Errorf("GODEBUG=%q: output lacks %s:\n%s", tc.godebug, want, out)
		}
	}
}
