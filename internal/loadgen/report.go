package loadgen

import (
	"fmt"
	"html"
	"io"
	"strings"
	"time"
)

// Report is one run of the load generator as a self-contained HTML page:
// no scripts, no style sheets or fonts from elsewhere, the plots inline
// SVG.
type Report struct {
	Title     string
	Command   string // the command line
	Started   time.Time
	Elapsed   time.Duration
	Machine   Machine
	Notes     []string // paragraphs under the title
	Scenarios []*Scenario
}

// Scenario is one scenario's part of the report.
type Scenario struct {
	Name  string // short, for anchors
	Title string
	Notes []string
	// Tables are the summary: the first column is the metric; a cell
	// "PASS" or "MISS" is coloured, and the rows holding one are repeated
	// in the report's goals table.
	Tables []Table
	// Latency series over time and as histograms: a plot for each Group
	// (in order of first appearance), at most plotSeries series a plot.
	Latency []*Series
	Lag     []TimeSeries // messages
	Memory  []TimeSeries // bytes
	Disk    []TimeSeries // bytes
	IO      []TimeSeries // bytes written, cumulative
	CPU     []TimeSeries // cores busy
	Sched   []TimeSeries // seconds goroutines waited for a CPU
	Marks   []Mark       // moments drawn on every plot over time
	Log     string       // the lines the scenario printed
	// Profiles of the scenario, with their top entries.
	Profiles []Profile
}

// Table is a table of the summary.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	Notes  []string
}

// Profile is a profile written during a scenario and the top of it.
type Profile struct {
	Kind string // "CPU", "allocations"
	File string
	Top  string // go tool pprof -top output, or why there is none
}

// plotSeries is the most latency series in one plot.
const plotSeries = 6

// WriteHTML writes the report.
func (r *Report) WriteHTML(w io.Writer) error {
	var b strings.Builder
	esc := html.EscapeString
	title := r.Title
	if title == "" {
		title = "load generator report"
	}
	b.WriteString("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
	fmt.Fprintf(&b, "<title>%s</title>\n<style>%s</style></head><body>\n", esc(title), css)
	fmt.Fprintf(&b, "<h1>%s</h1>\n", esc(title))
	b.WriteString(`<table class="meta">`)
	row := func(k, v string) { fmt.Fprintf(&b, "<tr><th>%s</th><td>%s</td></tr>", esc(k), esc(v)) }
	row("command", r.Command)
	if !r.Started.IsZero() {
		row("started", r.Started.Format(time.RFC3339))
	}
	if r.Elapsed > 0 {
		row("took", r.Elapsed.Round(time.Second).String())
	}
	m := r.Machine
	row("CPU", fmt.Sprintf("%s, %d cores, GOMAXPROCS %d", orUnknown(m.CPU), m.Cores, m.GOMAXPROCS))
	row("memory", FmtBytes(float64(m.MemTotal)))
	row("Go, OS, kernel", fmt.Sprintf("%s %s/%s, kernel %s", m.Go, m.OS, m.Arch, orUnknown(m.Kernel)))
	b.WriteString("</table>\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "<p>%s</p>\n", esc(n))
	}
	// Goals at a glance.
	var goals [][]string
	for _, s := range r.Scenarios {
		for _, t := range s.Tables {
			for _, rw := range t.Rows {
				for _, c := range rw {
					if c == "PASS" || c == "MISS" {
						goals = append(goals, append([]string{s.Name}, rw...))
						break
					}
				}
			}
		}
	}
	if len(r.Scenarios) > 0 {
		b.WriteString("<nav><b>scenarios:</b> ")
		for _, s := range r.Scenarios {
			fmt.Fprintf(&b, `<a href="#%s">%s</a> `, esc(anchor(s.Name)), esc(s.Name))
		}
		b.WriteString("</nav>\n")
	}
	if len(goals) > 0 {
		b.WriteString("<h2>Goals at a glance</h2>\n<table class=\"summary\"><tr><th>scenario</th><th>metric</th><th colspan=\"5\">value, compared with, ratio, goal, result</th></tr>")
		for _, g := range goals {
			b.WriteString("<tr>")
			for _, c := range g {
				writeCell(&b, c)
			}
			b.WriteString("</tr>")
		}
		b.WriteString("</table>\n")
	}
	for _, s := range r.Scenarios {
		s.writeHTML(&b)
	}
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func anchor(name string) string {
	return "s-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '-'
	}, name)
}

