package server

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

func TestParsePoolName(t *testing.T) {
	for name, want := range map[string]string{
		"pools/a": "a", "pools/api-1": "api-1",
		"": "", "a": "", "pools/": "", "pools/A": "", "pools/a/b": "", "pools/-a": "", "pools/a-": "",
		"pools/1a": "", "pool/a": "", "pools/-": "",
	} {
		id, err := parsePoolName(name)
		if want == "" {
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("parsePoolName(%q) = %q, %v; want InvalidArgument", name, id, err)
			}
			continue
		}
		if err != nil || id != want {
			t.Errorf("parsePoolName(%q) = %q, %v; want %q", name, id, err, want)
		}
	}
}

func TestParseLeaseName(t *testing.T) {
	p, l, err := parseLeaseName("name", "pools/api/leases/api-0a1b2c3d-7")
	if err != nil || p != "api" || l != "api-0a1b2c3d-7" {
		t.Fatalf("parseLeaseName = %q %q %v", p, l, err)
	}
	if leaseName(p, l) != "pools/api/leases/api-0a1b2c3d-7" {
		t.Fatal("leaseName does not invert parseLeaseName")
	}
	for _, bad := range []string{"", "pools/api", "pools/api/leases/", "pools/API/leases/x", "pools/api/leases/X", "pools/api/lease/x", "x/api/leases/y"} {
		if _, _, err := parseLeaseName("name", bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseLeaseName(%q) = %v, want InvalidArgument", bad, err)
		}
	}
	if !leaseOfPool("api", "api-0a1b2c3d-7") || leaseOfPool("a", "a-b-0a1b2c3d-7") || leaseOfPool("other", "api-0a1b2c3d-7") {
		t.Fatal("leaseOfPool")
	}
}

func TestParseEtag(t *testing.T) {
	for in, want := range map[string]int64{"": 0, `"12"`: 12, "12": 12} {
		if got, err := parseEtag("etag", in); err != nil || got != want {
			t.Errorf("parseEtag(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{`"0"`, `"-1"`, "W/\"1\"", `"`, "abc", `""`} {
		if _, err := parseEtag("etag", bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseEtag(%q) = %v, want InvalidArgument", bad, err)
		}
	}
	if got, _ := parseEtag("etag", etagOf(42)); got != 42 {
		t.Fatal("parseEtag does not invert etagOf")
	}
}

func TestValidatePageSize(t *testing.T) {
	for in, want := range map[int32]int{0: defaultPageSize, 1: 1, 1000: 1000} {
		if got, err := validatePageSize(in); err != nil || got != want {
			t.Errorf("validatePageSize(%d) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []int32{-1, 1001} {
		if _, err := validatePageSize(bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("validatePageSize(%d) = %v", bad, err)
		}
	}
}

func TestRevisionPageToken(t *testing.T) {
	got, err := parseRevisionPageToken(revisionPageToken(77))
	if err != nil || got != 77 {
		t.Fatalf("round trip = %d, %v", got, err)
	}
	for _, bad := range []string{"x", revisionPageToken(0), "cjA", "r12"} {
		if _, err := parseRevisionPageToken(bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseRevisionPageToken(%q) = %v", bad, err)
		}
	}
}

func TestValidateWatchPoolStatsRequest(t *testing.T) {
	ids, iv, err := validateWatchPoolStatsRequest(&poolv1.WatchPoolStatsRequest{Names: []string{"pools/b", "pools/a", "pools/b"}})
	if err != nil || len(ids) != 2 || ids[0] != "a" || iv != defaultStatsInterval {
		t.Fatalf("= %v %v %v", ids, iv, err)
	}
	for _, d := range []time.Duration{minStatsInterval, maxStatsInterval} {
		if _, iv, err := validateWatchPoolStatsRequest(&poolv1.WatchPoolStatsRequest{Interval: durationpb.New(d)}); err != nil || iv != d {
			t.Errorf("interval %v: %v %v", d, iv, err)
		}
	}
	for _, d := range []time.Duration{0, minStatsInterval - 1, maxStatsInterval + 1, -time.Second} {
		if _, _, err := validateWatchPoolStatsRequest(&poolv1.WatchPoolStatsRequest{Interval: durationpb.New(d)}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("interval %v: %v", d, err)
		}
	}
}

func TestValidateClientName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"", true},
		{"worker-7 on host.example (pid 42)", true},
		{"café/ünïcode/日本", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"\x1b[2J\x1b[H", false},
		{"name\nforged log line", false},
		{"tab\there", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"c1\u0085", false},
		{"bidi\u202eevil", false},
		{"zero\u200bwidth", false},
		{"nbsp\u00a0", false},
		{"bad utf8 \xff", false},
	} {
		if err := validateClientName(tc.name); (err == nil) != tc.ok {
			t.Errorf("validateClientName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
