//go:build !linux

package testkit

import "syscall"

// dieWithTest returns a: only Linux has a parent-death signal.
func dieWithTest(a *syscall.SysProcAttr) *syscall.SysProcAttr { return a }
