package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// barGroup is one group of bars in a chart: a case, and each target's
// value in it.
type barGroup struct {
	label  string
	values []float64 // one per series, in series order
}

// chartDirEnv names the directory the side-by-side benchmarks draw their
// charts in, when set (POOLPLANE_BENCH_CHARTS=docs): each figure of
// docs/benchmarks.md comes from the run it reports.
const chartDirEnv = "POOLPLANE_BENCH_CHARTS"

// writeBarChart writes an SVG bar chart of groups as file name in the
// directory $POOLPLANE_BENCH_CHARTS, when it is set.
func writeBarChart(b *testing.B, name, title, unit string, series []string, groups []barGroup) {
	b.Helper()
	dir := os.Getenv(chartDirEnv)
	if dir == "" {
		return
	}
	path := filepath.Join(dir, name)
	const (
		w, h                   = 760.0, 340.0
		left, right, top, base = 70.0, 170.0, 40.0, 50.0
	)
	colors := []string{"#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"}
	top1 := 0.0
	for _, g := range groups {
		for _, v := range g.values {
			top1 = math.Max(top1, v)
		}
	}
	if top1 == 0 {
		top1 = 1
	}
	scale := math.Pow(10, math.Floor(math.Log10(top1)))
	top1 = math.Ceil(top1/scale) * scale
	plotW, plotH := w-left-right, h-top-base
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", left, title)
	for i := 0; i <= 4; i++ {
		v := top1 * float64(i) / 4
		y := top + plotH - plotH*float64(i)/4
		fmt.Fprintf(&s, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
			left, left+plotW, y, y, left-6, y+4, v)
	}
	fmt.Fprintf(&s, `<text x="14" y="%.0f" transform="rotate(-90 14 %.0f)" text-anchor="middle">%s</text>`+"\n", top+plotH/2, top+plotH/2, unit)
	gw := plotW / float64(len(groups))
	bw := gw * 0.8 / float64(len(series))
	for gi, g := range groups {
		x0 := left + gw*float64(gi) + gw*0.1
		for si, v := range g.values {
			bh := plotH * v / top1
			fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.0f</title></rect>`+"\n",
				x0+bw*float64(si), top+plotH-bh, bw-2, bh, colors[si%len(colors)], g.label, series[si], v)
		}
		fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x0+gw*0.4, top+plotH+18, g.label)
	}
	for si, name := range series {
		y := top + 18*float64(si)
		fmt.Fprintf(&s, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			left+plotW+16, y, colors[si%len(colors)], left+plotW+34, y+10, name)
	}
	s.WriteString("</svg>\n")
	if err := os.WriteFile(path, []byte(s.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("chart written to %s", path)
}
