package bench

import (
	"fmt"
	"io"
	"strings"
)

// Goal is one goal of the project for the shim, with what this run
// measured. Ratio goals compare mine with runc-v2 (mine / runc-v2); the
// others bound one of mine's figures.
type Goal struct {
	Name     string  `json:"name"`
	Measured float64 `json:"measured"`
	Limit    float64 `json:"limit"`
	Unit     string  `json:"unit"` // "ratio", "ms", "goroutines", "growth"
	Met      bool    `json:"met"`
	// Floor is the same figure for the floor server (floor.go) in place
	// of mine, where the run measured one. FloorBounds says that no shim
	// on the project's stack can go below it, so that a limit under it
	// cannot be met by any: true of private memory (Pss_Anon), not of RSS
	// and PSS, since the floor keeps the executable's pages it touched,
	// which a shim can drop (mine's idle trim does).
	Floor       float64 `json:"floor,omitempty"`
	FloorBounds bool    `json:"floor_bounds,omitempty"`
}

// withFloor sets the floor's figure of g, and whether it bounds g.
func (g Goal) withFloor(f float64, bounds bool) Goal {
	g.Floor, g.FloorBounds = f, bounds
	return g
}

func goal(name, unit string, measured, limit float64) Goal {
	met := measured <= limit
	if unit == "ratio" || unit == "growth" {
		met = measured > 0 && met // 0: not measured
	}
	return Goal{Name: name, Unit: unit, Measured: measured, Limit: limit, Met: met}
}

// Goals returns the goals this run measured.
func (r *Report) Goals() []Goal {
	var g []Goal
	for _, p := range r.Poll {
		rss := goal(fmt.Sprintf("RSS per shim under 1 Hz Stats polling, %d containers", p.Containers), "ratio", Ratio(p.Mine.Rss.Median, p.Runc.Rss.Median), 0.5)
		pss := goal(fmt.Sprintf("PSS per shim under 1 Hz Stats polling, %d containers", p.Containers), "ratio", Ratio(p.Mine.Pss.Median, p.Runc.Pss.Median), 0.5)
		peak := goal(fmt.Sprintf("peak RSS (VmHWM) per shim under polling, %d containers", p.Containers), "ratio", Ratio(p.Mine.PeakRss.Median, p.Runc.PeakRss.Median), 0.7)
		if f := p.Floor; f != nil {
			rss = rss.withFloor(Ratio(f.Rss.Median, p.Runc.Rss.Median), false)
			pss = pss.withFloor(Ratio(f.Pss.Median, p.Runc.Pss.Median), false)
			peak = peak.withFloor(Ratio(f.PeakRss.Median, p.Runc.PeakRss.Median), false)
		}
		g = append(g, rss, pss, peak)
	}
	var at1000 *ProbePoint
	for i, p := range r.Probes {
		if p.Execs == 0 {
			continue
		}
		if at1000 == nil {
			at1000 = &r.Probes[i]
			rss := goal(fmt.Sprintf("RSS after %d exec probes", p.Execs), "ratio", Ratio(p.Mine.Rss, p.Runc.Rss), 0.5)
			anon := goal(fmt.Sprintf("Pss_Anon after %d exec probes", p.Execs), "ratio", Ratio(p.Mine.PssAnon, p.Runc.PssAnon), 0.5)
			if f := p.Floor; f != nil {
				rss = rss.withFloor(Ratio(f.Rss, p.Runc.Rss), false)
				anon = anon.withFloor(Ratio(f.PssAnon, p.Runc.PssAnon), true)
			}
			g = append(g, rss, anon)
			continue
		}
		g = append(g, goal(fmt.Sprintf("Pss_Anon growth from %d to %d exec probes (flat: <= 5 %%)", at1000.Execs, p.Execs), "growth",
			Ratio(p.Mine.PssAnon, at1000.Mine.PssAnon), 1.05))
	}
	if n := len(r.Group); n >= 2 {
		a, b := r.Group[0], r.Group[n-1]
		extra := float64(b.Containers - a.Containers)
		anon := goal(fmt.Sprintf("Pss_Anon per extra container in one group shim (%d to %d)", a.Containers, b.Containers), "ratio",
			Ratio(b.Mine.PssAnon-a.Mine.PssAnon, b.Runc.PssAnon-a.Runc.PssAnon), 0.5)
		rss := goal(fmt.Sprintf("RSS per extra container in one group shim (%d to %d)", a.Containers, b.Containers), "ratio",
			Ratio(b.Mine.Rss-a.Mine.Rss, b.Runc.Rss-a.Runc.Rss), 0.5)
		if fa, fr, ok := b.floorPerConn(); ok {
			anon = anon.withFloor(Ratio(fa, (b.Runc.PssAnon-a.Runc.PssAnon)/extra), true)
			rss = rss.withFloor(Ratio(fr, (b.Runc.Rss-a.Runc.Rss)/extra), false)
		}
		g = append(g, anon, rss,
			goal("goroutines per extra container in one group shim", "goroutines", float64(b.MineGoroutines-a.MineGoroutines)/extra, 3))
	}
	if n := len(r.GroupOutput); n >= 2 {
		a, b := r.GroupOutput[0], r.GroupOutput[n-1]
		anon := goal(fmt.Sprintf("Pss_Anon per extra container in one group shim, with stdout and stderr as under CRI (%d to %d)", a.Containers, b.Containers), "ratio",
			Ratio(b.Mine.PssAnon-a.Mine.PssAnon, b.Runc.PssAnon-a.Runc.PssAnon), 0.5)
		if fa, _, ok := b.floorPerConn(); ok {
			anon = anon.withFloor(Ratio(fa, (b.Runc.PssAnon-a.Runc.PssAnon)/float64(b.Containers-a.Containers)), true)
		}
		g = append(g, anon)
	}
	if s := r.StartAlone; s != nil && s.Mine.N > 0 {
		g = append(g, goal("start alone (bootstrap of containerd >= 2.3)", "ratio", s.Ratio, 0.8))
	}
	if l := r.Lifecycle; l != nil {
		g = append(g, goal("ctr run --rm IMAGE id true", "ratio", l.Shims.Ratio, 0.85))
	}
	if o := r.OOM; o != nil {
		g = append(g, goal("OOM kill -> /tasks/oom, mine p50", "ms", o.OOMEvent.Mine.Median, 1))
	}
	return g
}

