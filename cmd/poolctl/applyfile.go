package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// maxApplyFileSize bounds what apply reads from one file or stdin.
const maxApplyFileSize = 16 << 20

// maxApplyValues bounds the number of values one apply file expands to,
// aliases included, so that a few nested YAML aliases ("billion laughs")
// cannot exhaust memory.
const maxApplyValues = 1 << 20

const poolsPrefix = "pools/"

// parseApplyFile parses an apply file: YAML or JSON (JSON is YAML), one or
// more documents. Each document is one of
//
//	pools: [<pool>, ...]   the usual form
//	[<pool>, ...]          a bare list
//	<pool>                 a single pool
//
// where <pool> is a poolv1.Pool in protojson form (field names in
// lowerCamelCase or snake_case), named with "name: pools/<id>" or
// "id: <id>". Enum values may be written in full (HEALTH_CHECK_KIND_HTTP)
// or without their type prefix, in any case (http). Durations are
// protojson's "30s" or Go's "1m30s". Unknown fields are
// errors. Output-only fields (state, etag, ...) are accepted, so the
// output of "poolctl get -o yaml" applies as is; the server ignores them.
// An empty file is an error; "pools: []" is an explicit empty set.
// Errors carry the 1-based line of the offending value.
func parseApplyFile(data []byte) ([]*poolv1.Pool, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		pools []*poolv1.Pool
		found bool // a document held a pool list or a pool
		c     = &converter{}
	)
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse: %w", err)
		}
		root := &doc
		if root.Kind == yaml.DocumentNode {
			if len(root.Content) == 0 {
				continue
			}
			root = root.Content[0]
		}
		items, ok, err := c.poolItems(root)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		found = true
		for _, item := range items {
			p, err := c.pool(len(pools), item)
			if err != nil {
				return nil, err
			}
			pools = append(pools, p)
		}
	}
	if !found {
		return nil, errors.New("no pools in file: expected a top-level \"pools:\" list")
	}
	seen := make(map[string]int, len(pools))
	for i, p := range pools {
		if j, dup := seen[p.GetName()]; dup {
			return nil, fmt.Errorf("pools[%d]: %s is also pools[%d]", i, p.GetName(), j)
		}
		seen[p.GetName()] = i
	}
	return pools, nil
}

// converter turns YAML nodes into values encoding/json can marshal,
// counting the values it produces.
type converter struct {
	values int
}

// poolItems returns the pool nodes of one document root; ok is false for an
// empty (null) document.
func (c *converter) poolItems(root *yaml.Node) (items []*yaml.Node, ok bool, err error) {
	root = deref(root)
	switch root.Kind {
	case yaml.ScalarNode:
		if root.Tag == "!!null" {
			return nil, false, nil
		}
		return nil, false, lineErr(root, "expected a mapping with a \"pools:\" list, got %s", describe(root))
	case yaml.SequenceNode:
		return root.Content, true, nil
	case yaml.MappingNode:
		var list *yaml.Node
		for i := 0; i+1 < len(root.Content); i += 2 {
			if k := root.Content[i]; k.Value == "pools" {
				list = root.Content[i+1]
			}
		}
		if list == nil {
			return []*yaml.Node{root}, true, nil // a single pool
		}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k := root.Content[i]
			// What list -o yaml and get -o yaml with several pools print
			// (a ListPoolsResponse) applies as it is.
			if k.Value == "next_page_token" || k.Value == "nextPageToken" {
				continue
			}
			if k.Value != "pools" {
				return nil, false, lineErr(k, "unknown top-level key %q next to \"pools\"", k.Value)
			}
		}
		list = deref(list)
		switch {
		case list.Kind == yaml.SequenceNode:
			return list.Content, true, nil
		case list.Kind == yaml.ScalarNode && list.Tag == "!!null":
			return nil, true, nil
		}
		return nil, false, lineErr(list, "\"pools\" must be a list, got %s", describe(list))
	}
	return nil, false, lineErr(root, "unexpected %s", describe(root))
}

