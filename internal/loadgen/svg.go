package loadgen

import (
	"fmt"
	"html"
	"math"
	"strings"
	"time"
)

// palette colours the lines of a plot, in order (colour-blind friendly).
var palette = []string{"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442", "#999999", "#882255"}

// xy is one point of a plot.
type xy struct{ X, Y float64 }

// line is one named line (or set of dots) of a plot.
type line struct {
	Name  string
	Color string
	Pts   [][]xy // segments: a gap in the data breaks the line
	Dots  []xy   // drawn as small dots, no line
	Dash  bool
	Width float64
	Bars  bool // Pts[0] are step bars (histogram): X is the bin's low edge, the next point's X its high edge
}

// plot is an SVG chart with linear x and linear or log y axes.
type plot struct {
	Title          string
	XLabel, YLabel string
	LogX, LogY     bool
	FmtX, FmtY     func(float64) string
	Lines          []line
	Marks          []Mark
	W, H           int
}

// Mark is a labelled moment of a run (a request sent, a phase begun),
// drawn as a vertical line on the plots over time.
type Mark struct {
	T     time.Duration
	Label string
}

const (
	padL, padR, padT, padB = 70, 20, 28, 42
)

// svg renders the plot; an empty plot renders a note instead.
func (p *plot) svg() string {
	if p.W == 0 {
		p.W, p.H = 900, 300
	}
	named := 0
	for _, l := range p.Lines {
		if l.Name != "" {
			named++
		}
	}
	legendH := 16 * ((named + 1) / 2)
	plotH := p.H
	totalH := p.H + legendH
	xmin, xmax, ymin, ymax, ok := p.bounds()
	if !ok {
		return `<p class="empty">` + html.EscapeString(p.Title) + `: no data</p>`
	}
	if p.LogY {
		ymin = math.Pow(10, math.Floor(math.Log10(ymin)))
		ymax = math.Pow(10, math.Ceil(math.Log10(ymax)))
	} else {
		ymin = math.Min(0, ymin)
		ymax = niceCeil(ymax)
	}
	if p.LogX {
		xmin = math.Pow(10, math.Floor(math.Log10(xmin)))
		xmax = math.Pow(10, math.Ceil(math.Log10(xmax)))
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	if ymax <= ymin {
		ymax = ymin + 1
	}
	pw, ph := float64(p.W-padL-padR), float64(plotH-padT-padB)
	sx := func(x float64) float64 {
		if p.LogX {
			return padL + pw*(math.Log10(math.Max(x, xmin))-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin))
		}
		return padL + pw*(x-xmin)/(xmax-xmin)
	}
	sy := func(y float64) float64 {
		if p.LogY {
			return padT + ph*(1-(math.Log10(math.Max(y, ymin))-math.Log10(ymin))/(math.Log10(ymax)-math.Log10(ymin)))
		}
		return padT + ph*(1-(y-ymin)/(ymax-ymin))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" class="plot">`, p.W, totalH, p.W, totalH)
	fmt.Fprintf(&b, `<text x="%d" y="16" class="title">%s</text>`, padL, html.EscapeString(p.Title))
	// Grid and ticks.
	fx, fy := p.FmtX, p.FmtY
	if fx == nil {
		fx = fmtNum
	}
	if fy == nil {
		fy = fmtNum
	}
	for _, t := range ticks(ymin, ymax, p.LogY) {
		y := sy(t)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="grid"/>`, padL, p.W-padR, y, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="tick" text-anchor="end">%s</text>`, padL-4, y+4, html.EscapeString(fy(t)))
	}
	for _, t := range ticks(xmin, xmax, p.LogX) {
		x := sx(t)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="grid"/>`, x, x, padT, plotH-padB)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="tick" text-anchor="middle">%s</text>`, x, plotH-padB+14, html.EscapeString(fx(t)))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" class="frame"/>`, padL, padT, pw, ph)
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" class="label" text-anchor="middle">%s</text>`, padL+pw/2, plotH-8, html.EscapeString(p.XLabel))
	fmt.Fprintf(&b, `<text x="12" y="%.0f" class="label" text-anchor="middle" transform="rotate(-90 12 %.0f)">%s</text>`, padT+ph/2, padT+ph/2, html.EscapeString(p.YLabel))
	// Marks.
	for i, m := range p.Marks {
		x := m.T.Seconds()
		if x < xmin || x > xmax {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="mark"><title>%s</title></line>`, sx(x), sx(x), padT, plotH-padB, html.EscapeString(m.Label))
		lx, anchor := sx(x)+3, "start"
		if sx(x) > padL+0.8*pw { // near the right edge: the label goes to the left of the line
			lx, anchor = sx(x)-3, "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="marklabel" text-anchor="%s">%s</text>`, lx, padT+10+11*(i%3), anchor, html.EscapeString(m.Label))
	}
	// Data.
	for i, l := range p.Lines {
		color := l.Color
		if color == "" {
			color = palette[i%len(palette)]
		}
		w := l.Width
		if w == 0 {
			w = 1.5
		}
		dash := ""
		if l.Dash {
			dash = ` stroke-dasharray="5 3"`
		}
		for _, seg := range l.Pts {
			if len(seg) == 0 {
				continue
			}
			var d strings.Builder
			if l.Bars {
				base := sy(ymin)
				fmt.Fprintf(&d, "M%.1f %.1f", sx(seg[0].X), base)
				for j := 0; j+1 < len(seg); j++ {
					fmt.Fprintf(&d, " L%.1f %.1f L%.1f %.1f", sx(seg[j].X), sy(seg[j].Y), sx(seg[j+1].X), sy(seg[j].Y))
				}
				fmt.Fprintf(&d, " L%.1f %.1f", sx(seg[len(seg)-1].X), base)
			} else {
				for j, pt := range seg {
					cmd := "L"
					if j == 0 {
						cmd = "M"
					}
					fmt.Fprintf(&d, "%s%.1f %.1f ", cmd, sx(pt.X), sy(pt.Y))
				}
				if len(seg) == 1 {
					fmt.Fprintf(&d, "h1")
				}
			}
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="%.1f"%s/>`, strings.TrimSpace(d.String()), color, w, dash)
		}
		if len(l.Dots) > 0 {
			fmt.Fprintf(&b, `<g fill="%s" fill-opacity="0.35">`, color)
			for _, pt := range l.Dots {
				if pt.X < xmin || pt.X > xmax || pt.Y <= 0 && p.LogY {
					continue
				}
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.3"/>`, sx(pt.X), sy(pt.Y))
			}
			b.WriteString(`</g>`)
		}
	}
	// Legend, under the plot in two columns.
	k := 0
	for i, l := range p.Lines {
		if l.Name == "" {
			continue
		}
		color := l.Color
		if color == "" {
			color = palette[i%len(palette)]
		}
		lx := float64(padL) + float64(k%2)*pw/2
		ly := float64(plotH + 12 + 16*(k/2))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="14" height="4" fill="%s"/><text x="%.0f" y="%.0f" class="legend">%s</text>`,
			lx, ly-5, color, lx+18, ly, html.EscapeString(l.Name))
		k++
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// bounds is the data's extent; ok is false without data.
func (p *plot) bounds() (xmin, xmax, ymin, ymax float64, ok bool) {
	xmin, ymin = math.Inf(1), math.Inf(1)
	xmax, ymax = math.Inf(-1), math.Inf(-1)
	see := func(pt xy) {
		if p.LogY && pt.Y <= 0 || p.LogX && pt.X <= 0 || math.IsNaN(pt.Y) || math.IsInf(pt.Y, 0) {
			return
		}
		xmin, xmax = math.Min(xmin, pt.X), math.Max(xmax, pt.X)
		ymin, ymax = math.Min(ymin, pt.Y), math.Max(ymax, pt.Y)
		ok = true
	}
	for _, l := range p.Lines {
		for _, seg := range l.Pts {
			for _, pt := range seg {
				see(pt)
			}
		}
		for _, pt := range l.Dots {
			see(pt)
		}
	}
	for _, m := range p.Marks {
		if ok {
			xmax = math.Max(xmax, m.T.Seconds())
		}
	}
	return
}

// ticks are the tick values of an axis: 1-2-5 steps on a linear axis,
// decades (and 2 and 5 within few decades) on a log axis.
func ticks(lo, hi float64, log bool) []float64 {
	var out []float64
	if log {
		decades := math.Log10(hi) - math.Log10(lo)
		for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
			for _, m := range []float64{1, 2, 5} {
				if m != 1 && decades > 3 {
					continue
				}
				v := m * math.Pow(10, e)
				if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
					out = append(out, v)
				}
			}
		}
		return out
	}
	step := niceStep((hi - lo) / 6)
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		out = append(out, v)
	}
	return out
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= raw {
			return m * e
		}
	}
	return 10 * e
}

// niceCeil rounds v up to a value that a 1-2-5 axis can end on.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	s := niceStep(v / 6)
	return math.Ceil(v/s) * s
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 1e9:
		return trimZero(fmt.Sprintf("%.1fG", v/1e9))
	case a >= 1e6:
		return trimZero(fmt.Sprintf("%.1fM", v/1e6))
	case a >= 1e3:
		return trimZero(fmt.Sprintf("%.1fk", v/1e3))
	case a >= 1:
		return trimZero(fmt.Sprintf("%.1f", v))
	}
	return fmt.Sprintf("%.2g", v)
}

func trimZero(s string) string {
	if i := strings.Index(s, ".0"); i >= 0 && (i+2 == len(s) || s[i+2] < '0' || s[i+2] > '9') {
		return s[:i] + s[i+2:]
	}
	return s
}

// FmtSeconds formats an axis value in seconds as a duration.
func FmtSeconds(v float64) string { return FmtDuration(time.Duration(v * float64(time.Second))) }

// FmtDuration is a short duration: 850ns, 120µs, 1.5ms, 2.3s, 4m10s.
func FmtDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return trimZero(fmt.Sprintf("%.0fµs", float64(d)/1e3))
	case d < time.Second:
		return trimZero(fmt.Sprintf("%.1fms", float64(d)/1e6))
	case d < time.Minute:
		return trimZero(fmt.Sprintf("%.1fs", d.Seconds()))
	}
	return d.Round(time.Second).String()
}

// FmtBytes formats bytes in binary units: 512 B, 3.2 KiB, 400 MiB, 1.2 GiB.
func FmtBytes(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1<<30:
		return trimZero(fmt.Sprintf("%.1f GiB", v/(1<<30)))
	case a >= 1<<20:
		return trimZero(fmt.Sprintf("%.0f MiB", v/(1<<20)))
	case a >= 1<<10:
		return trimZero(fmt.Sprintf("%.0f KiB", v/(1<<10)))
	}
	return fmt.Sprintf("%.0f B", v)
}
