//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

// setChildAttrs does nothing outside Linux.
func setChildAttrs(*exec.Cmd) {}

// procCPU needs Linux's /proc.
func procCPU(int) (time.Duration, error) {
	return 0, errors.New("process CPU time needs Linux /proc")
}