// pool converts the i'th pool of the file.
func (c *converter) pool(i int, n *yaml.Node) (*poolv1.Pool, error) {
	n = deref(n)
	where := fmt.Sprintf("pools[%d]", i)
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: %w", where, lineErr(n, "expected a mapping, got %s", describe(n)))
	}
	pairs, err := c.pairs(n, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	// id: <id> becomes name: pools/<id>.
	var nameNode, idNode *yaml.Node
	rest := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: n.Line, Column: n.Column}
	for _, kv := range pairs {
		switch k, v := kv[0], kv[1]; k.Value {
		case "name":
			nameNode = deref(v)
		case "id":
			idNode = deref(v)
		default:
			rest.Content = append(rest.Content, k, v)
		}
	}
	name, err := poolNameOf(nameNode, idNode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	where += " (" + name + ")"
	obj, err := c.message(rest, (&poolv1.Pool{}).ProtoReflect().Descriptor(), 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	m := obj.(map[string]any)
	m["name"] = name
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	p := &poolv1.Pool{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, p); err != nil {
		return nil, fmt.Errorf("%s: line %d: %s", where, n.Line, protojsonReason(err))
	}
	return p, nil
}

// poolNameOf returns "pools/<id>" from the pool's name or id field.
func poolNameOf(name, id *yaml.Node) (string, error) {
	str := func(n *yaml.Node, field string) (string, error) {
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Value == "" {
			return "", lineErr(n, "%s must be a non-empty string, got %s", field, describe(n))
		}
		return n.Value, nil
	}
	var fromName, fromID string
	if name != nil {
		v, err := str(name, "name")
		if err != nil {
			return "", err
		}
		fromName = v
		if !strings.HasPrefix(v, poolsPrefix) {
			fromName = poolsPrefix + v
		}
		if strings.TrimPrefix(fromName, poolsPrefix) == "" {
			return "", lineErr(name, "name %q has no pool ID", v)
		}
	}
	if id != nil {
		v, err := str(id, "id")
		if err != nil {
			return "", err
		}
		if strings.Contains(v, "/") {
			return "", lineErr(id, "id %q must be a bare pool ID, without \"pools/\"", v)
		}
		fromID = poolsPrefix + v
	}
	switch {
	case fromName != "" && fromID != "" && fromName != fromID:
		return "", lineErr(id, "id %q disagrees with name %q", id.Value, name.Value)
	case fromName != "":
		return fromName, nil
	case fromID != "":
		return fromID, nil
	}
	return "", errors.New("missing name (name: pools/<id>) or id (id: <id>)")
}

// message converts mapping n to a JSON object for message md, checking
// field names and normalising enum values. Well-known types (Duration,
// Timestamp) are converted as plain values for protojson to parse.
func (c *converter) message(n *yaml.Node, md protoreflect.MessageDescriptor, depth int) (any, error) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, lineErr(n, "%s: expected a mapping, got %s", md.Name(), describe(n))
	}
	pairs, err := c.pairs(n, depth)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(pairs))
	for _, kv := range pairs {
		k, v := kv[0], kv[1]
		fd := md.Fields().ByJSONName(k.Value)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			return nil, lineErr(k, "unknown field %q in %s", k.Value, md.Name())
		}
		val, err := c.field(v, fd, depth+1)
		if err != nil {
			return nil, err
		}
		out[k.Value] = val
	}
	return out, nil
}

// listenerName is the message a listener written as a plain address
// ("127.0.0.1:6390", "unix:///run/poolplane/cache.sock") stands for.
var listenerName = (&poolv1.Listener{}).ProtoReflect().Descriptor().FullName()

