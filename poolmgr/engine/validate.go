package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// This file holds the grammars of the config fields that reach other
// systems as they are: endpoint hosts (the resolver, the dialer, the Host
// header of HTTP health checks) and the HTTP health check path (the
// request line sent to the upstream).

// Bounds of the grammars below.
const (
	maxHostLen     = 253  // RFC 1035, without the trailing dot
	maxLabelLen    = 63   // RFC 1035
	maxZoneLen     = 32   // an interface name or index
	maxHTTPPathLen = 2048 // a request target any server accepts
)

// validateEndpoint checks a "host:port" endpoint: a host (validateHost)
// and a decimal port 1-65535 without sign or leading zero.
func validateEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("endpoint %q must be host:port: %w", ep, err)
	}
	if err := validateHost(host); err != nil {
		return fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if err := validatePort(port); err != nil {
		return fmt.Errorf("endpoint %q: %w", ep, err)
	}
	return nil
}

func validatePort(port string) error {
	if port == "" || len(port) > 5 || port[0] == '0' || strings.TrimLeft(port, "0123456789") != "" {
		return errors.New("port must be a decimal number 1-65535")
	}
	if n, _ := strconv.Atoi(port); n > 65535 {
		return errors.New("port must be a decimal number 1-65535")
	}
	return nil
}

// validateHost checks an endpoint's host: an IP literal, or a DNS name.
//
//   - An IP literal (IPv6 in brackets in the endpoint) may carry a zone
//     ("fe80::1%eth0") only if it is an IPv6 link-local address, the only
//     addresses a zone selects an interface for; the zone is 1-32 letters,
//     digits, '.', '_' or '-'.
//   - A name is 1-253 characters (a trailing dot aside) of dot-separated
//     labels of 1-63 letters, digits, '_' and '-', no label starting or
//     ending with '-'; its last label is not a number ("1", "0x7f"), so
//     that no resolver reads it as an IPv4 address in another notation
//     ("0177.0.0.1", "2130706433").
//
// Spaces, control characters, NUL and anything else are refused.
func validateHost(host string) error {
	if host == "" {
		return errors.New("no host")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if z := ip.Zone(); z != "" {
			if !ip.Is6() || ip.Is4In6() || !ip.IsLinkLocalUnicast() {
				return fmt.Errorf("host %s: a zone is only meaningful on an IPv6 link-local address", strconv.Quote(host))
			}
			if len(z) > maxZoneLen || strings.TrimLeft(z, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
				return fmt.Errorf("host %s: a zone is 1-%d letters, digits, '.', '_' or '-'", strconv.Quote(host), maxZoneLen)
			}
		}
		return nil
	}
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > maxHostLen {
		return fmt.Errorf("host %s: a name is 1-%d characters", strconv.Quote(host), maxHostLen)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if err := validateLabel(l); err != nil {
			return fmt.Errorf("host %s is neither an IP address nor a host name: %w", strconv.Quote(host), err)
		}
	}
	if last := labels[len(labels)-1]; looksNumeric(last) {
		return fmt.Errorf("host %s is neither an IP address nor a host name: its last label %q is a number", strconv.Quote(host), last)
	}
	return nil
}

func validateLabel(l string) error {
	if l == "" || len(l) > maxLabelLen {
		return fmt.Errorf("labels are 1-%d characters", maxLabelLen)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return errors.New("a label neither starts nor ends with '-'")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !isAlnum(c) && c != '-' && c != '_' {
			return errors.New("a label holds letters, digits, '-' and '_' only")
		}
	}
	return nil
}

// looksNumeric reports whether a last label would make a name an IPv4
// address to some parser (the WHATWG URL standard's "ends in a number";
// inet_aton): all decimal digits, or "0x" and hexadecimal digits.
func looksNumeric(l string) bool {
	if strings.TrimLeft(l, "0123456789") == "" {
		return true
	}
	if len(l) >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X') {
		return strings.TrimLeft(l[2:], "0123456789abcdefABCDEF") == ""
	}
	return false
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// validateHTTPPath checks the request target of HTTP health checks: the
// origin form of RFC 9112 (absolute-path [ "?" query ]) in the RFC 3986
// grammar, at most 2048 bytes. A path is "/" and segments of unreserved
// characters, percent-encodings ("%2F"), sub-delims and ':' '@'; the query
// may add '/' and '?'. Spaces, CR, LF, '#', non-ASCII and malformed
// percent-encodings are refused: nothing in the path can end the request
// line or add a header.
func validateHTTPPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("must start with '/', got %s", strconv.Quote(p))
	}
	if len(p) > maxHTTPPathLen {
		return fmt.Errorf("at most %d bytes, got %d", maxHTTPPathLen, len(p))
	}
	query := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return fmt.Errorf("%s: '%%' must start a percent-encoding such as %%20", strconv.Quote(p))
			}
			i += 2
		case c == '?':
			query = true
		case c == '/' || isPchar(c):
		default:
			what := "path"
			if query {
				what = "query"
			}
			return fmt.Errorf("%s: byte %q is not allowed in an RFC 3986 %s (percent-encode it)", strconv.Quote(p), c, what)
		}
	}
	return nil
}

// isPchar reports whether c is an RFC 3986 pchar other than a
// percent-encoding: unreserved, sub-delims, ':' or '@'.
func isPchar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("-._~!$&'()*+,;=:@", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
