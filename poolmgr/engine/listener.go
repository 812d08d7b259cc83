package engine

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Listener is one local address a pool is served on: each connection
// accepted there is a lease of the pool. The engine keeps it with the rest
// of the configuration and does nothing with it; the process that serves
// the pool opens it (see ListenerHost in poolmgr).
type Listener struct {
	// Address is "host:port" (TCP; host an IP address or "localhost"; port
	// 0 picks a free port) or "unix:///absolute/path" (a Unix socket).
	Address string `field:"address"`
	// Mode is a Unix socket's permission bits. Default 0660.
	Mode uint32 `field:"mode"`
	// Group is the group (name or numeric id) a Unix socket is given.
	Group string `field:"group"`
	// TLS serves TLS with the process's certificate and requires a client
	// certificate mapped to a principal allowed to lease the pool. Required
	// on a TCP address that is not loopback.
	TLS bool `field:"tls"`
}

// Limits of Config.Listeners.
const (
	// MaxListeners is the most listeners one pool may have.
	MaxListeners = 16
	// DefaultUnixMode is a Unix socket listener's mode when Mode is 0.
	DefaultUnixMode = 0o660
	// maxUnixPath is the longest socket path Linux takes (sun_path less
	// its NUL).
	maxUnixPath = 107
)

// unixScheme prefixes a Unix socket listener's address.
const unixScheme = "unix://"

// ListenAddr is a parsed Listener.Address.
type ListenAddr struct {
	// Network is "tcp" or "unix".
	Network string
	// Addr is what net.Listen takes: "ip:port" (localhost resolved to
	// 127.0.0.1) or the socket's path.
	Addr string
	// Loopback: a TCP address on the loopback interface, or a Unix socket.
	Loopback bool
}

// Key identifies the address among those of every pool: two listeners with
// the same key cannot both be open. A TCP listener on port 0 has no key
// (the empty string): each gets a port of its own.
func (a ListenAddr) Key() string {
	if a.Network == "tcp" && strings.HasSuffix(a.Addr, ":0") {
		return ""
	}
	return a.Network + ":" + a.Addr
}

// ParseListenAddr parses a Listener.Address.
func ParseListenAddr(s string) (ListenAddr, error) {
	if path, ok := strings.CutPrefix(s, unixScheme); ok {
		switch {
		case !filepath.IsAbs(path):
			return ListenAddr{}, fmt.Errorf("unix socket path must be absolute (unix:///run/poolplane/cache.sock), got %q", s)
		case filepath.Clean(path) != path:
			return ListenAddr{}, fmt.Errorf("unix socket path %q is not clean (want %q)", path, filepath.Clean(path))
		case len(path) > maxUnixPath:
			return ListenAddr{}, fmt.Errorf("unix socket path is %d bytes, at most %d", len(path), maxUnixPath)
		case strings.ContainsRune(path, 0):
			return ListenAddr{}, fmt.Errorf("unix socket path %q has a NUL byte", path)
		}
		return ListenAddr{Network: "unix", Addr: path, Loopback: true}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return ListenAddr{}, fmt.Errorf("want host:port or unix:///path, got %q", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return ListenAddr{}, fmt.Errorf("port %q is not a number 0-65535", port)
	}
	if host == "localhost" {
		return ListenAddr{Network: "tcp", Addr: net.JoinHostPort("127.0.0.1", strconv.FormatUint(p, 10)), Loopback: true}, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return ListenAddr{}, fmt.Errorf("host %q is not an IP address without a zone or \"localhost\"", host)
	}
	ip = ip.Unmap()
	return ListenAddr{Network: "tcp", Addr: netip.AddrPortFrom(ip, uint16(p)).String(), Loopback: ip.IsLoopback()}, nil
}

// validateListeners checks Config.Listeners.
func validateListeners(ls []Listener, bad func(field, format string, args ...any)) {
	if len(ls) > MaxListeners {
		bad("listeners", "at most %d listeners, got %d", MaxListeners, len(ls))
		return
	}
	seen := make(map[string]int, len(ls))
	for i, l := range ls {
		field := fmt.Sprintf("listeners[%d]", i)
		a, err := ParseListenAddr(l.Address)
		if err != nil {
			bad(field+".address", "%v", err)
			continue
		}
		if k := a.Key(); k != "" {
			if j, dup := seen[k]; dup {
				bad(field+".address", "%s is also listeners[%d]", l.Address, j)
			}
			seen[k] = i
		}
		switch a.Network {
		case "unix":
			if l.Mode > 0o777 {
				bad(field+".mode", "permission bits are 0..0777 (511), got %#o", l.Mode)
			}
			if l.TLS {
				bad(field+".tls", "a Unix socket is reached only on this host: its file mode and group say who may connect; tls is for TCP")
			}
			if l.Group != "" && (len(l.Group) > 32 || strings.ContainsAny(l.Group, ":/ \x00")) {
				bad(field+".group", "not a group name or id: %q", l.Group)
			}
		default:
			if l.Mode != 0 || l.Group != "" {
				bad(field+".mode", "mode and group are for Unix sockets")
			}
			if !a.Loopback && !l.TLS {
				bad(field+".tls", "%s is not a loopback address: serving a pool there needs tls (client certificates mapped to principals allowed to lease it)", l.Address)
			}
		}
	}
}
