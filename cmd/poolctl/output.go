package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
)

// show writes m in the -o format: json or yaml (the whole message), name
// (the resource names it holds, one a line), or a table, which calls
// table with whether -o wide asked for more columns.
func (e *env) show(m proto.Message, table func(wide bool) error) error {
	switch e.g.output {
	case "json", "yaml":
		return writeStructured(e.stdout, e.g.output, m)
	case "name":
		for _, n := range resourceNames(m) {
			if _, err := fmt.Fprintln(e.stdout, printable(n)); err != nil {
				return err
			}
		}
		return nil
	}
	if table == nil {
		return fmt.Errorf("internal error: no table for %s", m.ProtoReflect().Descriptor().FullName())
	}
	return table(e.g.output == "wide")
}

// showValue writes the result of a command without a proto response for
// -o json, yaml and name, and reports whether it did; the caller writes
// its table otherwise.
func (e *env) showValue(name string, v map[string]any) (bool, error) {
	switch e.g.output {
	case "json", "yaml":
		return true, writeValue(e.stdout, e.g.output, v)
	case "name":
		_, err := fmt.Fprintln(e.stdout, printable(name))
		return true, err
	}
	return false, nil
}

// resourceNames returns the name field of m, or else of each message in
// its repeated message fields (a list response's pools, leases, stats or
// changes).
func resourceNames(m proto.Message) []string {
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	if fd := fields.ByName("name"); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
		return []string{r.Get(fd).String()}
	}
	var out []string
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !fd.IsList() || fd.Kind() != protoreflect.MessageKind {
			continue
		}
		l := r.Get(fd).List()
		for j := range l.Len() {
			el := l.Get(j).Message()
			nf := el.Descriptor().Fields().ByName("name")
			if nf == nil {
				// A revision: its pool's name.
				if pf := el.Descriptor().Fields().ByName("pool"); pf != nil && pf.Kind() == protoreflect.MessageKind {
					out = append(out, resourceNames(el.Get(pf).Message().Interface())...)
				}
				continue
			}
			out = append(out, el.Get(nf).String())
		}
	}
	return out
}

// structuredJSON is how -o json and -o yaml encode messages: the proto
// field names (snake_case, as apply files are written) and every field,
// zero values included, so that scripts can rely on "in_use": 0 being
// there. Unset message fields are left out rather than printed as null.
var structuredJSON = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// writeStructured writes m as -o json or -o yaml, with the same field
// names in both.
func writeStructured(w io.Writer, format string, m proto.Message) error {
	b, err := structuredJSON.Marshal(m)
	if err != nil {
		return err
	}
	if b, err = dropNulls(b); err != nil {
		return err
	}
	switch format {
	case "json":
		// protojson varies its spacing on purpose; indent with
		// encoding/json for output that is stable across runs.
		var out bytes.Buffer
		if err := json.Indent(&out, b, "", "  "); err != nil {
			return err
		}
		out.WriteByte('\n')
		_, err = w.Write(out.Bytes())
		return err
	case "yaml":
		return writeYAML(w, b)
	}
	return fmt.Errorf("internal error: writeStructured(%q)", format)
}

