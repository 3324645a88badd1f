package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mineshim/mine/pkg/minimgr"
)

// outputDrain bounds how long minimgr copies output after a process exited.
const outputDrain = 2 * time.Second

func runFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	rm := fs.Bool("rm", false, "delete the container once it exits")
	detach := fs.Bool("d", false, "detach: output goes to a log file in the state dir")
	fs.BoolVar(detach, "detach", false, "same as -d")
	tty := fs.Bool("t", false, "give the process a terminal (raw mode, SIGWINCH forwarded)")
	fs.BoolVar(tty, "tty", false, "same as -t")
	return func(c *cli, args []string) (int, error) {
		if len(args) < 2 {
			return 0, usagef("needs BUNDLE and ID")
		}
		if *rm && *detach {
			return 0, usagef("--rm and -d cannot be used together")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		opts := minimgr.CreateOpts{Bundle: args[0], ID: args[1], Args: args[2:], Terminal: *tty}
		if *detach {
			opts.IO = minimgr.IO{Log: true}
			ct, err := m.Create(c.ctx, opts)
			if err != nil {
				return 0, err
			}
			defer ct.Close()
			if _, err := ct.Start(c.ctx); err != nil {
				_, _ = ct.Delete(context.WithoutCancel(c.ctx), true)
				return 0, err
			}
			return 0, nil
		}
		opts.IO = c.attachedIO(*tty)
		term, err := openTerminal(*tty, c.stdin)
		if err != nil {
			return 0, err
		}
		defer term.restore()
		ct, err := m.Create(c.ctx, opts)
		if err != nil {
			return 0, err
		}
		defer ct.Close()
		fwd := forward(c.ctx, term, func(ctx context.Context, sig syscall.Signal) error {
			return ct.Kill(ctx, sig, false)
		}, ct.Resize)
		defer fwd.stop()
		if _, err := ct.Start(c.ctx); err != nil {
			_, _ = ct.Delete(context.WithoutCancel(c.ctx), true)
			return 0, err
		}
		fwd.started()
		exit, err := ct.Wait(c.ctx)
		if errors.Is(err, minimgr.ErrShimDead) {
			// The shim died under us: clean up after it and report the
			// status it saved.
			exit, err = m.Wait(c.ctx, opts.ID)
		}
		if err != nil {
			return 0, err
		}
		ct.WaitIO(outputDrain)
		term.restore()
		if *rm {
			if _, err := m.Delete(c.ctx, opts.ID, false); err != nil {
				return 0, err
			}
		}
		return exit.Status, nil
	}
}

func createFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		if len(args) < 2 {
			return 0, usagef("needs BUNDLE and ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ct, err := m.Create(c.ctx, minimgr.CreateOpts{Bundle: args[0], ID: args[1], Args: args[2:], IO: minimgr.IO{Log: true}})
		if err != nil {
			return 0, err
		}
		return 0, ct.Close()
	}
}

// withContainer parses "ID" and runs fn on a connection to its shim.
func withContainer(c *cli, args []string, fn func(m *minimgr.Manager, ct *minimgr.Container) error) (int, error) {
	if len(args) != 1 {
		return 0, usagef("needs exactly one ID")
	}
	m, err := c.manager()
	if err != nil {
		return 0, err
	}
	ct, err := m.Open(c.ctx, args[0])
	if err != nil {
		return 0, err
	}
	defer ct.Close()
	return 0, fn(m, ct)
}

func startFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			_, err := ct.Start(c.ctx)
			return err
		})
	}
}

func execFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	detach := fs.Bool("d", false, "detach: output goes to a log file in the state dir")
	fs.BoolVar(detach, "detach", false, "same as -d")
	tty := fs.Bool("t", false, "give the process a terminal")
	fs.BoolVar(tty, "tty", false, "same as -t")
	return func(c *cli, args []string) (int, error) {
		if len(args) < 3 {
			return 0, usagef("needs ID, EXEC_ID and CMD")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ct, err := m.Open(c.ctx, args[0])
		if err != nil {
			return 0, err
		}
		defer ct.Close()
		opts := minimgr.ExecOpts{ID: args[1], Args: args[2:], Terminal: *tty}
		if *detach {
			opts.IO = minimgr.IO{Log: true}
			p, err := ct.Exec(c.ctx, opts)
			if err != nil {
				return 0, err
			}
			_, err = p.Start(c.ctx)
			return 0, err
		}
		opts.IO = c.attachedIO(*tty)
		term, err := openTerminal(*tty, c.stdin)
		if err != nil {
			return 0, err
		}
		defer term.restore()
		p, err := ct.Exec(c.ctx, opts)
		if err != nil {
			return 0, err
		}
		fwd := forward(c.ctx, term, p.Kill, p.Resize)
		defer fwd.stop()
		if _, err := p.Start(c.ctx); err != nil {
			_, _ = p.Delete(context.WithoutCancel(c.ctx))
			return 0, err
		}
		fwd.started()
		exit, err := p.Wait(c.ctx)
		if err != nil {
			return 0, err
		}
		p.WaitIO(outputDrain)
		term.restore()
		if _, err := p.Delete(c.ctx); err != nil {
			return 0, err
		}
		return exit.Status, nil
	}
}

