package server

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// Fuzz targets for every validator: none may panic, every failure is an
// InvalidArgument, and every success round-trips.

func FuzzParsePoolName(f *testing.F) {
	for _, s := range []string{"pools/a", "pools/", "pools/-", "pools/a/leases/b", "", "pools/\x00", "pools/" + strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id, err := parsePoolName(name)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("parsePoolName(%q): %v", name, err)
			}
			return
		}
		if poolName(id) != name || poolmgr.ValidatePoolID(id) != nil {
			t.Fatalf("parsePoolName(%q) = %q", name, id)
		}
	})
}

func FuzzParseLeaseName(f *testing.F) {
	for _, s := range []string{"pools/a/leases/a-0a0b0c0d-1", "pools/a/leases/", "pools/a/leases/b/leases/c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, l, err := parseLeaseName("name", name)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("parseLeaseName(%q): %v", name, err)
			}
			return
		}
		if leaseName(p, l) != name {
			t.Fatalf("parseLeaseName(%q) = %q, %q", name, p, l)
		}
		_ = leaseOfPool(p, l)
	})
}

func FuzzParseEtag(f *testing.F) {
	for _, s := range []string{`"1"`, "1", `""`, `"`, "W/\"1\"", `"9223372036854775808"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, etag string) {
		rev, err := parseEtag("etag", etag)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("parseEtag(%q): %v", etag, err)
			}
			return
		}
		if etag != "" && rev <= 0 {
			t.Fatalf("parseEtag(%q) = %d", etag, rev)
		}
		if rev > 0 {
			if back, err := parseEtag("etag", etagOf(rev)); err != nil || back != rev {
				t.Fatalf("etagOf(%d) does not parse back", rev)
			}
		}
	})
}

func FuzzRevisionPageToken(f *testing.F) {
	f.Add(revisionPageToken(5))
	f.Add("")
	f.Add("cg")
	f.Fuzz(func(t *testing.T, tok string) {
		rev, err := parseRevisionPageToken(tok)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("parseRevisionPageToken(%q): %v", tok, err)
			}
			return
		}
		if tok != "" && rev <= 0 {
			t.Fatalf("parseRevisionPageToken(%q) = %d", tok, rev)
		}
	})
}

func FuzzValidateUpdateMask(f *testing.F) {
	f.Add("limits.max_connections,labels")
	f.Add("*")
	f.Add("state")
	f.Add("tls,tls.clientKeyPem")
	f.Add("")
	f.Fuzz(func(t *testing.T, joined string) {
		var paths []string
		if joined != "" {
			paths = strings.Split(joined, ",")
		}
		m, err := validateUpdateMask(paths)
		if err != nil {
			if status.Code(toStatus(err)) != codes.InvalidArgument {
				t.Fatalf("validateUpdateMask(%q): %v", paths, err)
			}
			return
		}
		for leaf := range m.leaves {
			var dst poolmgr.Config
			copyLeaf(&dst, &poolmgr.Config{}, leaf) // panics for a non-leaf
		}
	})
}

func FuzzValidatePageSize(f *testing.F) {
	for _, n := range []int32{0, 1, 1000, 1001, -1} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int32) {
		got, err := validatePageSize(n)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument || (n >= 0 && n <= maxPageSize) {
				t.Fatalf("validatePageSize(%d): %v", n, err)
			}
			return
		}
		if got < 1 || got > maxPageSize {
			t.Fatalf("validatePageSize(%d) = %d", n, got)
		}
	})
}

func FuzzValidateWatchPoolStatsRequest(f *testing.F) {
	f.Add("pools/a", int64(1), int32(0))
	f.Add("", int64(0), int32(100_000_000))
	f.Add("x", int64(-1), int32(-5))
	f.Fuzz(func(t *testing.T, name string, secs int64, nanos int32) {
		req := &poolv1.WatchPoolStatsRequest{Interval: &durationpb.Duration{Seconds: secs, Nanos: nanos}}
		if name != "" {
			req.Names = []string{name}
		}
		ids, iv, err := validateWatchPoolStatsRequest(req)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("validate: %v", err)
			}
			return
		}
		if iv < minStatsInterval || iv > maxStatsInterval || len(ids) != len(req.Names) {
			t.Fatalf("validate = %v, %v", ids, iv)
		}
	})
}

// FuzzConvertPool feeds arbitrary wire bytes through the request
// conversions: nothing panics, conversion failures are field violations,
// and what goes back on the wire never carries the client key.
func FuzzConvertPool(f *testing.F) {
	seed, _ := proto.Marshal(configToProto(fullConfig()))
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p poolv1.Pool
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		cfg, vs := configFromProto(&p)
		for _, v := range vs {
			if v.Field == "" || v.Reason == "" {
				t.Fatalf("empty violation %+v", v)
			}
		}
		if _, _, err := validateCreatePoolRequest(&poolv1.CreatePoolRequest{PoolId: "x", Pool: &p}); err != nil && status.Code(toStatus(err)) != codes.InvalidArgument {
			t.Fatalf("validateCreatePoolRequest: %v", err)
		}
		p.Name = "pools/x"
		if _, _, _, _, err := validateUpdatePoolRequest(&poolv1.UpdatePoolRequest{Pool: &p}); err != nil && status.Code(toStatus(err)) != codes.InvalidArgument {
			t.Fatalf("validateUpdatePoolRequest: %v", err)
		}
		if _, err := validateApplyPoolsRequest(&poolv1.ApplyPoolsRequest{Pools: []*poolv1.Pool{&p}}); err != nil && status.Code(toStatus(err)) != codes.InvalidArgument {
			t.Fatalf("validateApplyPoolsRequest: %v", err)
		}
		out := poolToProto(poolmgr.PoolInfo{ID: "x", Config: cfg, Revision: 1})
		if out.GetTls().GetClientKeyPem() != "" {
			t.Fatal("client key returned")
		}
		if cfg.TLS.ClientKeyPEM != "" && out.GetTls().GetClientKeyFingerprint() == "" {
			t.Fatal("no fingerprint for a key")
		}
	})
}

func FuzzValidateClientName(f *testing.F) {
	for _, s := range []string{"", "worker-1", "\x1b[2J", "a\nb", "\u202e", "日本", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if validateClientName(name) != nil {
			return
		}
		if len(name) > maxClientName || !utf8.ValidString(name) {
			t.Fatalf("validateClientName(%q) accepted a long or invalid name", name)
		}
		for _, r := range name {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || (unicode.IsSpace(r) && r != ' ') {
				t.Fatalf("validateClientName(%q) accepted %U", name, r)
			}
		}
	})
}
