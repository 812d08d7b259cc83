// Package awake keeps the Go runtime's monitor thread (sysmon) out of its
// deep sleep in poolplane's relaying processes: poold, and poolctl forward.
//
// sysmon sleeps until woken whenever every P is idle, and the next system
// call wakes it (a futex wake-up of another thread), after which it polls
// every 20 µs until it sleeps again. A relay goes idle between the
// requests of a lightly loaded connection, so it paid that wake-up about
// once per request: on a 2-vCPU VM, 1.4 futex and 1.2 nanosleep calls per
// held-lease round trip in poold, and up to a third of its CPU per request
// (docs/benchmarks.md). With GODEBUG's schedtrace set, sysmon never
// deep-sleeps: it backs off to one wake-up every 10 ms while idle. Setting
// is the largest interval there is (about 24.8 days), so the scheduler line
// schedtrace prints to stderr comes that rarely: at start only on a host up
// longer than that, and with a fatal error's stack dump.
package awake

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// Setting is what Keep adds to GODEBUG.
const Setting = "schedtrace=2147483647"

// Keep re-executes the program with Setting added to GODEBUG, which the
// runtime reads only at start, unless GODEBUG names schedtrace already
// (GODEBUG=schedtrace=0 keeps the runtime's own behaviour). On success it
// does not return; if the re-execution fails, the program goes on as it
// is. Linux only: the same process image is executed again through
// /proc/self/exe, with the same PID, arguments and open files, and the
// process takes back its name (nameSelf). Call it first in main, or where
// a command knows it will run long, never from a test: it would execute
// the test binary again.
func Keep() {
	if runtime.GOOS != "linux" {
		return
	}
	env, ok := Env(os.Environ())
	if !ok {
		nameSelf()
		return
	}
	_ = syscall.Exec("/proc/self/exe", os.Args, env)
}

// maxComm is the longest name the kernel keeps for a process (its comm,
// TASK_COMM_LEN less the terminating NUL).
const maxComm = 15

// nameSelf names the process after its argv[0] again when it is "exe":
// the kernel names a process after the file it executes, so a process
// executed through /proc/self/exe would be "exe" to ps, top, pgrep and
// pkill, not "poold". The first execution's name was the base name of the
// path executed, which is argv[0]'s as a shell, systemd or a container
// runtime starts a program.
func nameSelf() {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil || strings.TrimSuffix(string(b), "\n") != "exe" || len(os.Args) == 0 {
		return
	}
	name := filepath.Base(os.Args[0])
	if name == "exe" || name == "." || name == string(filepath.Separator) {
		return
	}
	if len(name) > maxComm {
		name = name[:maxComm]
	}
	// /proc/self is the thread group's leader, whose name is the
	// process's; any thread of the group may set it.
	f, err := os.OpenFile("/proc/self/comm", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	_, _ = f.WriteString(name)
	_ = f.Close()
}

// Env returns env with Setting added to GODEBUG, and false (env as it is)
// when GODEBUG sets schedtrace already.
func Env(env []string) ([]string, bool) {
	out := make([]string, 0, len(env)+1)
	godebug, seen := "", false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if !seen {
				godebug, seen = v, true // the first one counts, as for Getenv
			}
			continue
		}
		out = append(out, kv)
	}
	for setting := range strings.SplitSeq(godebug, ",") {
		if strings.HasPrefix(setting, "schedtrace=") {
			return env, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+Setting), true
}
