package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// Targets are the ratios (mine / runc-v2, lower is better) the project aims
// at, by row key.
var Targets = map[string]float64{
	"lifecycle": 0.85,
	"overhead":  0.5,
	"rss":       0.5,
	"exec":      0.7,
	"podstart":  0.7,
	"podmem":    0.5,
}

// row is one line of the ratio table.
type row struct {
	name       string
	mine, runc Summary
	ratio      float64
	target     string // key into Targets, or ""
	single     bool   // one value (no runtime split): shown in the mine column
}

func cmpRow(name string, c Comparison, target string) row {
	return row{name: name, mine: c.Mine, runc: c.Runc, ratio: c.Ratio, target: target}
}

// scale returns s with every value multiplied by f (KiB to MiB).
func scale(s Summary, f float64) Summary {
	return Summary{N: s.N, Median: s.Median * f, P90: s.P90 * f, Min: s.Min * f, Max: s.Max * f}
}

func (r *Report) rows() []row {
	const mib = 1.0 / 1024
	var rows []row
	if l := r.Lifecycle; l != nil {
		rows = append(rows,
			cmpRow("ctr run --rm IMAGE id true (ms)", l.Shims, "lifecycle"),
			row{name: "raw runc run, no shim: the floor (ms)", mine: l.Raw, single: true},
			cmpRow("overhead above raw runc (ms)", l.Overhead, "overhead"))
	}
	for _, p := range r.Memory {
		n := p.Containers
		rows = append(rows,
			row{name: fmt.Sprintf("idle RSS per shim, %d containers (MiB)", n), mine: scale(p.Mine.Rss, mib), runc: scale(p.Runc.Rss, mib), ratio: p.RssRatio, target: "rss"},
			row{name: fmt.Sprintf("idle PSS per shim, %d containers (MiB)", n), mine: scale(p.Mine.Pss, mib), runc: scale(p.Runc.Pss, mib), ratio: p.PssRatio},
			row{name: fmt.Sprintf("idle Pss_Anon per shim, %d containers (MiB)", n), mine: scale(p.Mine.PssAnon, mib), runc: scale(p.Runc.PssAnon, mib), ratio: p.PssAnonRatio},
			row{name: fmt.Sprintf("peak RSS (VmHWM) per shim, %d containers (MiB)", n), mine: scale(p.Mine.PeakRss, mib), runc: scale(p.Runc.PeakRss, mib),
				ratio: Ratio(p.Mine.PeakRss.Median, p.Runc.PeakRss.Median)},
		)
		if n == r.Memory[len(r.Memory)-1].Containers && n > 1 {
			m, c := p.Mine.TotalPss*mib, p.Runc.TotalPss*mib
			rows = append(rows, row{name: fmt.Sprintf("PSS of all shims, %d containers (MiB)", n),
				mine: Summary{N: 1, Median: m, P90: m}, runc: Summary{N: 1, Median: c, P90: c}, ratio: Ratio(m, c)})
		}
	}
	if s := r.StartAlone; s != nil && s.Mine.N > 0 {
		rows = append(rows, cmpRow("start alone, bootstrap of containerd >= 2.3 (ms)", *s, ""))
	}
	for _, p := range r.Poll {
		n := p.Containers
		rows = append(rows,
			row{name: fmt.Sprintf("RSS per shim under 1 Hz Stats, %d containers (MiB)", n), mine: scale(p.Mine.Rss, mib), runc: scale(p.Runc.Rss, mib), ratio: Ratio(p.Mine.Rss.Median, p.Runc.Rss.Median)},
			row{name: fmt.Sprintf("PSS per shim under 1 Hz Stats, %d containers (MiB)", n), mine: scale(p.Mine.Pss, mib), runc: scale(p.Runc.Pss, mib), ratio: Ratio(p.Mine.Pss.Median, p.Runc.Pss.Median)},
			row{name: fmt.Sprintf("Pss_Anon per shim under 1 Hz Stats, %d containers (MiB)", n), mine: scale(p.Mine.PssAnon, mib), runc: scale(p.Runc.PssAnon, mib), ratio: Ratio(p.Mine.PssAnon.Median, p.Runc.PssAnon.Median)},
			row{name: fmt.Sprintf("peak RSS per shim under 1 Hz Stats, %d containers (MiB)", n), mine: scale(p.Mine.PeakRss, mib), runc: scale(p.Runc.PeakRss, mib), ratio: Ratio(p.Mine.PeakRss.Median, p.Runc.PeakRss.Median)},
			cmpRow(fmt.Sprintf("shim CPU under 1 Hz Stats, %d containers (ms per s)", n), p.CPU, ""))
		if f := p.Floor; f != nil {
			// In the mine column: the floor server, against runc-v2.
			rows = append(rows,
				row{name: fmt.Sprintf("floor server vs runc-v2: RSS under 1 Hz Stats, %d containers (MiB)", n), mine: scale(f.Rss, mib), runc: scale(p.Runc.Rss, mib), ratio: Ratio(f.Rss.Median, p.Runc.Rss.Median)},
				row{name: fmt.Sprintf("floor server vs runc-v2: PSS under 1 Hz Stats, %d containers (MiB)", n), mine: scale(f.Pss, mib), runc: scale(p.Runc.Pss, mib), ratio: Ratio(f.Pss.Median, p.Runc.Pss.Median)},
				row{name: fmt.Sprintf("floor server vs runc-v2: Pss_Anon under 1 Hz Stats, %d containers (MiB)", n), mine: scale(f.PssAnon, mib), runc: scale(p.Runc.PssAnon, mib), ratio: Ratio(f.PssAnon.Median, p.Runc.PssAnon.Median)})
		}
	}
	one := func(v float64) Summary { return Summary{N: 1, Median: v, P90: v} }
	for _, p := range r.Probes {
		rows = append(rows,
			row{name: fmt.Sprintf("RSS after %d exec probes (MiB)", p.Execs), mine: one(p.Mine.Rss * mib), runc: one(p.Runc.Rss * mib), ratio: Ratio(p.Mine.Rss, p.Runc.Rss)},
			row{name: fmt.Sprintf("Pss_Anon after %d exec probes (MiB)", p.Execs), mine: one(p.Mine.PssAnon * mib), runc: one(p.Runc.PssAnon * mib), ratio: Ratio(p.Mine.PssAnon, p.Runc.PssAnon)})
		if f := p.Floor; f != nil && p.Execs > 0 {
			rows = append(rows,
				row{name: fmt.Sprintf("floor server vs runc-v2 after %d exec probes each: RSS (MiB)", p.Execs), mine: one(f.Rss * mib), runc: one(p.Runc.Rss * mib), ratio: Ratio(f.Rss, p.Runc.Rss)},
				row{name: fmt.Sprintf("floor server vs runc-v2 after %d exec probes each: Pss_Anon (MiB)", p.Execs), mine: one(f.PssAnon * mib), runc: one(p.Runc.PssAnon * mib), ratio: Ratio(f.PssAnon, p.Runc.PssAnon)})
		}
	}
	for _, g := range []struct {
		what   string
		points []GroupPoint
	}{{"group shim", r.Group}, {"group shim with stdout and stderr", r.GroupOutput}} {
		for _, p := range g.points {
			rows = append(rows,
				row{name: fmt.Sprintf("%s, %d containers: RSS (MiB)", g.what, p.Containers), mine: one(p.Mine.Rss * mib), runc: one(p.Runc.Rss * mib), ratio: Ratio(p.Mine.Rss, p.Runc.Rss)},
				row{name: fmt.Sprintf("%s, %d containers: Pss_Anon (MiB)", g.what, p.Containers), mine: one(p.Mine.PssAnon * mib), runc: one(p.Runc.PssAnon * mib), ratio: Ratio(p.Mine.PssAnon, p.Runc.PssAnon)},
				row{name: fmt.Sprintf("%s, %d containers: threads", g.what, p.Containers), mine: one(float64(p.Mine.Threads)), runc: one(float64(p.Runc.Threads)), ratio: Ratio(float64(p.Mine.Threads), float64(p.Runc.Threads))},
				row{name: fmt.Sprintf("%s, %d containers: goroutines (mine)", g.what, p.Containers), mine: one(float64(p.MineGoroutines)), single: true})
			if p.Conns > 0 {
				m := (p.MineConns.PssAnon - p.Mine.PssAnon) / float64(p.Conns)
				c := (p.RuncConns.PssAnon - p.Runc.PssAnon) / float64(p.Conns)
				rows = append(rows, row{name: fmt.Sprintf("%s, %d containers: Pss_Anon per added connection with a Wait (KiB)", g.what, p.Containers),
					mine: one(m), runc: one(c), ratio: Ratio(m, c)})
			}
			if f, _, ok := p.floorPerConn(); ok {
				c := (p.RuncConns.PssAnon - p.Runc.PssAnon) / float64(p.Conns)
				rows = append(rows, row{name: fmt.Sprintf("%s: floor server vs runc-v2, Pss_Anon per added connection with a Wait (KiB)", g.what),
					mine: one(f), runc: one(c), ratio: Ratio(f, c)})
			}
		}
	}
	if b := r.Binaries; b != nil {
		m, c := float64(b["mine"].Bytes)/1e6, float64(b["runc-v2"].Bytes)/1e6
		rows = append(rows, row{name: "shim binary size (MB)",
			mine: Summary{N: 1, Median: m, P90: m}, runc: Summary{N: 1, Median: c, P90: c}, ratio: Ratio(m, c)})
	}
	if x := r.Exec; x != nil {
		rows = append(rows,
			cmpRow(fmt.Sprintf("%d parallel execs into one container, wall (ms)", x.Ops), x.Wall, "exec"),
			cmpRow("  shim CPU per exec (ms)", x.SelfCPU, ""),
			cmpRow("  reaped children CPU per exec (ms)", x.ChildCPU, ""))
	}
	if s := r.Start; s != nil {
		rows = append(rows,
			cmpRow(fmt.Sprintf("%d containers started concurrently, wall (ms)", s.Ops), s.Wall, ""),
			cmpRow("  shim CPU per container (ms)", s.SelfCPU, ""),
			cmpRow("  reaped children CPU per container (ms)", s.ChildCPU, ""))
	}
	if o := r.OOM; o != nil {
		rows = append(rows,
			cmpRow("OOM kill -> /tasks/oom on the stream (ms)", o.OOMEvent, ""),
			cmpRow("OOM kill -> /tasks/exit on the stream (ms)", o.ExitEvent, ""))
		if o.KillToCounter.Mine.N > 0 {
			rows = append(rows, cmpRow("OOM kill -> oom_kill counter seen moving, by the harness (ms)", o.KillToCounter, ""))
		}
		if o.Forward.N > 0 {
			rows = append(rows, row{name: "TaskOOM forwarded over containerd's ttrpc -> on the stream, containerd alone (ms)", mine: o.Forward, single: true})
		}
	}
	if p := r.Pods; p != nil {
		// The mine column is the pod without a pause container; the
		// runc-v2 column, runc-v2 with one.
		none, minePause, runc := PodPauseless.Label(), PodMinePause.Label(), PodRuncPause.Label()
		rows = append(rows,
			row{name: "CRI pod start, 1 container, no pause (mine) vs pause (runc-v2) (ms)", mine: p.Start[none], runc: p.Start[runc], ratio: p.StartRatio, target: "podstart"},
			row{name: "CRI pod start, 1 container, mine + pause vs runc-v2 + pause (ms)", mine: p.Start[minePause], runc: p.Start[runc],
				ratio: Ratio(p.Start[minePause].Median, p.Start[runc].Median)},
			row{name: "PSS per pod besides its container, no pause (mine) vs pause (runc-v2) (MiB)", mine: scale(p.Pss[none], mib), runc: scale(p.Pss[runc], mib), ratio: p.PssRatio, target: "podmem"},
			row{name: "PSS per pod besides its container, mine + pause vs runc-v2 + pause (MiB)", mine: scale(p.Pss[minePause], mib), runc: scale(p.Pss[runc], mib),
				ratio: Ratio(p.Pss[minePause].Median, p.Pss[runc].Median)},
			row{name: "RSS per pod besides its container, no pause (mine) vs pause (runc-v2) (MiB)", mine: scale(p.Rss[none], mib), runc: scale(p.Rss[runc], mib),
				ratio: Ratio(p.Rss[none].Median, p.Rss[runc].Median)},
		)
	}
	if x := r.ExecExit; x != nil {
		rows = append(rows,
			cmpRow("exec true: Start returned -> /tasks/exit (ms)", x.FromStartReturn, ""),
			cmpRow("exec true: Start called -> /tasks/exit (ms)", x.FromStartCall, ""))
	}
	return rows
}

