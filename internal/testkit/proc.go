package testkit

import (
	"bytes"
	"os"
	"strconv"
	"testing"
	"time"
)

// ProcCPU returns the CPU time (user and system) process pid has used,
// from /proc/PID/stat; pid 0 means this process. It skips the test where
// there is no /proc.
func ProcCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) && pid == 0 {
		t.Skip("no /proc: the CPU time of processes is read from /proc/PID/stat")
	}
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. utime and stime are fields 14 and 15, 12 and 13 here,
	// in USER_HZ (100 on every Linux architecture Go supports).
	f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:])
	if len(f) < 13 {
		t.Fatalf("%s: %d fields", path, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(string(s), 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
