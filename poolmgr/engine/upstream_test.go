package engine

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poolplane/poolplane/internal/testkit"
)

func mustAllowlist(t *testing.T, entries ...string) *Allowlist {
	t.Helper()
	a, err := NewAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// allowlistCase is an allowlist's entries and endpoints it must allow and
// refuse.
type allowlistCase struct {
	name    string
	entries []string
	allow   []string
	refuse  []string
}

// checkAllowlist runs each case as a subtest.
func checkAllowlist(t *testing.T, tests []allowlistCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustAllowlist(t, tt.entries...)
			for _, ep := range tt.allow {
				if err := a.AllowEndpoint(ep); err != nil {
					t.Errorf("AllowEndpoint(%s) = %v, want allowed", ep, err)
				}
			}
			for _, ep := range tt.refuse {
				if err := a.AllowEndpoint(ep); !errors.Is(err, ErrUpstreamNotAllowed) {
					t.Errorf("AllowEndpoint(%s) = %v, want ErrUpstreamNotAllowed", ep, err)
				}
			}
		})
	}
}

// wantDialRefused acquires from p and fails the test unless the acquire
// fails on a dial refused as ErrUpstreamNotAllowed and no dial reached n.
func wantDialRefused(t *testing.T, p *Pool, n *fakeNet, what string) {
	t.Helper()
	_, err := p.Acquire(context.Background(), "t")
	var aerr *AcquireError
	if !errors.As(err, &aerr) || !errors.Is(aerr.LastDialErr, ErrUpstreamNotAllowed) {
		t.Fatalf("acquire of %s: %v, want a dial refused by the policy", what, err)
	}
	if n.dialCount() != 0 {
		t.Fatalf("%d dials reached the network", n.dialCount())
	}
}

func TestAllowlistEndpoints(t *testing.T) {
	checkAllowlist(t, []allowlistCase{
		{"open", nil,
			[]string{"10.0.0.1:80", "example.com:443", "127.0.0.1:6379", "[::1]:80", "169.254.169.254.nip.io:80"},
			[]string{"169.254.169.254:80", "169.254.1.1:443", "[fd00:ec2::254]:80", "[fe80::1]:80", "0.0.0.0:80", "[::]:80", "[::ffff:169.254.169.254]:80"}},
		{"cidrs", []string{"10.0.0.0/8", "fd00::/8", "192.168.1.7"},
			[]string{"10.1.2.3:6379", "[fd00::5]:443", "192.168.1.7:22"},
			[]string{"11.0.0.1:80", "192.168.1.8:22", "db.internal:5432", "[fd00:ec2::254]:80"}},
		{"hosts", []string{"*.internal:443", "redis.local:6379", "db.internal:*", "10.9.9.9:53"},
			[]string{"api.internal:443", "a.b.internal:443", "API.Internal:443", "redis.local:6379", "db.internal:1", "10.9.9.9:53"},
			[]string{"api.internal:80", "redis.local:6380", "internal:443", "evil.com:443", "10.9.9.9:54", "10.0.0.1:443"}},
		{"explicit metadata", []string{"169.254.169.254/32"},
			[]string{"169.254.169.254:80"},
			[]string{"169.254.169.253:80"}},
		{"broad CIDR is not explicit", []string{"0.0.0.0/0", "::/0"},
			[]string{"8.8.8.8:53", "[2001:db8::1]:443"},
			[]string{"169.254.169.254:80", "[fd00:ec2::254]:80", "[fe80::1]:80"}},
	})
}

