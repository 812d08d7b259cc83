//go:build unix && !linux

package engine

import (
	"errors"
	"syscall"
)

const peekSupported = true

// peekSocket is the syscall.RawConn.Read callback of a peek: one recv with
// MSG_PEEK|MSG_DONTWAIT that never consumes data and never blocks.
func (c *Conn) peekSocket(fd uintptr) bool {
	n, _, err := syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	c.peekN = n
	var errno syscall.Errno
	if errors.As(err, &errno) {
		c.peekErrno = errno
	} else if err != nil {
		c.peekErrno = syscall.EINVAL
	}
	return true
}
