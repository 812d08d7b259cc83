package engine

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestCanonicalAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.1.2.3", "10.1.2.3"},
		{"::ffff:169.254.169.254", "169.254.169.254"},
		{"::169.254.169.254", "169.254.169.254"},
		{"64:ff9b::a9fe:a9fe", "169.254.169.254"},
		{"2002:a9fe:a9fe::", "169.254.169.254"},
		{"2002:a9fe:a9fe:1:2:3:4:5", "169.254.169.254"},
		{"64:ff9b::6464:64c8", "100.100.100.200"},
		{"fe80::1%lo", "fe80::1"},
		{"::%lo", "::"},
		{"fd00:ec2::254%eth0", "fd00:ec2::254"},
		{"::ffff:127.0.0.1%lo", "127.0.0.1"},
		{"::", "::"},
		{"::1", "::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"64:ff9b:1::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe"}, // local-use NAT64 prefixes vary: not recognised
	} {
		if got := canonicalAddr(netip.MustParseAddr(tc.in)); got.String() != tc.want {
			t.Errorf("canonicalAddr(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestAllowlistZonesAndEmbeddedIPv4: a zone or an IPv6 form carrying an
// IPv4 address reaches no address its plain form could not.
func TestAllowlistZonesAndEmbeddedIPv4(t *testing.T) {
	checkAllowlist(t, []allowlistCase{
		{"open", nil,
			[]string{"[::1]:80", "[64:ff9b::a00:1]:80", "[2002:a00:1::]:443", "10.0.0.1:80"},
			[]string{
				"[fe80::1%lo]:9004", "[::%lo]:9004", "[fd00:ec2::254%lo]:80", "[fe80::1%25eth0]:80",
				"[::169.254.169.254]:80", "[64:ff9b::a9fe:a9fe]:80", "[2002:a9fe:a9fe::]:80", "[::ffff:169.254.169.254]:80",
				"100.100.100.200:80", "[::ffff:100.100.100.200]:80", "[64:ff9b::6464:64c8]:80", "[2002:6464:64c8::1]:80",
				"[::0.0.0.0]:80", "[::ffff:0.0.0.0]:80",
			}},
		{"any", []string{"any"},
			[]string{"10.0.0.1:80", "example.com:443"},
			[]string{"[64:ff9b::a9fe:a9fe]:80", "100.100.100.200:80"}},
		{"cidrs", []string{"10.0.0.0/8"},
			[]string{"[64:ff9b::a00:1]:80", "[2002:a00:1::]:80", "[::ffff:10.0.0.1]:80", "[::a00:1]:80"},
			[]string{"[64:ff9b::b00:1]:80", "[fe80::1%lo]:80", "[::%lo]:80"}},
		{"mapped CIDR is its IPv4 range", []string{"::ffff:10.0.0.0/104"},
			[]string{"10.1.2.3:80", "[::ffff:10.1.2.3]:80"},
			[]string{"11.0.0.1:80"}},
		{"explicit link-local still needs no zone to match", []string{"fe80::/10"},
			[]string{"[fe80::1%lo]:80", "[fe80::1]:80"},
			[]string{"[fd00:ec2::254%lo]:80"}},
	})

	// Resolved addresses are checked the same way at dial time.
	open := mustAllowlist(t)
	hosts := mustAllowlist(t, "*.internal:443")
	for _, tc := range []struct {
		a  *Allowlist
		ip string
	}{
		{open, "fe80::1%lo"}, {open, "::%lo"}, {open, "fd00:ec2::254%lo"}, {open, "64:ff9b::a9fe:a9fe"},
		{open, "2002:a9fe:a9fe::"}, {open, "::169.254.169.254"}, {open, "100.100.100.200"},
		{hosts, "fe80::1%lo"}, {hosts, "64:ff9b::6464:64c8"},
	} {
		if err := tc.a.AllowDial("api.internal", netip.MustParseAddr(tc.ip), 443); !errors.Is(err, ErrUpstreamNotAllowed) {
			t.Errorf("AllowDial(api.internal, %s) = %v, want ErrUpstreamNotAllowed", tc.ip, err)
		}
	}

	for _, bad := range [][]string{{"any", "10.0.0.0/8"}, {"fe80::1%lo"}, {"[fe80::1%lo]:80"}} {
		if _, err := NewAllowlist(bad); err == nil {
			t.Errorf("NewAllowlist(%q) accepted", bad)
		}
	}
}

// TestDialRefusesZonedResolution: a name that resolves (hosts file,
// rebinding) to a zoned or IPv4-embedding address is never dialed.
func TestDialRefusesZonedResolution(t *testing.T) {
	n := newFakeNet(t, true)
	var names sync.Map
	names.Store("api.internal", []string{"fe80::1%lo", "::%lo", "fd00:ec2::254%lo", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::"})
	env := Env{Dial: n.dial, Resolver: fakeResolver{&names}, Logger: slog.New(slog.DiscardHandler)}
	cfg := testConfig(func(c *Config) {
		c.Endpoints = []string{"api.internal:9004"}
		c.Limits.AcquireTimeout = 300 * time.Millisecond
	})
	p, err := NewPool("zoned", cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	wantDialRefused(t, p, n, "a name on zoned and embedded forbidden addresses")
	for _, addr := range []string{"[fe80::1%lo]:9004", "[::%lo]:9004", "[64:ff9b::a9fe:a9fe]:9004"} {
		if err := p.checkDial("api.internal", addr); !errors.Is(err, ErrUpstreamNotAllowed) {
			t.Errorf("checkDial(%s) = %v", addr, err)
		}
	}
}

// FuzzAllowlistAddr: a zone never changes a decision, an address and its
// canonical form are decided alike, and no canonical address inside a
// denied range passes an open allowlist.
func FuzzAllowlistAddr(f *testing.F) {
	for _, s := range []string{"fe80::1%lo", "::%lo", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::169.254.169.254",
		"::ffff:169.254.169.254", "100.100.100.200", "10.0.0.1", "::1", "2001:db8::1"} {
		f.Add(s, uint16(443))
	}
	lists := []*Allowlist{{}}
	for _, e := range [][]string{{"10.0.0.0/8", "*.internal:443"}, {"fe80::/10"}, {"169.254.169.254/32", "2001:db8::/32"}} {
		a, err := NewAllowlist(e)
		if err != nil {
			f.Fatal(err)
		}
		lists = append(lists, a)
	}
	f.Fuzz(func(t *testing.T, s string, port uint16) {
		ip, err := netip.ParseAddr(s)
		if err != nil || port == 0 {
			return
		}
		c := canonicalAddr(ip)
		if c.Zone() != "" || c.Is4In6() {
			t.Fatalf("canonicalAddr(%s) = %s: zoned or mapped", ip, c)
		}
		for i, a := range lists {
			got := a.AllowDial("api.internal", ip, int(port)) == nil
			if canon := a.AllowDial("api.internal", c, int(port)) == nil; got != canon {
				t.Fatalf("list %d: AllowDial(%s) = %v, of its canonical form %s = %v", i, ip, got, c, canon)
			}
			if ip.Is6() && !ip.Is4In6() {
				if zoned := a.AllowDial("api.internal", ip.WithZone("lo"), int(port)) == nil; zoned != got {
					t.Fatalf("list %d: a zone changed the decision on %s", i, ip)
				}
			}
		}
		for _, d := range deniedPrefixes {
			if d.Contains(c) && lists[0].AllowDial("x", ip, int(port)) == nil {
				t.Fatalf("the open allowlist lets %s (%s) through", ip, c)
			}
		}
	})
}
