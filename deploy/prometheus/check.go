// Package prometheus holds poold's Prometheus alert rules (alerts.yml, with
// promtool unit tests in alerts_test.yml) and the check that they, and the
// Grafana dashboard in ../grafana, name only metrics and labels poold
// exports.
//
// What poold exports is testdata/metrics.json, a catalog that poold's own
// test (TestMetricsCatalog in cmd/poold) keeps equal to a scrape of a
// running poold. The check lives in this module of its own so that
// Prometheus's parser and promtool, and their dependencies, stay out of
// poold's module.
package prometheus

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Catalog maps each series name poold exports (a histogram as its _bucket,
// _sum and _count) to its label names, each with the values poold fixes
// for it, or none when the values come from the configuration (pool,
// endpoint).
type Catalog map[string]map[string][]string

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// LoadCatalog reads a catalog written by cmd/poold's TestMetricsCatalog.
func LoadCatalog(path string) (Catalog, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Catalog
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// grafanaIntervals are Grafana's interval variables, which PromQL cannot
// parse in a range; any duration stands for them.
var grafanaIntervals = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?`)

// labelValues is Grafana's label_values(SELECTOR, LABEL) variable query.
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// CheckExpr parses expr as PromQL and returns what it names that poold does
// not export: a metric, a label in a matcher, a grouping or a vector match,
// or a value of a label whose values poold fixes. Grafana's interval
// variables stand for 5m; other variables may only appear inside label
// values. A Grafana label_values(SELECTOR, LABEL) query is checked as the
// selector grouped by the label.
func (c Catalog) CheckExpr(p parser.Parser, expr string) []error {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		expr = "count by (" + m[2] + ") (" + m[1] + ")"
	}
	expr = grafanaIntervals.ReplaceAllString(expr, "5m")
	ast, err := p.ParseExpr(expr)
	if err != nil {
		return []error{fmt.Errorf("parse %q: %w", expr, err)}
	}
	var errs []error
	parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			errs = append(errs, c.checkSelector(n)...)
		case *parser.AggregateExpr:
			errs = append(errs, c.checkLabels(n.Expr, n.Grouping, "grouping")...)
		case *parser.BinaryExpr:
			if vm := n.VectorMatching; vm != nil && len(vm.MatchingLabels)+len(vm.Include) > 0 {
				if vm.On {
					// on (...) matches on labels both sides have.
					errs = append(errs, c.checkLabels(n.LHS, vm.MatchingLabels, "vector matching")...)
					errs = append(errs, c.checkLabels(n.RHS, vm.MatchingLabels, "vector matching")...)
				} else {
					// ignoring (...) drops labels one side has.
					errs = append(errs, c.checkLabels(n, vm.MatchingLabels, "vector matching")...)
				}
				errs = append(errs, c.checkLabels(n, vm.Include, "group_left/group_right")...)
			}
		}
		return nil
	})
	return errs
}

// checkSelector checks a selector's metric name and matchers.
func (c Catalog) checkSelector(vs *parser.VectorSelector) []error {
	name := vs.Name
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			name = m.Value
		}
	}
	if name == "" {
		return []error{fmt.Errorf("%s: a selector without a metric name cannot be checked", vs)}
	}
	lbls, ok := c[name]
	if !ok {
		return []error{fmt.Errorf("%s: poold exports no metric %s", vs, name)}
	}
	var errs []error
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel || slices.Contains(targetLabels, m.Name) {
			continue
		}
		values, ok := lbls[m.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s has no label %q", vs, name, m.Name))
			continue
		}
		if len(values) == 0 || strings.Contains(m.Value, "$") {
			continue // values from the configuration, or a Grafana variable
		}
		switch m.Type {
		case labels.MatchEqual:
			if !slices.Contains(values, m.Value) {
				errs = append(errs, fmt.Errorf("%s: %s{%s} is never %q (it is one of %v)", vs, name, m.Name, m.Value, values))
			}
		case labels.MatchRegexp:
			if !slices.ContainsFunc(values, m.Matches) {
				errs = append(errs, fmt.Errorf("%s: %s{%s=~%q} matches none of %v", vs, name, m.Name, m.Value, values))
			}
		}
	}
	return errs
}

// checkLabels checks that every label of names is a label of some series
// expr selects (or a target label).
func (c Catalog) checkLabels(expr parser.Expr, names []string, what string) []error {
	have := c.Labels(expr)
	var errs []error
	for _, l := range names {
		if !have[l] {
			errs = append(errs, fmt.Errorf("%s: %s on %q, which no series of %s has", expr, what, l, strings.Join(selectorNames(expr), ", ")))
		}
	}
	return errs
}

// Labels returns the label names of the series the selectors of expr
// name, and the target labels.
func (c Catalog) Labels(expr parser.Expr) map[string]bool {
	have := map[string]bool{}
	for _, l := range targetLabels {
		have[l] = true
	}
	for _, name := range selectorNames(expr) {
		for l := range c[name] {
			have[l] = true
		}
	}
	return have
}

// selectorNames returns the metric names of expr's selectors.
func selectorNames(expr parser.Expr) []string {
	var names []string
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// DashboardQueries returns every PromQL query of a Grafana dashboard: the
// expr of each target, in panels and rows at any depth, and the query of
// each query variable.
func DashboardQueries(dashboard []byte) ([]string, error) {
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, err
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "expr" {
					out = append(out, s)
					continue
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	for _, p := range d.Panels {
		var v any
		if err := json.Unmarshal(p, &v); err != nil {
			return nil, err
		}
		walk(v)
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q.Query); err != nil {
			if err := json.Unmarshal(v.Query, &q); err != nil {
				return nil, fmt.Errorf("templating query %s: %w", v.Query, err)
			}
		}
		out = append(out, q.Query)
	}
	return out, nil
}

// templateLabel is a label a rule's annotation or label template reads.
var templateLabel = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

// TemplateLabels returns the labels a rule template reads ($labels.x).
func TemplateLabels(tmpl string) []string {
	var out []string
	for _, m := range templateLabel.FindAllStringSubmatch(tmpl, -1) {
		out = append(out, m[1])
	}
	return out
}

// OutputLabels returns the label names the series expr evaluates to may
// carry: those of its selectors (and the target labels), narrowed by
// aggregations and vector matching. Rule templates may read only these.
func (c Catalog) OutputLabels(expr parser.Expr) map[string]bool {
	switch e := expr.(type) {
	case *parser.VectorSelector:
		return c.Labels(e)
	case *parser.MatrixSelector:
		return c.OutputLabels(e.VectorSelector)
	case *parser.ParenExpr:
		return c.OutputLabels(e.Expr)
	case *parser.SubqueryExpr:
		return c.OutputLabels(e.Expr)
	case *parser.StepInvariantExpr:
		return c.OutputLabels(e.Expr)
	case *parser.UnaryExpr:
		return c.OutputLabels(e.Expr)
	case *parser.AggregateExpr:
		out := map[string]bool{}
		if !e.Without {
			for _, l := range e.Grouping {
				out[l] = true
			}
			return out
		}
		for l := range c.OutputLabels(e.Expr) {
			if !slices.Contains(e.Grouping, l) {
				out[l] = true
			}
		}
		return out
	case *parser.BinaryExpr:
		side := e.LHS
		if e.LHS.Type() == parser.ValueTypeScalar {
			side = e.RHS
		}
		out := c.OutputLabels(side)
		vm := e.VectorMatching
		if vm == nil || vm.Card != parser.CardOneToOne || (e.Op.IsComparisonOperator() && !e.ReturnBool) {
			return out // a filter keeps its left side's series as they are
		}
		// A one-to-one arithmetic operation keeps the matching labels.
		for l := range out {
			if vm.On != slices.Contains(vm.MatchingLabels, l) {
				delete(out, l)
			}
		}
		return out
	case *parser.Call:
		out := map[string]bool{}
		for _, a := range e.Args {
			for l := range c.OutputLabels(a) {
				out[l] = true
			}
		}
		return out
	}
	return map[string]bool{}
}
