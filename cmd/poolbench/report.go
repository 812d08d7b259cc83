package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// benchReport is the result of a run, as -o json prints it.
type benchReport struct {
	Command string        `json:"command"`
	Time    string        `json:"time"`
	Env     benchEnvInfo  `json:"env"`
	Config  benchSettings `json:"config"`
	Cases   []caseSummary `json:"cases"`
	Targets []targetCheck `json:"targets"`
	Notes   []string      `json:"notes,omitempty"`
	// Errors counts the failed requests of every measured round.
	Errors int64 `json:"errors"`
}

type benchEnvInfo struct {
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	Poold     string `json:"poold"`
	HAProxy   string `json:"haproxy,omitempty"`
}

type benchSettings struct {
	Rounds    int     `json:"rounds"`
	DurationS float64 `json:"duration_s"`
	WarmupS   float64 `json:"warmup_s"`
	Clients   []int   `json:"clients"`
	Size      int     `json:"size"`
	// PooldMaxProcs is poold's --max-procs; 0: its default, one per CPU.
	PooldMaxProcs int `json:"poold_max_procs"`
}

// caseSummary is one cell over the rounds: medians, spread (min and max over
// rounds) and ratios to the references, each the median of the ratios taken
// round by round.
type caseSummary struct {
	Case    string `json:"case"`
	Desc    string `json:"description"`
	Group   string `json:"group"`
	Proxy   string `json:"proxy,omitempty"`
	Clients int    `json:"clients"`
	Bulk    bool   `json:"bulk,omitempty"`

	P50US    float64 `json:"p50_us,omitempty"`
	P50MinUS float64 `json:"p50_min_us,omitempty"`
	P50MaxUS float64 `json:"p50_max_us,omitempty"`
	P99US    float64 `json:"p99_us,omitempty"`
	RPS      float64 `json:"rps,omitempty"`
	RPSMin   float64 `json:"rps_min,omitempty"`
	RPSMax   float64 `json:"rps_max,omitempty"`
	MiBps    float64 `json:"mib_per_s,omitempty"`
	MiBpsMin float64 `json:"mib_per_s_min,omitempty"`
	MiBpsMax float64 `json:"mib_per_s_max,omitempty"`
	// ProxyCPUUS is the proxy's CPU time per request (per MiB for bulk).
	ProxyCPUUS  float64 `json:"proxy_cpu_us_per_op,omitempty"`
	ClientCPUUS float64 `json:"client_cpu_us_per_op"`

	// P50XFloor is p50 / the floor's p50 (same group and client count).
	P50XFloor *float64 `json:"p50_x_floor,omitempty"`
	// RPSXFloor is req/s (MiB/s for bulk) / the floor's.
	RPSXFloor *float64 `json:"rps_x_floor,omitempty"`
	// P50SpeedupNoPool is the no-pooling case's p50 / this p50.
	P50SpeedupNoPool *float64 `json:"p50_speedup_vs_no_pool,omitempty"`
	// RPSXNoPool is req/s / the no-pooling case's req/s.
	RPSXNoPool *float64 `json:"rps_x_no_pool,omitempty"`

	Requests int64        `json:"requests"`
	Errors   int64        `json:"errors"`
	Rounds   []cellResult `json:"rounds"`
}

// targetCheck is one of issue 7's targets.
type targetCheck struct {
	Name string   `json:"name"`
	Want string   `json:"want"`
	Got  *float64 `json:"got,omitempty"`
	Met  *bool    `json:"met,omitempty"`
	Note string   `json:"note,omitempty"`
}

