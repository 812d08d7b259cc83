//go:build !linux

package reliability_test

import "os/exec"

// setPdeathsig does nothing off Linux: children end when their stdin or
// their own bounds say so.
func setPdeathsig(*exec.Cmd) {}