// WriteTable writes the ratio table (mine / runc-v2; below 1 is better for
// mine) as Markdown, then the lifecycle trace when there is one.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "| measurement | mine p50 | mine p90 | runc-v2 p50 | runc-v2 p90 | ratio mine/runc-v2 | target |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.rows() {
		if x.single {
			fmt.Fprintf(&b, "| %s | %s | %s | | | | |\n", x.name, num(x.mine.Median), num(x.mine.P90))
			continue
		}
		target := ""
		if t, ok := Targets[x.target]; ok && x.target != "" {
			verdict := "met"
			if x.ratio == 0 || x.ratio > t {
				verdict = "missed"
			}
			target = fmt.Sprintf("<= %.2f: %s", t, verdict)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", x.name,
			num(x.mine.Median), num(x.mine.P90), num(x.runc.Median), num(x.runc.P90), ratio(x.ratio), target)
	}
	if len(r.Profile) > 0 {
		b.WriteString("\n")
		r.writeProfile(&b)
	} else if r.ProfileNote != "" {
		fmt.Fprintf(&b, "\nlifecycle trace: %s\n", r.ProfileNote)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeProfile writes the milestones of the traced lifecycles of both
// runtimes side by side, in mine's order.
func (r *Report) writeProfile(b *strings.Builder) {
	mine, runc := r.Profile["mine"], r.Profile["runc-v2"]
	if mine == nil || runc == nil {
		return
	}
	at := func(p *Profile, name string) string {
		for _, m := range p.Marks {
			if m.Name == name {
				return num(m.Median)
			}
		}
		return "-"
	}
	fmt.Fprintf(b, "Traced `ctr run --rm` (%d runs each), phases: median ms\n\n", min(mine.Runs, runc.Runs))
	fmt.Fprintf(b, "| phase | mine | runc-v2 | mine - runc-v2 |\n|---|---:|---:|---:|\n")
	for i, ph := range mine.Phases {
		if i >= len(runc.Phases) {
			break
		}
		rp := runc.Phases[i]
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", ph.Name, num(ph.Median), num(rp.Median), num(ph.Median-rp.Median))
	}
	fmt.Fprintf(b, "\nMilestones: median ms after ctr's exec\n\n")
	fmt.Fprintf(b, "| milestone | mine | runc-v2 |\n|---|---:|---:|\n")
	seen := map[string]bool{}
	for _, p := range []*Profile{mine, runc} {
		for _, m := range p.Marks {
			if seen[m.Name] {
				continue
			}
			seen[m.Name] = true
			fmt.Fprintf(b, "| %s | %s | %s |\n", m.Name, at(mine, m.Name), at(runc, m.Name))
		}
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func ratio(v float64) string {
	if v == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

// WriteJSON writes the report, indented, to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
