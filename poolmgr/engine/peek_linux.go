package engine

import (
	"syscall"
	"unsafe"
)

const peekSupported = true

// peekSocket is the syscall.RawConn.Read callback of a peek: one recv with
// MSG_PEEK|MSG_DONTWAIT that never consumes data and never blocks. It
// returns true so RawConn.Read does not wait for readability.
func (c *Conn) peekSocket(fd uintptr) bool {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd,
		uintptr(unsafe.Pointer(&c.peekBuf[0])), uintptr(len(c.peekBuf)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	c.peekN, c.peekErrno = int(n), errno
	return true
}