func writeCell(b *strings.Builder, c string) {
	switch c {
	case "PASS":
		b.WriteString(`<td class="pass">PASS</td>`)
	case "MISS":
		b.WriteString(`<td class="miss">MISS</td>`)
	default:
		fmt.Fprintf(b, "<td>%s</td>", html.EscapeString(c))
	}
}

func (s *Scenario) writeHTML(b *strings.Builder) {
	esc := html.EscapeString
	fmt.Fprintf(b, "<section id=\"%s\"><h2>%s</h2>\n", esc(anchor(s.Name)), esc(s.Title))
	for _, n := range s.Notes {
		fmt.Fprintf(b, "<p>%s</p>\n", esc(n))
	}
	for _, t := range s.Tables {
		if t.Title != "" {
			fmt.Fprintf(b, "<h3>%s</h3>\n", esc(t.Title))
		}
		b.WriteString(`<table class="summary"><tr>`)
		for _, h := range t.Header {
			fmt.Fprintf(b, "<th>%s</th>", esc(h))
		}
		b.WriteString("</tr>")
		for _, rw := range t.Rows {
			b.WriteString("<tr>")
			for _, c := range rw {
				writeCell(b, c)
			}
			b.WriteString("</tr>")
		}
		b.WriteString("</table>\n")
		for _, n := range t.Notes {
			fmt.Fprintf(b, "<p class=\"note\">%s</p>\n", esc(n))
		}
	}
	var groups []string
	byGroup := map[string][]*Series{}
	for _, sr := range s.Latency {
		if _, ok := byGroup[sr.Group]; !ok {
			groups = append(groups, sr.Group)
		}
		byGroup[sr.Group] = append(byGroup[sr.Group], sr)
	}
	for _, g := range groups {
		all := byGroup[g]
		for i := 0; i < len(all); i += plotSeries {
			group := all[i:min(i+plotSeries, len(all))]
			b.WriteString(`<div class="plots">`)
			if g != "" {
				fmt.Fprintf(b, "<h4>%s</h4>", esc(g))
			}
			b.WriteString(latencyOverTime(group, s.Marks))
			b.WriteString(latencyHistogram(group))
			b.WriteString("</div>\n")
		}
	}
	for _, g := range []struct {
		title, unit string
		ts          []TimeSeries
		scale       float64 // values are divided by it
	}{
		{"projection lag (log messages not yet applied)", "messages", s.Lag, 1},
		{"memory (RssAnon + RssShmem is the process's own; RssFile is mapped files: bbolt pages)", "MiB", s.Memory, 1 << 20},
		{"disk use (apparent size)", "MiB", s.Disk, 1 << 20},
		{"bytes written to storage by the process, cumulative (/proc/PID/io write_bytes)", "MiB", s.IO, 1 << 20},
		{"CPU in use (cores, between samples; /proc/PID/stat and /proc/stat)", "cores", s.CPU, 1},
		{"goroutines waiting for a CPU (runnable, not running; Go's /sched/latencies, in-process only)", "ms", s.Sched, 1e-3},
	} {
		if len(g.ts) == 0 {
			continue
		}
		p := &plot{Title: g.title, XLabel: "time since the scenario started", YLabel: g.unit, FmtX: FmtSeconds, Marks: s.Marks}
		for _, ts := range g.ts {
			seg := make([]xy, len(ts.Points))
			for i, pt := range ts.Points {
				seg[i] = xy{pt.T.Seconds(), pt.V / g.scale}
			}
			p.Lines = append(p.Lines, line{Name: ts.Name, Pts: [][]xy{seg}})
		}
		b.WriteString(`<div class="plots">` + p.svg() + "</div>\n")
	}
	for _, pr := range s.Profiles {
		fmt.Fprintf(b, "<details><summary>%s profile: %s</summary><pre>%s</pre></details>\n", esc(pr.Kind), esc(pr.File), esc(pr.Top))
	}
	if s.Log != "" {
		fmt.Fprintf(b, "<details><summary>output of the scenario</summary><pre>%s</pre></details>\n", esc(s.Log))
	}
	b.WriteString("</section>\n")
}

