package testkit

import "syscall"

// dieWithTest makes a server the test starts die with the test process
// (SIGKILL when it exits), so a test binary killed by its timeout leaves
// no server behind.
func dieWithTest(a *syscall.SysProcAttr) *syscall.SysProcAttr {
	if a == nil {
		a = &syscall.SysProcAttr{}
	}
	a.Pdeathsig = syscall.SIGKILL
	return a
}