// field converts the value of field fd.
func (c *converter) field(v *yaml.Node, fd protoreflect.FieldDescriptor, depth int) (any, error) {
	v = deref(v)
	one := func(n *yaml.Node) (any, error) {
		switch {
		case fd.Enum() != nil:
			return c.enum(n, fd.Enum(), depth)
		case fd.Message() != nil && fd.Message().FullName() == durationName:
			return c.duration(n, depth)
		case fd.Message() != nil && fd.Message().FullName() == listenerName && n.Kind == yaml.ScalarNode && n.Tag == "!!str":
			// A listener written as its address alone.
			return map[string]any{"address": n.Value}, nil
		case fd.Message() != nil && !isWellKnown(fd.Message()):
			return c.message(n, fd.Message(), depth)
		}
		return c.value(n, depth)
	}
	switch {
	case fd.IsList():
		if v.Kind != yaml.SequenceNode {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				return nil, nil
			}
			return nil, lineErr(v, "%s: expected a list, got %s", fd.Name(), describe(v))
		}
		out := make([]any, 0, len(v.Content))
		for _, e := range v.Content {
			if err := c.count(e); err != nil {
				return nil, err
			}
			x, err := one(deref(e))
			if err != nil {
				return nil, err
			}
			out = append(out, x)
		}
		return out, nil
	case fd.IsMap():
		if fd.MapValue().Kind() == protoreflect.StringKind && v.Kind == yaml.MappingNode {
			return c.stringMap(v, depth)
		}
		return c.value(v, depth)
	}
	return one(v)
}

// stringMap converts a mapping to a map<string, string> field (labels,
// postgres.params): a scalar value is taken as the text written, so that
// "statement_timeout: 5000" or "jit: true" gives the string a server
// expects; anything else converts generically (and protojson rejects it).
func (c *converter) stringMap(n *yaml.Node, depth int) (any, error) {
	pairs, err := c.pairs(n, depth)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(pairs))
	for _, kv := range pairs {
		v := deref(kv[1])
		if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
			if err := c.count(v); err != nil {
				return nil, err
			}
			out[kv[0].Value] = v.Value
			continue
		}
		x, err := c.value(v, depth+1)
		if err != nil {
			return nil, err
		}
		out[kv[0].Value] = x
	}
	return out, nil
}

// durationName is the full name of google.protobuf.Duration.
const durationName = "google.protobuf.Duration"

// duration converts a Go duration string ("1m30s", "250ms") to the
// protojson form ("90s", "0.250s"); other values pass through for protojson
// to accept or reject.
func (c *converter) duration(n *yaml.Node, depth int) (any, error) {
	v, err := c.value(n, depth)
	if err != nil {
		return nil, err
	}
	s, ok := v.(string)
	if !ok {
		return v, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return v, nil
	}
	js, err := protojson.Marshal(durationpb.New(d))
	if err != nil {
		return v, nil
	}
	var out string
	if err := json.Unmarshal(js, &out); err != nil {
		return v, nil
	}
	return out, nil
}

// enum normalises an enum value: a full value name passes through; a name
// without its type prefix, in any case, gets the prefix ("redis_ping" ->
// "HEALTH_CHECK_KIND_REDIS_PING"). Numbers pass through.
func (c *converter) enum(n *yaml.Node, ed protoreflect.EnumDescriptor, depth int) (any, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return c.value(n, depth)
	}
	if err := c.count(n); err != nil {
		return nil, err
	}
	vals := ed.Values()
	if vals.ByName(protoreflect.Name(n.Value)) != nil {
		return n.Value, nil
	}
	up := strings.ToUpper(strings.ReplaceAll(n.Value, "-", "_"))
	if vals.ByName(protoreflect.Name(up)) != nil {
		return up, nil
	}
	if vals.Len() > 0 {
		if prefix, ok := strings.CutSuffix(string(vals.Get(0).Name()), "UNSPECIFIED"); ok {
			if vals.ByName(protoreflect.Name(prefix+up)) != nil {
				return prefix + up, nil
			}
		}
	}
	names := make([]string, 0, vals.Len())
	for i := range vals.Len() {
		names = append(names, string(vals.Get(i).Name()))
	}
	return nil, lineErr(n, "invalid %s %q; want one of %s", ed.Name(), n.Value, strings.Join(names, ", "))
}

