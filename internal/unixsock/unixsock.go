// Package unixsock opens Unix socket listeners the way poold does for its
// API and for pool listeners: a stale socket left by a process that did
// not exit cleanly is replaced, anything else at the path is left alone.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// staleDialTimeout bounds the probe of an existing socket.
const staleDialTimeout = time.Second

// Listen opens a Unix socket listener at path with the permission bits
// mode, owned by group when it is not empty (a name or a numeric id).
// An existing path is replaced only if it is a stale socket (see
// RemoveStale). Closing the listener removes the socket file.
func Listen(path string, mode os.FileMode, group string) (*net.UnixListener, error) {
	gid := -1
	if group != "" {
		var err error
		if gid, err = lookupGroup(group); err != nil {
			return nil, fmt.Errorf("unix socket %s: %w", path, err)
		}
	}
	if err := RemoveStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := chmod(path, mode, group, gid); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// Chmod sets an open socket's permission bits and group (none when group
// is empty).
func Chmod(path string, mode os.FileMode, group string) error {
	gid := -1
	if group != "" {
		var err error
		if gid, err = lookupGroup(group); err != nil {
			return fmt.Errorf("unix socket %s: %w", path, err)
		}
	}
	return chmod(path, mode, group, gid)
}

func chmod(path string, mode os.FileMode, group string, gid int) error {
	if err := os.Chmod(path, mode.Perm()); err != nil {
		return fmt.Errorf("chmod socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			return fmt.Errorf("chown socket to group %s: %w", group, err)
		}
	}
	return nil
}

// lookupGroup resolves a group name or numeric id.
func lookupGroup(group string) (int, error) {
	if id, err := strconv.Atoi(group); err == nil && id >= 0 {
		return id, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// RemoveStale clears the way for a Unix socket at path: nothing there is
// fine; a socket nobody accepts on (connection refused) is removed.
// Anything else is refused and left alone: a regular file, a directory, a
// symbolic link, or a socket another process serves.
func RemoveStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("unix socket %s: the path exists and is not a socket (%v); poold removes only a stale socket: "+
			"move it away or choose another path", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, staleDialTimeout)
	if err == nil {
		_ = c.Close() // a probe: nothing was sent
		return fmt.Errorf("unix socket %s is in use by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("unix socket %s: cannot tell whether it is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
