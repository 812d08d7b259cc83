package server

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// Field masks (AIP-161) for UpdatePool. The writable fields are read from
// the Pool message's descriptor, and a mask is applied by copying each
// masked leaf between Pool messages with protoreflect: a new Pool field
// needs no edit here. The one list kept by hand is outputOnlyPaths (the
// proto marks output-only fields in comments only).

// outputOnlyPaths may not be named in an update mask.
var outputOnlyPaths = []string{
	"name", "state", "generation", "revision", "etag", "create_time", "update_time",
	"tls.client_key_fingerprint", "redis.password_set", "postgres.password_set",
}

// keyPath is the write-only client key; passwordPath the write-only Redis
// password, pgPasswordPath the write-only PostgreSQL password. All are
// handled the same way.
const (
	keyPath        = "tls.client_key_pem"
	passwordPath   = "redis.password"
	pgPasswordPath = "postgres.password"
)

// poolFields are the writable fields of a Pool, read from its descriptor:
// leaves are the paths an update mask can copy; groups are the message
// fields whose leaves a path can name at once ("limits").
type poolFields struct {
	leaves []string
	groups []string
}

var writableFields = sync.OnceValue(func() poolFields {
	var f poolFields
	var walk func(md protoreflect.MessageDescriptor, prefix string)
	walk = func(md protoreflect.MessageDescriptor, prefix string) {
		fds := md.Fields()
		for i := range fds.Len() {
			fd := fds.Get(i)
			path := prefix + string(fd.Name())
			if slices.Contains(outputOnlyPaths, path) {
				continue
			}
			if isGroup(fd) {
				f.groups = append(f.groups, path)
				walk(fd.Message(), path+".")
				continue
			}
			f.leaves = append(f.leaves, path)
		}
	}
	walk((&poolv1.Pool{}).ProtoReflect().Descriptor(), "")
	return f
})

// isGroup reports whether fd is a message field of this API (not a
// well-known type such as Duration, which is a leaf).
func isGroup(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() &&
		fd.Message().ParentFile().Package() == (&poolv1.Pool{}).ProtoReflect().Descriptor().ParentFile().Package()
}

// writableLeaves are the writable Pool fields an update mask can name, as
// leaf paths in declaration order.
var writableLeaves = writableFields().leaves

// updateMask is a resolved update mask: the leaves to copy.
type updateMask struct {
	leaves map[string]bool
	// keyImplicit: the key is included only through "*", an empty mask or
	// "tls"; then an empty key with an unchanged client certificate keeps
	// the stored key (a Pool read back never carries the key): UpdatePool
	// asks the core for it with WriteOptions.KeepClientKey. Naming
	// "tls.client_key_pem" explicitly with an empty value clears the key.
	keyImplicit bool
	// passwordImplicit is keyImplicit for the Redis password: "*", an
	// empty mask or "redis"; then an empty password with the stored
	// username keeps the stored password (WriteOptions.KeepRedisPassword).
	passwordImplicit bool
	// pgPasswordImplicit is keyImplicit for the PostgreSQL password: "*",
	// an empty mask or "postgres"; then an empty password with the stored
	// user keeps the stored password (WriteOptions.KeepPostgresPassword).
	pgPasswordImplicit bool
}

// covers reports whether a violation of field (a Pool-relative path)
// concerns a masked leaf.
func (m updateMask) covers(field string) bool {
	for leaf := range m.leaves {
		if leaf == field || strings.HasPrefix(field, leaf+".") || strings.HasPrefix(field, leaf+"[") || strings.HasPrefix(leaf, field+".") {
			return true
		}
	}
	return false
}