// summarize turns the rounds into the report.
func (b *bench) summarize(cells []cell, results map[string][]cellResult, pooldPath, hapVersion string) *benchReport {
	rep := &benchReport{
		Command: b.cfg.command,
		Time:    time.Now().UTC().Format(time.RFC3339),
		Env:     benchEnv(pooldPath, hapVersion),
		Config: benchSettings{Rounds: b.cfg.rounds, DurationS: b.cfg.duration.Seconds(), WarmupS: b.cfg.warmup.Seconds(),
			Clients: b.cfg.clients, Size: b.cfg.size, PooldMaxProcs: b.cfg.maxProcs},
		Notes: b.notes,
	}
	key := func(name string, clients int) string { return fmt.Sprintf("%s c=%d", name, clients) }
	for _, c := range cells {
		rs := results[c.String()]
		s := caseSummary{Case: c.c.name, Desc: c.c.desc, Group: c.c.group, Proxy: c.c.proxy, Clients: c.clients,
			Bulk: c.c.bulk(), Rounds: rs}
		col := func(f func(cellResult) float64) []float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return v
		}
		for _, r := range rs {
			s.Requests += r.Requests
			s.Errors += r.Errors
		}
		rep.Errors += s.Errors
		s.ProxyCPUUS = median(col(func(r cellResult) float64 { return r.ProxyCPUUS }))
		s.ClientCPUUS = median(col(func(r cellResult) float64 { return r.ClientCPUUS }))
		if s.Bulk {
			v := col(func(r cellResult) float64 { return r.MiBps })
			s.MiBps, s.MiBpsMin, s.MiBpsMax = median(v), slices.Min(v), slices.Max(v)
			if f := floorOf[c.c.group]; f != c.c.name {
				s.RPSXFloor = pairRatio(rs, results[key(f, 1)], func(a, b cellResult) float64 { return a.MiBps / b.MiBps })
			}
		} else {
			p50 := col(func(r cellResult) float64 { return r.P50US })
			rps := col(func(r cellResult) float64 { return r.RPS })
			s.P50US, s.P50MinUS, s.P50MaxUS = median(p50), slices.Min(p50), slices.Max(p50)
			s.P99US = median(col(func(r cellResult) float64 { return r.P99US }))
			s.RPS, s.RPSMin, s.RPSMax = median(rps), slices.Min(rps), slices.Max(rps)
			if f := floorOf[c.c.group]; f != c.c.name {
				ref := results[key(f, c.clients)]
				s.P50XFloor = pairRatio(rs, ref, func(a, b cellResult) float64 { return a.P50US / b.P50US })
				s.RPSXFloor = pairRatio(rs, ref, func(a, b cellResult) float64 { return a.RPS / b.RPS })
			}
			if np := noPoolOf[c.c.group]; np != c.c.name {
				ref := results[key(np, c.clients)]
				s.P50SpeedupNoPool = pairRatio(rs, ref, func(a, b cellResult) float64 { return b.P50US / a.P50US })
				s.RPSXNoPool = pairRatio(rs, ref, func(a, b cellResult) float64 { return a.RPS / b.RPS })
			}
		}
		rep.Cases = append(rep.Cases, s)
	}
	rep.Targets = b.targets(results, key)
	return rep
}

