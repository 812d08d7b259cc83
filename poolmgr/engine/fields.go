package engine

import (
	"reflect"
	"sync"
)

// The fields of a Config are named once, by the `field:"..."` tag of each
// struct field: its API path segment ("limits" + "max_connections" makes
// "limits.max_connections"). A struct-typed field of this package is a
// group of leaves; every other field is a leaf. DiffFields and FieldPaths
// walk the tags, so a new field needs its tag and no other list here.

// fieldLeaf is one leaf of a Config: its API path and where it lives.
type fieldLeaf struct {
	path  string
	index []int // reflect field index path from Config
}

var configLeaves = sync.OnceValue(func() []fieldLeaf {
	var out []fieldLeaf
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, ok := f.Tag.Lookup("field")
			if !ok || name == "" {
				panic("poolmgr: internal error: Config field " + prefix + f.Name + " has no field tag")
			}
			idx := append(append([]int(nil), index...), i)
			if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath() {
				walk(f.Type, prefix+name+".", idx)
				continue
			}
			out = append(out, fieldLeaf{path: prefix + name, index: idx})
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
})

// FieldPaths returns the API path of every leaf of a Config, in
// declaration order ("endpoints", "tls.enabled", ...).
func FieldPaths() []string {
	leaves := configLeaves()
	out := make([]string, len(leaves))
	for i, l := range leaves {
		out[i] = l.path
	}
	return out
}

// DiffFields returns the API paths of the fields that differ between c and
// o, in declaration order. An empty list or map equals a nil one. Private
// key material is compared but reported as "tls.client_key_pem".
func (c Config) DiffFields(o Config) []string {
	cv, ov := reflect.ValueOf(c), reflect.ValueOf(o)
	var d []string
	for _, l := range configLeaves() {
		if !leafEqual(cv.FieldByIndex(l.index), ov.FieldByIndex(l.index)) {
			d = append(d, l.path)
		}
	}
	return d
}

// leafEqual compares two values of one leaf.
func leafEqual(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice, reflect.Map:
		if a.Len() == 0 && b.Len() == 0 {
			return true
		}
		return reflect.DeepEqual(a.Interface(), b.Interface())
	}
	return a.Equal(b)
}