// dropNulls removes the members whose value is null from every object of
// the JSON document js (EmitUnpopulated writes an unset message as null),
// keeping the order of the rest. The result is compact.
func dropNulls(js []byte) ([]byte, error) {
	var out bytes.Buffer
	if err := dropNullsTo(&out, js); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func dropNullsTo(out *bytes.Buffer, js []byte) error {
	js = bytes.TrimSpace(js)
	if len(js) == 0 || (js[0] != '{' && js[0] != '[') {
		return json.Compact(out, js)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	open, err := dec.Token()
	if err != nil {
		return err
	}
	obj := open == json.Delim('{')
	out.WriteByte(js[0])
	first := true
	for dec.More() {
		var key string
		if obj {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ = tok.(string)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if obj && string(bytes.TrimSpace(raw)) == "null" {
			continue
		}
		if !first {
			out.WriteByte(',')
		}
		first = false
		if obj {
			k, err := json.Marshal(key)
			if err != nil {
				return err
			}
			out.Write(k)
			out.WriteByte(':')
		}
		if err := dropNullsTo(out, raw); err != nil {
			return err
		}
	}
	if obj {
		out.WriteByte('}')
	} else {
		out.WriteByte(']')
	}
	return nil
}

// writeYAML converts JSON to block-style YAML, keeping the key order.
func writeYAML(w io.Writer, js []byte) error {
	var n yaml.Node
	if err := yaml.Unmarshal(js, &n); err != nil {
		return err
	}
	blockStyle(&n)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	return enc.Close()
}

// blockStyle clears the flow and quoting styles JSON input gives nodes.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// writeValue writes a plain Go value (for commands without a proto
// response) as json or yaml.
func writeValue(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		return writeYAML(w, b)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// table writes aligned columns.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			c = "-"
		}
		c = printable(c)
		if i > 0 {
			_, _ = io.WriteString(t.tw, "\t")
		}
		_, _ = io.WriteString(t.tw, c)
	}
	_, _ = io.WriteString(t.tw, "\n")
}

func (t *table) flush() error { return t.tw.Flush() }

// printable returns s as it may reach a terminal: every character that is
// not printable (unicode.IsPrint) is written as a Go escape ("\x1b",
// "\n", "\u202e"), and so is each byte of invalid UTF-8, so a value from
// the server (a lease's client name, a label) can neither run terminal
// escape sequences, nor break a table's columns or lines, nor reorder text
// with bidi controls. Printable text is returned as it is.
func printable(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r == utf8.RuneError || !unicode.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Column formatting.

func stateString(s poolv1.PoolState) string {
	if s == poolv1.PoolState_POOL_STATE_UNSPECIFIED {
		return ""
	}
	return strings.TrimPrefix(s.String(), "POOL_STATE_")
}

// protocolString is a pool's protocol as list and stats show it: RAW,
// REDIS, HTTP1, POSTGRES (UNSPECIFIED is RAW).
func protocolString(p poolv1.Protocol) string {
	if p == poolv1.Protocol_PROTOCOL_UNSPECIFIED {
		p = poolv1.Protocol_PROTOCOL_RAW
	}
	return strings.TrimPrefix(p.String(), "PROTOCOL_")
}

func actionString(a poolv1.PoolChange_Action) string {
	return strings.TrimPrefix(a.String(), "ACTION_")
}

func itoa[T ~int32 | ~int64 | ~uint64 | ~int](v T) string { return fmt.Sprint(v) }

func durString(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().Round(time.Millisecond).String()
}

func timeString(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().Local().Format(time.RFC3339)
}

// ageString is how long ago t was, in kubectl's style ("5m", "3h", "2d").
func ageString(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return ""
	}
	d := max(now.Sub(t.AsTime()), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// poolTable writes pools as list does; wide adds the reuse policy, the
// acquire timeout, the labels and the last update.
func poolTable(w io.Writer, pools []*poolv1.Pool, wide bool) error {
	now := time.Now()
	header := []string{"NAME", "STATE", "ENDPOINTS", "TLS", "PROTOCOL", "MAX", "MIN_IDLE", "LISTENERS", "GENERATION", "REVISION", "AGE"}
	if wide {
		header = append(header, "REUSE", "ACQUIRE_TIMEOUT", "LABELS", "UPDATED")
	}
	t := newTable(w, header...)
	for _, p := range pools {
		max := "10"
		if v := p.GetLimits().GetMaxConnections(); v != 0 {
			max = itoa(v)
		}
		row := []string{p.GetName(), stateString(p.GetState()), strings.Join(p.GetEndpoints(), ","),
			yesNo(p.GetTls().GetEnabled()), protocolString(p.GetProtocol()), max, itoa(p.GetLimits().GetMinIdle()),
			listenerAddrs(p.GetListeners()), itoa(p.GetGeneration()), itoa(p.GetRevision()), ageString(p.GetCreateTime(), now)}
		if wide {
			reuse := strings.TrimPrefix(p.GetReusePolicy().String(), "REUSE_POLICY_")
			if p.GetReusePolicy() == 0 {
				reuse = "REUSE"
			}
			row = append(row, reuse, durString(p.GetLimits().GetAcquireTimeout()), labelsString(p.GetLabels()),
				ageString(p.GetUpdateTime(), now))
		}
		t.row(row...)
	}
	return t.flush()
}

// labelsString is k=v,k=v in key order.
func labelsString(labels map[string]string) string {
	out := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, k+"="+labels[k])
	}
	return strings.Join(out, ",")
}

// listenerAddrs lists a pool's listener addresses, "-" for none.
func listenerAddrs(ls []*poolv1.Listener) string {
	if len(ls) == 0 {
		return "-"
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = printable(l.GetAddress())
	}
	return strings.Join(out, ",")
}

// flatten returns the populated fields of m as dotted snake_case paths
// and display values, in field order.
func flatten(m proto.Message) ([][2]string, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	var out [][2]string
	var walk func(prefix string, n *yaml.Node)
	walk = func(prefix string, n *yaml.Node) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(prefix, c)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if prefix != "" {
					k = prefix + "." + k
				}
				walk(k, n.Content[i+1])
			}
		case yaml.SequenceNode:
			vals := make([]string, 0, len(n.Content))
			scalars := true
			for _, c := range n.Content {
				scalars = scalars && c.Kind == yaml.ScalarNode
				vals = append(vals, c.Value)
			}
			if scalars {
				out = append(out, [2]string{prefix, strings.Join(vals, ",")})
				return
			}
			for i, c := range n.Content {
				walk(fmt.Sprintf("%s[%d]", prefix, i), c)
			}
		default:
			v := n.Value
			if strings.Contains(v, "\n") { // PEM blocks
				v = fmt.Sprintf("<%d bytes>", len(v))
			}
			out = append(out, [2]string{prefix, v})
		}
	}
	walk("", &n)
	return out, nil
}

// fieldTable writes m as FIELD VALUE rows.
func fieldTable(w io.Writer, m proto.Message) error {
	rows, err := flatten(m)
	if err != nil {
		return err
	}
	t := newTable(w, "FIELD", "VALUE")
	for _, r := range rows {
		t.row(r[0], r[1])
	}
	return t.flush()
}