// targets checks issue 7's targets, each from ratios taken round by round.
func (b *bench) targets(results map[string][]cellResult, key func(string, int) string) []targetCheck {
	lo, hi := b.cfg.clients[0], slices.Max(b.cfg.clients)
	clientsLabel := func(n int) string {
		if n == 1 {
			return "1 client"
		}
		return fmt.Sprintf("%d clients", n)
	}
	type def struct {
		name, want string
		a, b       string // cell keys
		f          func(a, b cellResult) float64
		ok         func(float64) bool
	}
	p50Speedup := func(a, b cellResult) float64 { return b.P50US / a.P50US }
	p50Ratio := func(a, b cellResult) float64 { return a.P50US / b.P50US }
	rpsRatio := func(a, b cellResult) float64 { return a.RPS / b.RPS }
	cpuRatio := func(a, b cellResult) float64 { return a.ProxyCPUUS / b.ProxyCPUUS }
	defs := []def{
		{name: "TLS lease-per-request p50 speedup over a new TLS connection per request, " + clientsLabel(lo), want: ">= 5x",
			a: key(caseTLSLeaseReq, lo), b: key(caseTLSNewConn, lo), f: p50Speedup, ok: func(v float64) bool { return v >= 5 }},
		{name: "TLS lease-per-request req/s over a new TLS connection per request, " + clientsLabel(hi), want: ">= 10x",
			a: key(caseTLSLeaseReq, hi), b: key(caseTLSNewConn, hi), f: rpsRatio, ok: func(v float64) bool { return v >= 10 }},
		{name: "long-held lease p50 / HAProxy p50 (TCP), " + clientsLabel(lo), want: "<= 1.2x",
			a: key(caseTCPLeaseHld, lo), b: key(caseTCPHAProxy, lo), f: p50Ratio, ok: func(v float64) bool { return v <= 1.2 }},
		{name: "long-held lease req/s / HAProxy req/s (TCP), " + clientsLabel(hi), want: ">= 1x",
			a: key(caseTCPLeaseHld, hi), b: key(caseTCPHAProxy, hi), f: rpsRatio, ok: func(v float64) bool { return v >= 1 }},
		{name: "bulk MiB/s through a lease / through HAProxy", want: ">= 0.8x",
			a: key(caseBulkLease, 1), b: key(caseBulkHAProxy, 1), f: func(a, b cellResult) float64 { return a.MiBps / b.MiBps },
			ok: func(v float64) bool { return v >= 0.8 }},
		{name: "poold CPU per request / HAProxy's, long-held lease (TCP), " + clientsLabel(lo), want: "<= 1.5x",
			a: key(caseTCPLeaseHld, lo), b: key(caseTCPHAProxy, lo), f: cpuRatio, ok: func(v float64) bool { return v <= 1.5 }},
		{name: "poold CPU per request / HAProxy's, long-held lease (TCP), " + clientsLabel(hi), want: "<= 1.5x",
			a: key(caseTCPLeaseHld, hi), b: key(caseTCPHAProxy, hi), f: cpuRatio, ok: func(v float64) bool { return v <= 1.5 }},
	}
	var out []targetCheck
	seen := map[string]bool{}
	for _, d := range defs {
		if seen[d.name] {
			continue // one client count only: the 1- and N-client rows coincide
		}
		seen[d.name] = true
		t := targetCheck{Name: d.name, Want: d.want}
		ra, rb := results[d.a], results[d.b]
		if len(ra) == 0 || len(rb) == 0 {
			t.Note = "not measured: " + strings.TrimSpace(missing(ra, d.a)+" "+missing(rb, d.b))
			out = append(out, t)
			continue
		}
		t.Got = pairRatio(ra, rb, d.f)
		if t.Got != nil {
			met := d.ok(*t.Got)
			t.Met = &met
		}
		out = append(out, t)
	}
	return out
}

func missing(rs []cellResult, key string) string {
	if len(rs) == 0 {
		return key
	}
	return ""
}