// validateUpdateMask resolves the paths of an UpdatePool mask. Paths are
// snake_case ("limits.max_connections"); lowerCamelCase segments, as in
// FieldMask JSON, are accepted too. An empty mask or "*" names every writable
// field. Naming an output-only, immutable or unknown field fails with
// InvalidArgument listing every bad path.
func validateUpdateMask(paths []string) (updateMask, error) {
	fields := writableFields()
	m := updateMask{leaves: make(map[string]bool)}
	all := func() {
		for _, l := range fields.leaves {
			m.leaves[l] = true
		}
		m.keyImplicit = true
		m.passwordImplicit = true
		m.pgPasswordImplicit = true
	}
	if len(paths) == 0 {
		all()
		return m, nil
	}
	var vs []poolmgr.FieldViolation
	bad := func(i int, reason string) {
		vs = append(vs, poolmgr.FieldViolation{Field: fmt.Sprintf("update_mask.paths[%d]", i), Reason: reason})
	}
	explicitKey, explicitPassword, explicitPgPassword := false, false, false
	for i, raw := range paths {
		p := snakePath(raw)
		switch {
		case p == "*":
			if len(paths) != 1 {
				bad(i, `"*" must be the only path`)
				continue
			}
			all()
		case slices.Contains(outputOnlyPaths, p):
			if p == "name" {
				bad(i, `"name" is immutable`)
			} else {
				bad(i, fmt.Sprintf("%q is output only", p))
			}
		case slices.Contains(fields.leaves, p):
			m.leaves[p] = true
			switch p {
			case keyPath:
				explicitKey = true
			case passwordPath:
				explicitPassword = true
			case pgPasswordPath:
				explicitPgPassword = true
			}
		case slices.Contains(fields.groups, p):
			for _, l := range fields.leaves {
				if strings.HasPrefix(l, p+".") {
					m.leaves[l] = true
				}
			}
			switch p {
			case "tls":
				m.keyImplicit = true
			case "redis":
				m.passwordImplicit = true
			case "postgres":
				m.pgPasswordImplicit = true
			}
		default:
			bad(i, fmt.Sprintf("unknown field %q", raw))
		}
	}
	if explicitKey {
		m.keyImplicit = false
	}
	if explicitPassword {
		m.passwordImplicit = false
	}
	if explicitPgPassword {
		m.pgPasswordImplicit = false
	}
	if len(vs) > 0 {
		return updateMask{}, &poolmgr.ValidationError{Violations: vs}
	}
	return m, nil
}

// snakePath converts a lowerCamelCase path ("limits.maxConnections") to
// snake_case; a snake_case path is returned unchanged.
func snakePath(p string) string {
	if strings.IndexFunc(p, func(r rune) bool { return r >= 'A' && r <= 'Z' }) < 0 {
		return p
	}
	var b strings.Builder
	for _, r := range p {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// mergeConfig returns cur with the masked leaves taken from src. An
// implicitly masked, empty client key, Redis or PostgreSQL password is left
// empty: the core keeps the stored one under its write lock
// (WriteOptions.KeepClientKey, KeepRedisPassword, KeepPostgresPassword).
// Both are converted to Pool messages, the masked leaves copied by
// protoreflect, and the result converted back; the write-only client key
// and passwords, which no Pool message built from a Config carries, are
// carried over beside them.
func mergeConfig(cur, src poolmgr.Config, m updateMask) poolmgr.Config {
	dst := configToProto(cur)
	from := configToProto(src)
	for leaf := range m.leaves {
		copyPath(dst.ProtoReflect(), from.ProtoReflect(), leaf)
	}
	out, vs := configFromProto(dst)
	if len(vs) > 0 {
		panic(fmt.Sprintf("server: internal error: a converted config does not convert back: %v", vs))
	}
	out.TLS.ClientKeyPEM = cur.TLS.ClientKeyPEM
	if m.leaves[keyPath] {
		out.TLS.ClientKeyPEM = src.TLS.ClientKeyPEM
	}
	out.Redis.Password = cur.Redis.Password
	if m.leaves[passwordPath] {
		out.Redis.Password = src.Redis.Password
	}
	out.Postgres.Password = cur.Postgres.Password
	if m.leaves[pgPasswordPath] {
		out.Postgres.Password = src.Postgres.Password
	}
	return out
}

// copyPath sets the field at path (a leaf path such as
// "limits.max_connections") of dst to its value in src, creating dst's
// parent messages as needed; a field unset in src is cleared in dst. It
// panics for a path that names no field.
func copyPath(dst, src protoreflect.Message, path string) {
	segs := strings.Split(path, ".")
	for i, seg := range segs {
		fd := dst.Descriptor().Fields().ByName(protoreflect.Name(seg))
		if fd == nil {
			panic("server: internal error: no field " + path)
		}
		if i < len(segs)-1 {
			if !isGroup(fd) {
				panic("server: internal error: " + path + " is not a leaf path")
			}
			src = src.Get(fd).Message()
			dst = dst.Mutable(fd).Message()
			continue
		}
		if src.Has(fd) {
			dst.Set(fd, src.Get(fd))
		} else {
			dst.Clear(fd)
		}
	}
}
