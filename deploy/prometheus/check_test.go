package prometheus

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	catalogPath   = "testdata/metrics.json"
	alertsPath    = "alerts.yml"
	alertTests    = "alerts_test.yml"
	dashboardPath = "../grafana/poolplane.json"
)

func loadCatalog(t *testing.T) Catalog {
	t.Helper()
	c, err := LoadCatalog(catalogPath)
	if err != nil {
		t.Fatalf("%v (cmd/poold's TestMetricsCatalog writes it)", err)
	}
	return c
}

// Every rule parses as promtool reads it, names only what poold exports,
// and its templates read only labels its expression yields.
func TestAlertRulesNameWhatPooldExports(t *testing.T) {
	c := loadCatalog(t)
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile(alertsPath, false, model.UTF8Validation, p, promslog.NewNopLogger())
	if len(errs) > 0 {
		t.Fatalf("rulefmt: %v", errors.Join(errs...))
	}
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			for _, err := range c.CheckExpr(p, r.Expr) {
				t.Errorf("alert %s: %v", r.Alert, err)
			}
			ast, err := p.ParseExpr(r.Expr)
			if err != nil {
				continue // reported above
			}
			out := c.OutputLabels(ast)
			for _, tmpl := range append(mapValues(r.Annotations), mapValues(r.Labels)...) {
				for _, l := range TemplateLabels(tmpl) {
					if !out[l] {
						t.Errorf("alert %s: a template reads $labels.%s, which its expression does not yield", r.Alert, l)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no rules")
	}
}

// Every query of the dashboard names only what poold exports.
func TestDashboardNamesWhatPooldExports(t *testing.T) {
	c := loadCatalog(t)
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := DashboardQueries(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 10 {
		t.Fatalf("%d queries in the dashboard, want at least 10", len(qs))
	}
	p := parser.NewParser(parser.Options{})
	for _, q := range qs {
		for _, err := range c.CheckExpr(p, q) {
			t.Errorf("dashboard: %v", err)
		}
	}
}

// The check itself: what it must catch.
func TestCheckExprCatches(t *testing.T) {
	c := Catalog{
		"poolplane_connection_closes_total":             {"pool": {}, "reason": {"dirty", "max_lease_duration"}},
		"poolplane_connection_max":                      {"pool": {}},
		"poolplane_connection_wait_time_seconds_bucket": {"pool": {}, "le": {}},
	}
	p := parser.NewParser(parser.Options{})
	tests := []struct {
		expr, want string // want "" for no error
	}{
		{`poolplane_connection_max`, ""},
		{`rate(poolplane_connection_closes_total{reason="max_lease_duration", pool=~"$pool", instance="a"}[$__rate_interval])`, ""},
		{`histogram_quantile(0.99, sum by (pool, le) (rate(poolplane_connection_wait_time_seconds_bucket[5m])))`, ""},
		{`label_values(poolplane_connection_max, pool)`, ""},
		{`sum by (pool, job) (poolplane_connection_max)`, ""},
		{`poolplane_connection_created_total`, "no metric poolplane_connection_created_total"},
		{`poolplane_connection_max{endpoint="x"}`, `no label "endpoint"`},
		{`poolplane_connection_closes_total{reason="lease_timeout"}`, `is never "lease_timeout"`},
		{`poolplane_connection_closes_total{reason=~"lease.*"}`, "matches none"},
		{`sum by (reason) (poolplane_connection_max)`, `grouping on "reason"`},
		{`poolplane_connection_max / on (reason) poolplane_connection_max`, `vector matching on "reason"`},
		{`poolplane_connection_closes_total / ignoring (reason) poolplane_connection_max`, ""},
		{`poolplane_connection_closes_total / ignoring (state) poolplane_connection_max`, `vector matching on "state"`},
		{`label_values(poolplane_connection_max, endpoint)`, `grouping on "endpoint"`},
		{`rate(poolplane_connection_max[5m`, "parse"},
	}
	for _, tt := range tests {
		errs := c.CheckExpr(p, tt.expr)
		got := errors.Join(errs...)
		switch {
		case tt.want == "" && got != nil:
			t.Errorf("%s: %v, want no error", tt.expr, got)
		case tt.want != "" && (got == nil || !strings.Contains(got.Error(), tt.want)):
			t.Errorf("%s: %v, want an error with %q", tt.expr, got, tt.want)
		}
	}
}

// promtool check rules and promtool test rules, with the promtool this
// module pins (go tool promtool).
func TestPromtool(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: promtool not built")
	}
	bin := filepath.Join(t.TempDir(), "promtool")
	// remove_all_sd leaves Prometheus's service discovery (the AWS, Azure,
	// GCP and Kubernetes clients) out of the build: checking and testing
	// rules needs none of it, and it is most of promtool's compile time.
	build := exec.Command("go", "build", "-tags", "remove_all_sd", "-o", bin, "github.com/prometheus/prometheus/cmd/promtool")
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("the pinned promtool does not build here, so promtool check rules and test rules were not run "+
			"(the rulefmt and PromQL checks of this package still ran): %v\n%s", err, out)
	}
	for _, args := range [][]string{{"check", "rules", alertsPath}, {"test", "rules", alertTests}} {
		cmd := exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
	}
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// The dashboard imports as it is: a uid, panels with unique ids and a
// place on the grid, every query on the data source variable.
func TestDashboardShape(t *testing.T) {
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos *struct {
				H, W, X, Y int
			} `json:"gridPos"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				RefID      string `json:"refId"`
				Expr       string `json:"expr"`
				Datasource *struct {
					UID string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Fatalf("uid %q, title %q", d.UID, d.Title)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d (%q): no title or no place on the grid: %+v", p.ID, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 || p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: no targets, or not on the ${datasource} variable", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: target %q without expr, refId or the ${datasource} variable", p.Title, tg.RefID)
			}
		}
	}
}