// parseSignal takes a number, a name (KILL) or a full name (SIGKILL).
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d: %w", n, errdefs.ErrInvalidArgument)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: %w", s, errdefs.ErrInvalidArgument)
}

func killFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	sigName := fs.String("s", "SIGTERM", "signal: name or number")
	fs.StringVar(sigName, "signal", "SIGTERM", "same as -s")
	all := fs.Bool("all", false, "signal every process of the container")
	fs.BoolVar(all, "a", false, "same as --all")
	execID := fs.String("exec", "", "signal this exec process instead of the init")
	return func(c *cli, args []string) (int, error) {
		sig, err := parseSignal(*sigName)
		if err != nil {
			return 0, err
		}
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			if *execID != "" {
				return ct.Process(*execID).Kill(c.ctx, sig)
			}
			return ct.Kill(c.ctx, sig, *all)
		})
	}
}

func waitFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		ctx, cancel := interruptible(c.ctx)
		defer cancel()
		exit, err := m.Wait(ctx, args[0])
		if err != nil {
			return 0, err
		}
		return exit.Status, nil
	}
}

func deleteFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	force := fs.Bool("force", false, "kill the container first if it still runs")
	fs.BoolVar(force, "f", false, "same as --force")
	return func(c *cli, args []string) (int, error) {
		if len(args) == 0 {
			return 0, usagef("needs at least one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		var errs []error
		for _, id := range args {
			if _, err := m.Delete(c.ctx, id, *force); err != nil {
				errs = append(errs, err)
			}
		}
		return 0, errors.Join(errs...)
	}
}

func listFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	quiet := fs.Bool("q", false, "print IDs only")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 0 {
			return 0, usagef("takes no arguments")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		infos, err := m.List(c.ctx)
		if err != nil {
			return 0, err
		}
		switch {
		case *asJSON:
			if infos == nil {
				infos = []minimgr.Info{}
			}
			return 0, printJSON(c.stdout, infos)
		case *quiet:
			for _, i := range infos {
				fmt.Fprintln(c.stdout, i.ID)
			}
			return 0, nil
		}
		w := tabwriter.NewWriter(c.stdout, 4, 8, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tPID\tSTATUS\tBUNDLE")
		for _, i := range infos {
			status := string(i.Status)
			if i.Status == minimgr.StatusStopped && i.Exit != nil {
				status = fmt.Sprintf("stopped (%d)", i.Exit.Status)
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", i.ID, i.Pid, status, i.Bundle)
		}
		return 0, w.Flush()
	}
}

func stateFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		if len(args) != 1 {
			return 0, usagef("needs exactly one ID")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		info, err := m.Inspect(c.ctx, args[0])
		if err != nil {
			return 0, err
		}
		return 0, printJSON(c.stdout, info)
	}
}

func pidsFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			ps, err := ct.Pids(c.ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, ps)
			}
			w := tabwriter.NewWriter(c.stdout, 4, 8, 2, ' ', 0)
			fmt.Fprintln(w, "PID\tEXEC_ID")
			for _, p := range ps {
				fmt.Fprintf(w, "%d\t%s\n", p.Pid, p.ExecID)
			}
			return w.Flush()
		})
	}
}

func pauseFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			return ct.Pause(c.ctx)
		})
	}
}

func resumeFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			return ct.Resume(c.ctx)
		})
	}
}

func statsFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		return withContainer(c, args, func(_ *minimgr.Manager, ct *minimgr.Container) error {
			a, err := ct.Stats(c.ctx)
			if err != nil {
				return err
			}
			if a == nil {
				return fmt.Errorf("stats of %s: the shim sent none: %w", ct.ID(), errdefs.ErrNotFound)
			}
			// Decoded when the type is known to this binary, else raw.
			if v, err := typeurl.UnmarshalAny(a); err == nil {
				if msg, ok := v.(proto.Message); ok {
					data, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(msg)
					if err == nil {
						_, err = fmt.Fprintf(c.stdout, "%s\n", data)
						return err
					}
				}
			}
			return printJSON(c.stdout, map[string]string{
				"type_url": a.GetTypeUrl(),
				"value":    base64.StdEncoding.EncodeToString(a.GetValue()),
			})
		})
	}
}

func cleanupFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	asJSON := fs.Bool("json", false, "print JSON")
	return func(c *cli, args []string) (int, error) {
		if len(args) != 0 {
			return 0, usagef("takes no arguments")
		}
		m, err := c.manager()
		if err != nil {
			return 0, err
		}
		removed, err := m.Cleanup(c.ctx)
		if *asJSON {
			if removed == nil {
				removed = []minimgr.Removed{}
			}
			if perr := printJSON(c.stdout, removed); perr != nil {
				return 0, perr
			}
		} else {
			for _, r := range removed {
				fmt.Fprintf(c.stdout, "removed %s (%s, exit status %d)\n", r.ID, r.Reason, r.Exit.Status)
			}
		}
		return 0, err
	}
}

func bundleFlags(fs *flag.FlagSet) func(*cli, []string) (int, error) {
	return func(c *cli, args []string) (int, error) {
		if len(args) != 2 || args[0] != "init" {
			return 0, usagef("usage: bundle init DIR")
		}
		if err := os.MkdirAll(args[1], 0o755); err != nil {
			return 0, err
		}
		return 0, minimgr.InitBusyboxBundle(args[1])
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