// WriteGoals writes the goal table (Markdown).
func (r *Report) WriteGoals(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| goal | measured | floor | limit | |\n|---|---:|---:|---:|---|\n")
	for _, x := range r.Goals() {
		verdict := "missed"
		if x.Met {
			verdict = "met"
		} else if x.FloorBounds && x.Floor > x.Limit {
			verdict = "missed; the floor is above the limit"
		}
		floor := ""
		if x.Floor > 0 {
			floor = num(x.Floor)
		}
		if (x.Unit == "ratio" || x.Unit == "growth") && x.Measured <= 0 {
			// A difference that did not grow (or no sample): no ratio.
			fmt.Fprintf(&b, "| %s | n/a | %s | %s | not measured |\n", x.Name, floor, num(x.Limit))
			continue
		}
		unit := ""
		switch x.Unit {
		case "ms":
			unit = " ms"
		case "growth":
			unit = "x"
		}
		fmt.Fprintf(&b, "| %s | %s%s | %s | %s%s | %s |\n", x.Name, num(x.Measured), unit, floor, num(x.Limit), unit, verdict)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// floorPerConn is what one more connection with a Wait added to the floor
// server at the largest count: Pss_Anon and RSS (KiB).
func (p GroupPoint) floorPerConn() (anon, rss float64, ok bool) {
	if p.Floor == nil || p.FloorConns == nil || p.Conns == 0 {
		return 0, 0, false
	}
	n := float64(p.Conns)
	return (p.FloorConns.PssAnon - p.Floor.PssAnon) / n, (p.FloorConns.Rss - p.Floor.Rss) / n, true
}
