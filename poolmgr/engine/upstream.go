package engine

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// UpstreamPolicy decides which upstreams pools may reach, so that poold is
// never an open proxy. The pool's owner calls AllowEndpoint for every
// endpoint of every pool it writes; the pool calls
// AllowDial for every resolved address before it dials, so a name that
// later resolves elsewhere (DNS rebinding) cannot reach a forbidden
// address. Both return an error wrapping ErrUpstreamNotAllowed to refuse.
// Implementations must be safe for concurrent use.
type UpstreamPolicy interface {
	// AllowEndpoint checks a configured "host:port" endpoint.
	AllowEndpoint(hostport string) error
	// AllowDial checks one resolved address of an endpoint whose host is
	// host (a name, or the IP literal itself).
	AllowDial(host string, ip netip.Addr, port int) error
}

// deniedPrefixes are refused by every Allowlist unless a CIDR entry at
// least as specific allows them: link-local addresses, where clouds serve
// instance metadata and credentials (169.254.169.254, fd00:ec2::254),
// Alibaba Cloud's metadata address (100.100.100.200), and the unspecified
// addresses, which reach the local host. Addresses are compared in their
// canonical form (see canonicalAddr).
var deniedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("0.0.0.0/32"),
	netip.MustParsePrefix("::/128"),
}

// IPv6 ranges whose addresses carry an IPv4 address that a translator or
// relay reaches on their behalf.
var (
	// ipv4Compatible is ::/96, the deprecated IPv4-compatible form
	// (::169.254.169.254); :: and ::1 are not IPv4 addresses.
	ipv4Compatible = netip.MustParsePrefix("::/96")
	// nat64 is the well-known NAT64 prefix (RFC 6052): 64:ff9b::a9fe:a9fe
	// is 169.254.169.254 through a NAT64 gateway.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFour is 6to4 (RFC 3056): 2002:a9fe:a9fe:: carries
	// 169.254.169.254 in bits 16 to 47.
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// canonicalAddr is the address an upstream policy checks for ip: without
// an IPv6 zone (netip.Prefix.Contains is false for any zoned address, and
// the zone changes only the interface, not where the address leads), and
// as the IPv4 address it carries when it has one: IPv4-mapped
// (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) or
// 6to4 (2002::/16). Other translation prefixes (a network's own NAT64
// prefix, Teredo) are not recognised: list them in an allowlist only
// deliberately.
func canonicalAddr(ip netip.Addr) netip.Addr {
	ip = ip.WithZone("").Unmap()
	if !ip.Is6() {
		return ip
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16]))
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6]))
	case ipv4Compatible.Contains(ip) && ip != netip.IPv6Unspecified() && ip != netip.IPv6Loopback():
		return netip.AddrFrom4([4]byte(b[12:16]))
	}
	return ip
}

// hostPattern is one "host:port" allowlist entry.
type hostPattern struct {
	host string // lowercase; path.Match syntax ("*.internal"), or an IP literal
	port int    // 0: any port ("*")
}

// Allowlist is the UpstreamPolicy of poold's --allow-upstream entries.
//
// Entries are CIDRs ("10.0.0.0/8", "fd00::/8"; a bare IP is its /32 or
// /128) and host patterns with a port ("*.internal:443", "redis.local:6379",
// "db.internal:*"; path.Match syntax, so "*" also spans dots). Two layers
// are checked:
//
//   - names: an endpoint's host must match a host pattern (port included),
//     or be an IP literal inside a CIDR entry;
//   - addresses: when there are CIDR entries, every address dialed must be
//     inside one (or be an IP literal listed as a host pattern). With host
//     patterns only, names may resolve anywhere but to a denied address.
//
// Link-local and metadata addresses (169.254.0.0/16, 100.100.100.200,
// fe80::/10, fd00:ec2::254) and the unspecified addresses are always
// refused, unless a CIDR entry at least as specific as the denied range
// contains them ("169.254.169.254/32" does; "0.0.0.0/0" does not).
//
// Every address, written or resolved, is checked in its canonical form
// (canonicalAddr): without an IPv6 zone, and IPv6 forms that carry an IPv4
// address (::ffff:a.b.c.d, ::a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16)
// as that IPv4 address, so "[fe80::1%lo]:80" and "[64:ff9b::a9fe:a9fe]:80"
// are refused as fe80::1 and 169.254.169.254 are.
//
// An Allowlist with no entries, or with the single entry "any", allows
// every upstream but the denied addresses: that is poold's default without
// --allow-upstream on a loopback or Unix-socket listener.
// Its methods are safe for concurrent use (it is immutable).
type Allowlist struct {
	prefixes []netip.Prefix
	hosts    []hostPattern
}

var _ UpstreamPolicy = (*Allowlist)(nil)

// AllowAny is the allowlist entry that states, explicitly, that pools may
// reach any upstream but the always-denied addresses. It cannot be combined
// with other entries.
const AllowAny = "any"