func TestAllowlistDial(t *testing.T) {
	ip := netip.MustParseAddr
	hosts := mustAllowlist(t, "*.internal:443")
	both := mustAllowlist(t, "*.internal:443", "10.0.0.0/8")
	open := mustAllowlist(t)
	for _, tc := range []struct {
		a    *Allowlist
		host string
		ip   netip.Addr
		port int
		ok   bool
	}{
		{hosts, "api.internal", ip("10.1.1.1"), 443, true},
		{hosts, "api.internal", ip("203.0.113.9"), 443, true}, // host patterns alone do not pin addresses
		{hosts, "api.internal", ip("169.254.169.254"), 443, false},
		{hosts, "api.internal", ip("fd00:ec2::254"), 443, false},
		{hosts, "api.internal", ip("::ffff:169.254.169.254"), 443, false},
		{hosts, "api.internal", ip("10.1.1.1"), 80, false},
		{hosts, "evil.com", ip("10.1.1.1"), 443, false}, // written under an older allowlist
		{both, "api.internal", ip("10.1.1.1"), 443, true},
		{both, "api.internal", ip("192.168.0.1"), 443, false}, // rebound outside the CIDRs
		{both, "10.2.2.2", ip("10.2.2.2"), 5432, true},
		{open, "x.example", ip("192.0.2.1"), 80, true},
		{open, "x.example", ip("169.254.169.254"), 80, false},
		{open, "x.example", ip("0.0.0.0"), 80, false},
	} {
		err := tc.a.AllowDial(tc.host, tc.ip, tc.port)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUpstreamNotAllowed)) {
			t.Errorf("AllowDial(%s, %s, %d) = %v, want ok=%v", tc.host, tc.ip, tc.port, err, tc.ok)
		}
	}
}

func TestNewAllowlistErrors(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "example.com", "example.com:0", "example.com:http", "[:443", "a[:443"} {
		if _, err := NewAllowlist([]string{bad}); err == nil {
			t.Errorf("NewAllowlist(%q) accepted", bad)
		}
	}
}

// TestDialRefusesRebinding: an allowlisted name resolving to a forbidden
// address is never dialed, whether it resolves so at once or later.
func TestDialRefusesRebinding(t *testing.T) {
	n := newFakeNet(t, true)
	var names sync.Map
	names.Store("api.internal", []string{"169.254.169.254"})
	env := Env{Dial: n.dial, Resolver: fakeResolver{&names}, Logger: slog.New(slog.DiscardHandler),
		Upstreams: mustAllowlist(t, "*.internal:6379", "10.0.0.0/8")}
	cfg := testConfig(func(c *Config) {
		c.Endpoints = []string{"api.internal:6379"}
		c.Limits.AcquireTimeout = 300 * time.Millisecond
		c.DNSRefresh = time.Second
	})
	p, err := NewPool("rebind", cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	wantDialRefused(t, p, n, "a name on the metadata address")

	// An allowed address works; a later rebinding outside the CIDRs is
	// refused again, and only the allowed address was ever dialed.
	names.Store("api.internal", []string{"10.0.0.7"})
	deadline := time.Now().Add(10 * time.Second)
	var c *Conn
	for c == nil {
		if c, err = p.Acquire(context.Background(), "t"); err != nil && time.Now().After(deadline) {
			t.Fatalf("acquire after the name moved to an allowed address: %v", err)
		}
	}
	c.Release(false)
	names.Store("api.internal", []string{"192.168.9.9", "169.254.169.254"})
	p.Reconnect() // the next connection dials afresh, after the next resolution
	for _, d := range n.allConns() {
		_ = d.Close()
	}
	testkit.WaitFor(t, "the rebound name refused", func() bool {
		_, err := p.resolveEndpoint(context.Background(), "api.internal:6379")
		return errors.Is(err, ErrUpstreamNotAllowed)
	})
	if err := p.checkDial("api.internal", "192.168.9.9:6379"); !errors.Is(err, ErrUpstreamNotAllowed) {
		t.Fatalf("dial check of the rebound address: %v", err)
	}
	for _, d := range n.allConns() {
		if !strings.HasPrefix(d.addr, "10.0.0.7:") {
			t.Fatalf("dialed %s", d.addr)
		}
	}
}

// TestDialRefusesLiteral: a pool started directly (no Manager) with a
// metadata literal never dials it.
func TestDialRefusesLiteral(t *testing.T) {
	n := newFakeNet(t, true)
	cfg := testConfig(func(c *Config) {
		c.Endpoints = []string{"169.254.169.254:80"}
		c.Limits.AcquireTimeout = 200 * time.Millisecond
	})
	p, err := NewPool("meta", cfg, Env{Dial: n.dial, Resolver: fakeResolver{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	wantDialRefused(t, p, n, "a metadata literal")
}
