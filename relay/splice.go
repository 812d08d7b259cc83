package relay

import "net"

// The kernel copy of a lease with no protocol whose both sides are
// sockets (a pool listener's connection): Options.Splice for upstream
// bytes, Lease.ReadFrom for client bytes.

// spliceTo returns the socket the reader copies upstream bytes into in the
// kernel (Options.Splice), or nil when it goes through the Sink.
func (l *Lease) spliceTo() *net.TCPConn {
	dst, ok := l.opts.Splice.(*net.TCPConn)
	if !ok || l.sess != nil {
		return nil
	}
	switch l.nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return dst
	}
	return nil
}

// ReadFrom copies client bytes from src, the client side's socket, to the
// upstream until src's EOF (a nil error) or an error, in the kernel where
// Linux can (splice(2)): on a lease with no protocol whose upstream is a
// TCP socket, and src a TCP or Unix socket. It reports ok false, having
// read nothing, where it cannot: the caller then reads src itself and
// calls Write. A failed copy breaks the lease as a failed Write does.
// Unlike Write, the count of bytes written is updated only at the end, and
// a lease ended from the upstream's side stops the copy only once src
// reads again (the client side sets its deadline).
func (l *Lease) ReadFrom(src net.Conn) (ok bool, err error) {
	up, isTCP := l.nc.(*net.TCPConn)
	if !isTCP || l.sess != nil {
		return false, nil
	}
	switch src.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return false, nil
	}
	if l.Ended() {
		return true, nil
	}
	n, err := up.ReadFrom(src)
	l.bytesOut.Add(n)
	if err != nil {
		l.wmu.Lock()
		l.broken = true
		if !l.isCut() {
			werr := err
			l.writeErr.Store(&werr)
		}
		l.wmu.Unlock()
		_ = l.nc.Close() // the reader reports the end
	}
	return true, err
}
