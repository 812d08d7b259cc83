package reliability_test

import (
	"os/exec"
	"syscall"
)

// setPdeathsig makes the child die with the test process, so nothing
// outlives a test binary that crashed or was killed.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
