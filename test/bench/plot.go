package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// series is one line of a chart.
type series struct {
	name  string
	color string
	dash  bool
	pts   [][2]float64 // x, y
}

// panel is one chart: a title, a y axis label and its lines, over a
// logarithmic x axis of container counts.
type panel struct {
	title, ylabel string
	lines         []series
}

const (
	mineColor = "#1f77b4"
	runcColor = "#ff7f0e"
)

// PlotMemory draws the idle memory of both shims against the number of
// containers as an SVG: per shim (median RSS and PSS) on the left, all
// shims together (summed PSS and RSS) on the right.
func PlotMemory(points []MemoryPoint, subtitle string) []byte {
	const mib = 1.0 / 1024
	var perMine, perRunc, pssMine, pssRunc, totMine, totRunc, totRssMine, totRssRunc [][2]float64
	for _, p := range points {
		x := float64(p.Containers)
		perMine = append(perMine, [2]float64{x, p.Mine.Rss.Median * mib})
		perRunc = append(perRunc, [2]float64{x, p.Runc.Rss.Median * mib})
		pssMine = append(pssMine, [2]float64{x, p.Mine.Pss.Median * mib})
		pssRunc = append(pssRunc, [2]float64{x, p.Runc.Pss.Median * mib})
		totMine = append(totMine, [2]float64{x, p.Mine.TotalPss * mib})
		totRunc = append(totRunc, [2]float64{x, p.Runc.TotalPss * mib})
		totRssMine = append(totRssMine, [2]float64{x, p.Mine.TotalRss * mib})
		totRssRunc = append(totRssRunc, [2]float64{x, p.Runc.TotalRss * mib})
	}
	panels := []panel{
		{title: "Idle memory per shim (median)", ylabel: "MiB per shim", lines: []series{
			{name: "runc-v2 RSS", color: runcColor, pts: perRunc},
			{name: "runc-v2 PSS", color: runcColor, dash: true, pts: pssRunc},
			{name: "mine RSS", color: mineColor, pts: perMine},
			{name: "mine PSS", color: mineColor, dash: true, pts: pssMine},
		}},
		{title: "Idle memory of all shims (sum)", ylabel: "MiB, all shims", lines: []series{
			{name: "runc-v2 RSS (sum)", color: runcColor, pts: totRssRunc},
			{name: "runc-v2 PSS (sum)", color: runcColor, dash: true, pts: totRunc},
			{name: "mine RSS (sum)", color: mineColor, pts: totRssMine},
			{name: "mine PSS (sum)", color: mineColor, dash: true, pts: totMine},
		}},
	}
	return renderSVG(panels, "mine vs containerd-shim-runc-v2: idle shim memory against running containers", subtitle)
}

// Layout of the SVG, in pixels.
const (
	pw, ph         = 420.0, 300.0 // plot area of a panel
	padL, padR     = 70.0, 20.0
	padT, padB     = 80.0, 130.0
	panelW         = padL + pw + padR
	svgH           = padT + ph + padB
	legendRowH     = 18.0
	fontFamily     = "font-family=\"DejaVu Sans, Arial, sans-serif\""
	gridColor      = "#dddddd"
	axisTextColour = "#333333"
)

func renderSVG(panels []panel, title, subtitle string) []byte {
	w := panelW * float64(len(panels))
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" %s font-size="12">`+"\n",
		w, svgH, w, svgH, fontFamily)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="24" font-size="16" text-anchor="middle">%s</text>`+"\n", w/2, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="%.0f" y="44" fill="#555" text-anchor="middle">%s</text>`+"\n", w/2, html.EscapeString(subtitle))
	for i, p := range panels {
		renderPanel(&b, p, float64(i)*panelW)
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func renderPanel(b *strings.Builder, p panel, ox float64) {
	x0, y0 := ox+padL, padT // top left of the plot area
	var xs []float64
	ymax := 0.0
	for _, s := range p.lines {
		for _, pt := range s.pts {
			xs = append(xs, pt[0])
			ymax = math.Max(ymax, pt[1])
		}
	}
	if len(xs) == 0 {
		return
	}
	xmin, xmax := xs[0], xs[0]
	for _, x := range xs {
		xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
	}
	lx := func(x float64) float64 { return math.Log10(math.Max(x, 1e-9)) }
	px := func(x float64) float64 {
		if xmax == xmin {
			return x0 + pw/2
		}
		return x0 + 20 + (lx(x)-lx(xmin))/(lx(xmax)-lx(xmin))*(pw-40)
	}
	step := niceStep(ymax / 5)
	top := math.Ceil(ymax*1.05/step) * step
	if top == 0 {
		top = 1
	}
	py := func(y float64) float64 { return y0 + ph - y/top*ph }

	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="14" text-anchor="middle">%s</text>`+"\n", x0+pw/2, y0-14, html.EscapeString(p.title))
	// Grid and y ticks.
	for y := 0.0; y <= top+step/2; y += step {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x0, py(y), x0+pw, py(y), gridColor)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n", x0-6, py(y)+4, axisTextColour, tick(y))
	}
	// x ticks at the measured counts.
	seen := map[float64]bool{}
	for _, x := range xs {
		if seen[x] {
			continue
		}
		seen[x] = true
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", px(x), y0, px(x), y0+ph, gridColor)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="%s">%g</text>`+"\n", px(x), y0+ph+16, axisTextColour, x)
	}
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", x0, y0, pw, ph)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">running containers (one shim each, log scale)</text>`+"\n", x0+pw/2, y0+ph+36)
	fmt.Fprintf(b, `<text transform="translate(%.1f %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", ox+18, y0+ph/2, html.EscapeString(p.ylabel))

	for i, s := range p.lines {
		var pts []string
		for _, pt := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(pt[0]), py(pt[1])))
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), s.color, dash)
		for _, pt := range s.pts {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %g containers, %.1f MiB</title></circle>`+"\n",
				px(pt[0]), py(pt[1]), s.color, html.EscapeString(s.name), pt[0], pt[1])
		}
		// Legend below the axis label, two columns.
		lxp := x0 + float64(i%2)*pw/2
		lyp := y0 + ph + 60 + float64(i/2)*legendRowH
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", lxp, lyp-4, lxp+28, lyp-4, s.color, dash)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lxp+34, lyp, html.EscapeString(s.name))
	}
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*pow {
			return m * pow
		}
	}
	return 10 * pow
}

func tick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g", math.Round(v*100)/100)
}
