package server

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// copyLeaf copies one writable leaf from src to dst, as a mask of it does.
func copyLeaf(dst, src *poolmgr.Config, leaf string) {
	*dst = mergeConfig(*dst, *src, updateMask{leaves: map[string]bool{leaf: true}})
}

// poolWithLeaf returns a Pool with only the leaf at path set, to a value
// that differs from its default and is a valid member of its type (an
// enum's last value, one second, "x"...).
func poolWithLeaf(t *testing.T, path string) *poolv1.Pool {
	t.Helper()
	p := &poolv1.Pool{}
	m := p.ProtoReflect()
	segs := strings.Split(path, ".")
	for _, seg := range segs[:len(segs)-1] {
		m = m.Mutable(m.Descriptor().Fields().ByName(protoreflect.Name(seg))).Message()
	}
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(segs[len(segs)-1]))
	switch {
	case fd.IsList() && fd.Kind() == protoreflect.StringKind:
		m.Mutable(fd).List().Append(protoreflect.ValueOfString("x:1"))
	case fd.IsMap() && fd.MapKey().Kind() == protoreflect.StringKind && fd.MapValue().Kind() == protoreflect.StringKind:
		m.Mutable(fd).Map().Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfString("v"))
	case fd.IsList() && fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "poolplane.v1.Listener":
		// Every field of a listener set, so each must be converted.
		m.Mutable(fd).List().Append(protoreflect.ValueOfMessage((&poolv1.Listener{Address: "unix:///run/x.sock", Mode: 0o600, Group: "g", Tls: true}).ProtoReflect()))
	case fd.IsList() || fd.IsMap():
		t.Fatalf("%s: poolWithLeaf knows no value for this list or map: teach it one", path)
	case fd.Kind() == protoreflect.BoolKind:
		m.Set(fd, protoreflect.ValueOfBool(true))
	case fd.Kind() == protoreflect.StringKind:
		m.Set(fd, protoreflect.ValueOfString("x"))
	case fd.Kind() == protoreflect.Int32Kind:
		m.Set(fd, protoreflect.ValueOfInt32(1))
	case fd.Kind() == protoreflect.EnumKind:
		vals := fd.Enum().Values()
		m.Set(fd, protoreflect.ValueOfEnum(vals.Get(vals.Len()-1).Number()))
	case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Duration":
		m.Set(fd, protoreflect.ValueOfMessage(durationpb.New(time.Second).ProtoReflect()))
	default:
		t.Fatalf("%s: poolWithLeaf knows no value for a %v field: teach it one", path, fd.Kind())
	}
	return p
}

// TestEveryPoolFieldIsWired adds up what a new Pool field needs, and
// names what is missing: the field in the proto; its Config field (tagged
// with the same path, which makes DiffFields and FieldPaths see it); both
// conversions, configFromProto and configToProto; and, in poolmgr, its
// place in the record (TestEveryConfigFieldIsStored). Update masks are
// read from the descriptor and applied by protoreflect, so every writable
// leaf is maskable with no edit; this checks it too. Validation is the
// field's own (Config.Validate).
func TestEveryPoolFieldIsWired(t *testing.T) {
	config := poolmgr.FieldPaths()
	for _, leaf := range writableLeaves {
		if !slices.Contains(config, leaf) {
			t.Errorf("%s: writable in the Pool message but no poolmgr.Config field is tagged `field:...` with this path", leaf)
		}
	}
	for _, path := range config {
		if !slices.Contains(writableLeaves, path) {
			t.Errorf("%s: a poolmgr.Config field with no writable Pool field (or listed in outputOnlyPaths)", path)
		}
	}
	for _, leaf := range writableLeaves {
		p := poolWithLeaf(t, leaf)
		cfg, vs := configFromProto(p)
		if len(vs) != 0 {
			t.Errorf("%s: configFromProto refuses a valid value: %v", leaf, vs)
			continue
		}
		if d := (poolmgr.Config{}).DiffFields(cfg); !slices.Equal(d, []string{leaf}) {
			t.Errorf("%s: configFromProto sets %v, want just the field (missing or misplaced in configFromProto?)", leaf, d)
			continue
		}
		back := configToProto(cfg)
		switch leaf {
		case keyPath:
			// Write-only: never returned, its fingerprint is.
			if back.GetTls().GetClientKeyPem() != "" || back.GetTls().GetClientKeyFingerprint() == "" {
				t.Errorf("%s: configToProto returns the key or no fingerprint", leaf)
			}
		case passwordPath:
			// Write-only: never returned, password_set is.
			if back.GetRedis().GetPassword() != "" || !back.GetRedis().GetPasswordSet() {
				t.Errorf("%s: configToProto returns the password or no password_set", leaf)
			}
		case pgPasswordPath:
			// Write-only: never returned, password_set is.
			if back.GetPostgres().GetPassword() != "" || !back.GetPostgres().GetPasswordSet() {
				t.Errorf("%s: configToProto returns the password or no password_set", leaf)
			}
		default:
			got := &poolv1.Pool{}
			copyPath(got.ProtoReflect(), back.ProtoReflect(), leaf)
			if !proto.Equal(got, p) {
				t.Errorf("%s: configToProto gives %v, want %v (missing in configToProto?)", leaf, got, p)
			}
		}
		m, err := validateUpdateMask([]string{leaf})
		if err != nil {
			t.Errorf("%s: not maskable: %v", leaf, err)
			continue
		}
		if d := (poolmgr.Config{}).DiffFields(mergeConfig(poolmgr.Config{}, cfg, m)); !slices.Equal(d, []string{leaf}) {
			t.Errorf("%s: a mask of the field changes %v", leaf, d)
		}
	}
}
