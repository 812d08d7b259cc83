package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// setChildAttrs makes the kernel kill a child when the bench dies, so that
// no upstream, poold or HAProxy outlives it.
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// procCPU returns the CPU time (user + system) process pid has used, from
// /proc/PID/stat; pid 0 means this process.
func procCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. utime and stime are fields 14 and 15, 12 and 13 here.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New(path + ": no ')'")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: %d fields", path, len(f))
	}
	utime, err := strconv.ParseInt(string(f[11]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: utime: %w", path, err)
	}
	stime, err := strconv.ParseInt(string(f[12]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: stime: %w", path, err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}