// NewAllowlist parses allowlist entries (see Allowlist). It returns an error
// naming the first malformed entry.
func NewAllowlist(entries []string) (*Allowlist, error) {
	a := &Allowlist{}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if e == AllowAny {
			if len(entries) > 1 {
				return nil, fmt.Errorf("allowlist entry %q: %q stands alone, it cannot be combined with other entries", e, AllowAny)
			}
			continue
		}
		if strings.Contains(e, "/") {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("allowlist entry %q: %w", e, err)
			}
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				// ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are checked unmapped.
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			a.prefixes = append(a.prefixes, p.Masked())
			continue
		}
		if ip, err := netip.ParseAddr(e); err == nil {
			if ip.Zone() != "" {
				return nil, fmt.Errorf("allowlist entry %q: an address with a zone; give the address alone", e)
			}
			a.prefixes = append(a.prefixes, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			return nil, fmt.Errorf("allowlist entry %q: want a CIDR or host:port (port may be *): %w", e, err)
		}
		hp := hostPattern{host: strings.ToLower(host)}
		if port != "*" {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("allowlist entry %q: port must be 1-65535 or *", e)
			}
			hp.port = n
		}
		if _, err := path.Match(hp.host, ""); err != nil || hp.host == "" {
			return nil, fmt.Errorf("allowlist entry %q: bad host pattern", e)
		}
		if ip, err := netip.ParseAddr(hp.host); err == nil {
			if ip.Zone() != "" {
				return nil, fmt.Errorf("allowlist entry %q: an address with a zone; give the address alone", e)
			}
			hp.host = canonicalAddr(ip).String()
		}
		a.hosts = append(a.hosts, hp)
	}
	return a, nil
}

// open reports whether the allowlist has no entries.
func (a *Allowlist) open() bool { return len(a.prefixes) == 0 && len(a.hosts) == 0 }

func (a *Allowlist) matchHost(host string, port int) bool {
	host = strings.ToLower(host)
	for _, h := range a.hosts {
		if h.port != 0 && h.port != port {
			continue
		}
		if ok, _ := path.Match(h.host, host); ok {
			return true
		}
	}
	return false
}

func (a *Allowlist) inPrefixes(ip netip.Addr) bool {
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// checkDenied refuses the always-denied addresses not explicitly allowed.
func (a *Allowlist) checkDenied(ip netip.Addr) error {
	for _, d := range deniedPrefixes {
		if !d.Contains(ip) {
			continue
		}
		for _, p := range a.prefixes {
			if p.Bits() >= d.Bits() && p.Contains(ip) {
				return nil
			}
		}
		return fmt.Errorf("address %s is link-local, metadata or unspecified (%s); allow it with a CIDR entry such as %s/%d: %w",
			ip, d, ip, ip.BitLen(), ErrUpstreamNotAllowed)
	}
	return nil
}

// AllowEndpoint implements UpstreamPolicy.
func (a *Allowlist) AllowEndpoint(hostport string) error {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", hostport, err)
	}
	port, _ := strconv.Atoi(portStr)
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = canonicalAddr(ip)
		if err := a.checkDenied(ip); err != nil {
			return fmt.Errorf("endpoint %s: %w", hostport, err)
		}
		if a.open() || a.inPrefixes(ip) || a.matchHost(ip.String(), port) {
			return nil
		}
		return fmt.Errorf("endpoint %s is not in the upstream allowlist: %w", hostport, ErrUpstreamNotAllowed)
	}
	if a.open() || a.matchHost(host, port) {
		return nil
	}
	return fmt.Errorf("endpoint %s matches no host pattern of the upstream allowlist: %w", hostport, ErrUpstreamNotAllowed)
}

// AllowDial implements UpstreamPolicy: the endpoint must still be allowed
// (the allowlist may have changed since the pool was written), and so must
// the address.
func (a *Allowlist) AllowDial(host string, ip netip.Addr, port int) error {
	ip = canonicalAddr(ip)
	if err := a.checkDenied(ip); err != nil {
		return fmt.Errorf("dial %s (%s): %w", host, ip, err)
	}
	if a.open() {
		return nil
	}
	if err := a.AllowEndpoint(net.JoinHostPort(host, strconv.Itoa(port))); err != nil {
		return err
	}
	if len(a.prefixes) > 0 && !a.inPrefixes(ip) && !a.matchHost(ip.String(), port) {
		return fmt.Errorf("dial %s: address %s is outside the allowlist's CIDRs: %w", host, ip, ErrUpstreamNotAllowed)
	}
	return nil
}

// defaultUpstreams is the policy of pools without Env.Upstreams.
var defaultUpstreams = &Allowlist{}

// DefaultUpstreams returns the policy a pool uses when Env.Upstreams is nil:
// an empty Allowlist (every upstream but link-local, metadata and
// unspecified addresses).
func DefaultUpstreams() UpstreamPolicy { return defaultUpstreams }

// checkDial applies the pool's policy to one resolved "ip:port" address.
func (p *Pool) checkDial(host, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w: %w", addr, ErrUpstreamNotAllowed, err)
	}
	return p.env.Upstreams.AllowDial(host, ap.Addr(), int(ap.Port()))
}