// value converts any YAML value generically.
func (c *converter) value(n *yaml.Node, depth int) (any, error) {
	if depth > 100 {
		return nil, lineErr(n, "nested too deeply")
	}
	if err := c.count(n); err != nil {
		return nil, err
	}
	n = deref(n)
	switch n.Kind {
	case yaml.ScalarNode:
		return scalar(n)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			x, err := c.value(e, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, x)
		}
		return out, nil
	case yaml.MappingNode:
		pairs, err := c.pairs(n, depth)
		if err != nil {
			return nil, err
		}
		out := make(map[string]any, len(pairs))
		for _, kv := range pairs {
			x, err := c.value(kv[1], depth+1)
			if err != nil {
				return nil, err
			}
			out[kv[0].Value] = x
		}
		return out, nil
	}
	return nil, lineErr(n, "unexpected %s", describe(n))
}

// pairs returns the key/value pairs of mapping n with merge keys ("<<")
// resolved: explicit keys win over merged ones, earlier merges over later
// ones. Keys must be scalars and unique.
func (c *converter) pairs(n *yaml.Node, depth int) ([][2]*yaml.Node, error) {
	if depth > 100 {
		return nil, lineErr(n, "nested too deeply")
	}
	var (
		out    [][2]*yaml.Node
		merged [][2]*yaml.Node
		seen   = map[string]bool{}
	)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if err := c.count(k); err != nil {
			return nil, err
		}
		if k.Kind != yaml.ScalarNode {
			return nil, lineErr(k, "mapping keys must be strings, got %s", describe(k))
		}
		if k.Tag == "!!merge" {
			v = deref(v)
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				s = deref(s)
				if s.Kind != yaml.MappingNode {
					return nil, lineErr(s, "merge (<<) needs a mapping, got %s", describe(s))
				}
				ps, err := c.pairs(s, depth+1)
				if err != nil {
					return nil, err
				}
				merged = append(merged, ps...)
			}
			continue
		}
		if seen[k.Value] {
			return nil, lineErr(k, "duplicate key %q", k.Value)
		}
		seen[k.Value] = true
		out = append(out, [2]*yaml.Node{k, v})
	}
	for _, kv := range merged {
		if !seen[kv[0].Value] {
			seen[kv[0].Value] = true
			out = append(out, kv)
		}
	}
	return out, nil
}

// count charges one value against maxApplyValues.
func (c *converter) count(n *yaml.Node) error {
	c.values++
	if c.values > maxApplyValues {
		return lineErr(n, "file expands to more than %d values", maxApplyValues)
	}
	return nil
}

// scalar converts a YAML scalar to a JSON value.
func scalar(n *yaml.Node) (any, error) {
	switch n.Tag {
	case "!!str", "!!timestamp", "!!binary":
		return n.Value, nil // timestamps stay RFC 3339 text for protojson
	case "!!null":
		return nil, nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, lineErr(n, "%v", err)
	}
	if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
		return nil, lineErr(n, "%s is not a valid number here", n.Value)
	}
	return v, nil
}

// deref follows aliases.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// isWellKnown reports whether md is a google.protobuf type with a special
// JSON form (Duration, Timestamp, ...).
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return strings.HasPrefix(string(md.FullName()), "google.protobuf.")
}

// describe names a node's kind for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return strconv.Quote(n.Value)
	}
	return "an unexpected node"
}

// lineErr is an error about node n.
func lineErr(n *yaml.Node, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if n != nil && n.Line > 0 {
		return fmt.Errorf("line %d: %s", n.Line, msg)
	}
	return errors.New(msg)
}

// protojsonReason strips protojson's "proto: (line 1:23): " position,
// which refers to the JSON the file was converted to, not to the file.
func protojsonReason(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "proto:")
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "(line ") {
		if _, after, ok := strings.Cut(s, "): "); ok {
			s = after
		}
	}
	return s
}
