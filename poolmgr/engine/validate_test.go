package engine

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidateHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"redis.internal", true},
		{"localhost", true},
		{"api.example.com.", true},
		{"_svc.example.com", true},
		{"a-b.c1", true},
		{"xn--bcher-kva.example", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"fe80::1%eth0", true},
		{"fe80::1%25", true},
		{strings.Repeat("a.", 126) + "b", true},
		{"", false},
		{"redis internal", false},
		{"redis.internal\r\nX-Evil: 1", false},
		{"redis\x00.internal", false},
		{"redis\n", false},
		{" redis", false},
		{"-redis.internal", false},
		{"redis-.internal", false},
		{"a..b", false},
		{".", false},
		{"é.example", false},
		{"a/b", false},
		{"a@b", false},
		{strings.Repeat("a", 64) + ".example", false},
		{strings.Repeat("a.", 127) + "b", false},
		{"0177.0.0.1", false},
		{"2130706433", false},
		{"0x7f000001", false},
		{"127.1", false},
		{"10.0.0.256", false},
		{"::1%lo", false},
		{"fd00:ec2::254%lo", false},
		{"::%lo", false},
		{"fe80::1%a b", false},
		{"fe80::1%" + strings.Repeat("e", 33), false},
	} {
		if err := validateHost(tc.host); (err == nil) != tc.ok {
			t.Errorf("validateHost(%q) = %v, want ok=%v", tc.host, err, tc.ok)
		}
	}
}

func TestValidateEndpoint(t *testing.T) {
	for _, tc := range []struct {
		ep string
		ok bool
	}{
		{"redis.internal:6379", true},
		{"[::1]:443", true},
		{"[fe80::1%eth0]:80", true},
		{"10.0.0.1:65535", true},
		{"10.0.0.1:0", false},
		{"10.0.0.1:65536", false},
		{"10.0.0.1:+80", false},
		{"10.0.0.1:080", false},
		{"10.0.0.1:", false},
		{"10.0.0.1", false},
		{":80", false},
		{"a b:80", false},
		{"host\n:80", false},
		{"[fd00:ec2::254%lo]:80", false},
		{"[::%lo]:9004", false},
	} {
		if err := validateEndpoint(tc.ep); (err == nil) != tc.ok {
			t.Errorf("validateEndpoint(%q) = %v, want ok=%v", tc.ep, err, tc.ok)
		}
	}
}

func TestValidateHTTPPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/", true},
		{"/healthz", true},
		{"/api/v1/health?full=1&x=a/b?c", true},
		{"/a%20b", true},
		{"/~user/@me:8080/!$&'()*+,;=", true},
		{"//double", true},
		{"/" + strings.Repeat("a", maxHTTPPathLen-1), true},
		{"", false},
		{"healthz", false},
		{"/ HTTP/1.1\r\nHost: x\r\n\r\nGET /admin", false},
		{"/health\r\n", false},
		{"/health\n", false},
		{"/a b", false},
		{"/a\x00", false},
		{"/a#frag", false},
		{"/a%2", false},
		{"/a%zz", false},
		{"/a%", false},
		{"/é", false},
		{"/a\"b", false},
		{"/a<b>", false},
		{"/" + strings.Repeat("a", maxHTTPPathLen), false},
	} {
		if err := validateHTTPPath(tc.path); (err == nil) != tc.ok {
			t.Errorf("validateHTTPPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
}

func FuzzValidateHost(f *testing.F) {
	for _, s := range []string{"redis.internal", "127.0.0.1", "::1", "fe80::1%eth0", "a b", "a\r\n", "0x7f.1", "_a.b.", "fd00::1%lo"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if validateHost(host) != nil {
			return
		}
		if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			t.Fatalf("validateHost(%q) accepted a space, control or non-ASCII character", host)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			if ip.Zone() != "" && !ip.IsLinkLocalUnicast() {
				t.Fatalf("validateHost(%q) accepted a zone off link-local", host)
			}
			return
		}
		if strings.ContainsAny(host, ":/@[]%") || len(strings.TrimSuffix(host, ".")) > maxHostLen {
			t.Fatalf("validateHost(%q) accepted a name outside the grammar", host)
		}
	})
}

func FuzzValidateHTTPPath(f *testing.F) {
	for _, s := range []string{"/", "/a?b=c", "/a%20", "/\r\n", "/a b", "/%", "/é", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if validateHTTPPath(p) != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || len(p) > maxHTTPPathLen {
			t.Fatalf("validateHTTPPath(%q) accepted a bad start or length", p)
		}
		if strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '#' || r == '"' }) {
			t.Fatalf("validateHTTPPath(%q) accepted a byte that can end the request line", p)
		}
		if i := strings.IndexByte(p, '%'); i >= 0 && (i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2])) {
			t.Fatalf("validateHTTPPath(%q) accepted a malformed percent-encoding", p)
		}
	})
}