// pairRatio returns the median over rounds of f(a[r], b[r]), or nil when
// either side is missing or no ratio is finite.
func pairRatio(a, b []cellResult, f func(a, b cellResult) float64) *float64 {
	n := min(len(a), len(b))
	var v []float64
	for r := range n {
		x := f(a[r], b[r])
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return nil
	}
	m := median(v)
	return &m
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchEnv describes the machine.
func benchEnv(pooldPath, hapVersion string) benchEnvInfo {
	e := benchEnvInfo{GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(),
		Poold: pooldPath, HAProxy: hapVersion}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	return e
}

// write prints the report as a table or JSON.
func (r *benchReport) write(w io.Writer, format string) error {
	if format == "json" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	var buf bytes.Buffer
	r.writeTables(&buf, false)
	_, err := w.Write(buf.Bytes())
	return err
}

// writeTables writes the results, bulk results and targets as aligned text
// or, with md, as Markdown tables.
func (r *benchReport) writeTables(w io.Writer, md bool) {
	table := func(header []string, rows [][]string) {
		if md {
			_, _ = fmt.Fprintf(w, "| %s |\n", strings.Join(header, " | "))
			seps := make([]string, len(header))
			for i := range seps {
				seps[i] = "---"
				if i > 0 {
					seps[i] = "---:"
				}
			}
			_, _ = fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
			for _, row := range rows {
				_, _ = fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			}
			_, _ = fmt.Fprintln(w)
			return
		}
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
		_, _ = fmt.Fprintf(tw, "%s\t\n", strings.Join(header, "\t"))
		for _, row := range rows {
			_, _ = fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
		}
		_ = tw.Flush()
		_, _ = fmt.Fprintln(w)
	}
	var rr, bulk [][]string
	for _, c := range r.Cases {
		if c.Bulk {
			bulk = append(bulk, []string{c.Case, fmt.Sprintf("%.0f", c.MiBps), spread(c.MiBpsMin, c.MiBpsMax, c.MiBps),
				cpuCell(c.ProxyCPUUS, c.Proxy), fmt.Sprintf("%.1fµs", c.ClientCPUUS), ratioCell(c.RPSXFloor)})
			continue
		}
		rr = append(rr, []string{c.Case, fmt.Sprint(c.Clients), fmtUS(c.P50US), fmtUS(c.P99US), fmt.Sprintf("%.0f", c.RPS),
			spread(c.P50MinUS, c.P50MaxUS, c.P50US) + " / " + spread(c.RPSMin, c.RPSMax, c.RPS),
			cpuCell(c.ProxyCPUUS, c.Proxy), fmt.Sprintf("%.1fµs", c.ClientCPUUS),
			ratioCell(c.P50XFloor), ratioCell(c.P50SpeedupNoPool), ratioCell(c.RPSXNoPool)})
	}
	if len(rr) > 0 {
		table([]string{"case", "clients", "p50", "p99", "req/s", "spread p50/rps", "proxy cpu/req", "client cpu/req",
			"p50 x floor", "p50 speedup vs no-pool", "req/s x no-pool"}, rr)
	}
	if len(bulk) > 0 {
		table([]string{"bulk case", "MiB/s", "spread", "proxy cpu/MiB", "client cpu/MiB", "x direct"}, bulk)
	}
	var tg [][]string
	for _, t := range r.Targets {
		got, verdict := "-", "n/a"
		if t.Got != nil {
			got = fmt.Sprintf("%.2fx", *t.Got)
		}
		if t.Met != nil {
			verdict = map[bool]string{true: "met", false: "MISSED"}[*t.Met]
		}
		if t.Note != "" {
			verdict += ", " + t.Note
		}
		tg = append(tg, []string{t.Name, t.Want, got, verdict})
	}
	if len(tg) > 0 {
		if md {
			table([]string{"target", "want", "got", "verdict"}, tg)
		} else {
			// Left-aligned: the names are long.
			tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
			_, _ = fmt.Fprintln(tw, "target\twant\tgot\tverdict")
			for _, row := range tg {
				_, _ = fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
			_ = tw.Flush()
		}
	}
	for _, n := range r.Notes {
		_, _ = fmt.Fprintf(w, "\nnote: %s\n", n)
	}
	if r.Errors > 0 {
		_, _ = fmt.Fprintf(w, "\nerrors: %d requests failed (see -o json for the first error of each case)\n", r.Errors)
	}
}

func fmtUS(us float64) string {
	switch {
	case us == 0:
		return "-"
	case us < 1000:
		return fmt.Sprintf("%.1fµs", us)
	default:
		return fmt.Sprintf("%.2fms", us/1000)
	}
}

// spread is the half-range over rounds relative to the median, in percent.
func spread(lo, hi, med float64) string {
	if med == 0 {
		return "-"
	}
	return fmt.Sprintf("±%.0f%%", (hi-lo)/2/med*100)
}

func cpuCell(us float64, proxy string) string {
	if proxy == "" {
		return "-"
	}
	return fmt.Sprintf("%.1fµs %s", us, proxy)
}

func ratioCell(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// writeReport writes report.md and latency.png to dir.
func (r *benchReport) writeReport(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := r.plotLatency(filepath.Join(dir, "latency.png")); err != nil {
		return fmt.Errorf("latency.png: %w", err)
	}
	var b bytes.Buffer
	_, _ = fmt.Fprintf(&b, "# poolbench\n\n")
	_, _ = fmt.Fprintf(&b, "Run %s: %d rounds of %gs per case, %d-byte requests, clients %v; `%s`.\n\n",
		r.Time, r.Config.Rounds, r.Config.DurationS, r.Config.Size, r.Config.Clients, r.Command)
	_, _ = fmt.Fprintf(&b, "Machine: %d CPUs (%s), Linux %s, %s %s/%s; HAProxy: %s; poold: %s.\n\n",
		r.Env.CPUs, orDash(r.Env.CPUModel), orDash(r.Env.Kernel), r.Env.GoVersion, r.Env.OS, r.Env.Arch, orDash(r.Env.HAProxy),
		procsNote(r.Config.PooldMaxProcs))
	_, _ = fmt.Fprintf(&b, "Medians over rounds; spread is the half-range over rounds; ratios are taken round by round, then their median. "+
		"\"floor\" is a persistent direct connection of the same kind (TCP or TLS); \"no-pool\" a new connection per request. "+
		"CPU per request is the proxy process's user+system time (/proc/PID/stat) over the requests.\n\n")
	b.WriteString("![latency by case](latency.png)\n\n")
	r.writeTables(&b, true)
	b.WriteString("\n## Cases\n\n")
	seen := map[string]bool{}
	for _, c := range r.Cases {
		if !seen[c.Case] {
			seen[c.Case] = true
			_, _ = fmt.Fprintf(&b, "- `%s`: %s\n", c.Case, c.Desc)
		}
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), b.Bytes(), 0o644)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// plotLatency draws p50 and p99 by request/response case and client count
// on a log scale.
func (r *benchReport) plotLatency(path string) error {
	var names []string
	idx := map[string]int{}
	for _, c := range r.Cases {
		if c.Bulk {
			continue
		}
		if _, ok := idx[c.Case]; !ok {
			idx[c.Case] = len(names)
			names = append(names, c.Case)
		}
	}
	if len(names) == 0 {
		return nil
	}
	// Categories read top-down in report order.
	y := func(c caseSummary) float64 { return float64(len(names) - 1 - idx[c.Case]) }
	p := plot.New()
	p.Title.Text = "poolbench: latency per request (log scale)"
	p.X.Label.Text = "µs"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	rev := slices.Clone(names)
	slices.Reverse(rev)
	p.NominalY(rev...)
	p.Add(plotter.NewGrid())
	palette := []color.Color{
		color.RGBA{R: 31, G: 119, B: 180, A: 255},
		color.RGBA{R: 214, G: 39, B: 40, A: 255},
		color.RGBA{R: 44, G: 160, B: 44, A: 255},
		color.RGBA{R: 148, G: 103, B: 189, A: 255},
	}
	minX, maxX := math.Inf(1), 0.0
	for i, n := range r.Config.Clients {
		off := 0.0
		if len(r.Config.Clients) > 1 {
			off = 0.3*float64(i)/float64(len(r.Config.Clients)-1) - 0.15
		}
		var p50, p99 plotter.XYs
		for _, c := range r.Cases {
			if c.Bulk || c.Clients != n || c.P50US <= 0 {
				continue
			}
			p50 = append(p50, plotter.XY{X: c.P50US, Y: y(c) - off})
			p99 = append(p99, plotter.XY{X: c.P99US, Y: y(c) - off})
			minX, maxX = min(minX, c.P50US), max(maxX, c.P99US)
			// A line from p50 to p99.
			l, err := plotter.NewLine(plotter.XYs{{X: c.P50US, Y: y(c) - off}, {X: c.P99US, Y: y(c) - off}})
			if err != nil {
				return err
			}
			l.Color = palette[i%len(palette)]
			p.Add(l)
		}
		if len(p50) == 0 {
			continue
		}
		s50, err := plotter.NewScatter(p50)
		if err != nil {
			return err
		}
		s50.GlyphStyle = draw.GlyphStyle{Color: palette[i%len(palette)], Radius: vg.Points(3.5), Shape: draw.CircleGlyph{}}
		s99, err := plotter.NewScatter(p99)
		if err != nil {
			return err
		}
		s99.GlyphStyle = draw.GlyphStyle{Color: palette[i%len(palette)], Radius: vg.Points(3.5), Shape: draw.CrossGlyph{}}
		p.Add(s50, s99)
		label := fmt.Sprintf("%d clients", n)
		if n == 1 {
			label = "1 client"
		}
		p.Legend.Add(label+" p50", s50)
		p.Legend.Add(label+" p99", s99)
	}
	if !math.IsInf(minX, 1) {
		// Whole decades, and a free one on the right for the legend.
		p.X.Min = math.Pow(10, math.Floor(math.Log10(minX)))
		p.X.Max = math.Pow(10, math.Ceil(math.Log10(maxX))+1)
	}
	p.Legend.Top = true
	p.Legend.Left = false
	return p.Save(9*vg.Inch, vg.Length(1.5+0.45*float64(len(names)))*vg.Inch, path)
}