// latencyOverTime plots each series' p50 (dashed) and p99 (solid) per time
// window on a log scale, with a sample of single requests as dots when
// there are few series.
func latencyOverTime(ss []*Series, marks []Mark) string {
	p := &plot{Title: "latency over time: p99 (solid) and p50 (dashed) per window", XLabel: "time since the scenario started (when the request was sent)",
		YLabel: "latency", LogY: true, FmtX: FmtSeconds, FmtY: FmtSeconds, Marks: marks}
	for i, s := range ss {
		color := palette[i%len(palette)]
		var p99, p50 [][]xy
		var seg99, seg50 []xy
		var last time.Duration = -1
		for _, w := range s.Windows() {
			if last >= 0 && w.Start != last {
				p99, p50 = append(p99, seg99), append(p50, seg50)
				seg99, seg50 = nil, nil
			}
			mid := (w.Start + w.End).Seconds() / 2
			seg99 = append(seg99, xy{mid, w.P99.Seconds()})
			seg50 = append(seg50, xy{mid, w.P50.Seconds()})
			last = w.End
		}
		p99, p50 = append(p99, seg99), append(p50, seg50)
		l := line{Name: s.Name, Color: color, Pts: p99}
		if len(ss) <= 3 {
			for _, smp := range s.Samples() {
				l.Dots = append(l.Dots, xy{smp.At.Seconds(), smp.Lat.Seconds()})
			}
		}
		p.Lines = append(p.Lines, l, line{Color: color, Pts: p50, Dash: true, Width: 1})
	}
	return p.svg()
}

// latencyHistogram plots each series' share of requests per latency bin
// (ten bins a decade) on log-scaled latency.
func latencyHistogram(ss []*Series) string {
	p := &plot{Title: "latency histogram: share of requests per bin (10 bins a decade)", XLabel: "latency", YLabel: "share of requests",
		LogX: true, FmtX: FmtSeconds, FmtY: func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }}
	for i, s := range ss {
		h := s.Hist()
		bins := h.Bins(10)
		if len(bins) == 0 {
			continue
		}
		seg := make([]xy, 0, len(bins)+1)
		for _, bn := range bins {
			seg = append(seg, xy{bn.Lo.Seconds(), float64(bn.Count) / float64(h.Count())})
		}
		seg = append(seg, xy{bins[len(bins)-1].Hi.Seconds(), 0})
		p.Lines = append(p.Lines, line{Name: s.Name, Color: palette[i%len(palette)], Pts: [][]xy{seg}, Bars: true})
	}
	return p.svg()
}

const css = `body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em}h4{margin:1.2em 0 0;font-size:.95em;color:#333}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f4f4f4}table.meta th{width:9em}.pass{background:#d9f2d9;font-weight:bold}.miss{background:#f9d6d5;font-weight:bold}
nav a{margin-right:.8em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}.note{color:#555;font-size:13px}
svg.plot{display:block;margin:.6em 0;max-width:100%;height:auto}svg .title{font-weight:bold;font-size:13px}
svg .tick,svg .legend,svg .marklabel{font-size:11px}svg .label{font-size:12px;fill:#444}svg .grid{stroke:#eee}
svg .frame{fill:none;stroke:#999}svg .mark{stroke:#c00;stroke-dasharray:2 3}svg .marklabel{fill:#c00}.empty{color:#888}`
