package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Runtime types of the CRI runtimes every private containerd gets.
const (
	RuntimeMine = "io.containerd.mine.v2"
	RuntimeRunc = "io.containerd.runc.v2"
)

const (
	// StartTimeout bounds the wait for containerd to serve its socket.
	StartTimeout = 20 * time.Second
	// StopTimeout bounds the wait after SIGTERM, then after SIGKILL.
	StopTimeout = 10 * time.Second
)

// Config describes a private containerd.
type Config struct {
	// Dir holds root, state, temp, the sockets, config.toml and the log.
	// Keep it short: unix socket paths are limited to about 106 bytes.
	Dir string
	// Version is the config format: 2 for containerd 1.6 and 1.7, 3 (the
	// default when zero) for 2.x.
	Version int
	// Snapshotter is the CRI image snapshotter; empty means overlayfs.
	Snapshotter string
	// Runtimes maps CRI runtime names to runtime types. Nil means
	// {"runc": RuntimeRunc, "mine": RuntimeMine}.
	Runtimes map[string]string
	// RuntimePaths maps CRI runtime names to the absolute path of the shim
	// binary (runtime_path). With runtime type RuntimeRunc and the mine
	// shim's path, CRI hands the runtime the runc options of its table
	// (SystemdCgroup among them), which it does for no other type.
	RuntimePaths map[string]string
	// DefaultRuntime is CRI's default runtime name; empty means "runc".
	// The kubelet tests set "mine" (RuntimeClass needs an API server).
	DefaultRuntime string
	// SystemdCgroup sets the runc option SystemdCgroup on every runtime.
	SystemdCgroup bool
	// SandboxImage is CRI's pause image; empty leaves containerd's default.
	SandboxImage string
	// PathDirs are put first on containerd's PATH, so it finds the shims.
	PathDirs []string
	// LogLevel of containerd; empty means "debug".
	LogLevel string
	// DisabledPlugins are not loaded (for example the CRI plugins, when a
	// benchmark needs no pods).
	DisabledPlugins []string
	// ExtraTOML is appended to the generated config (a CNI section, say).
	ExtraTOML string
	// RootDir is containerd's root directory (content, metadata,
	// snapshots: the containers' overlay layers); empty means Dir/root.
	RootDir string
}

// Address is containerd's gRPC socket.
func (c Config) Address() string { return filepath.Join(c.Dir, "c.sock") }

// TTRPCAddress is containerd's ttrpc socket.
func (c Config) TTRPCAddress() string { return filepath.Join(c.Dir, "c.sock.ttrpc") }

// Root is containerd's root directory.
func (c Config) Root() string {
	if c.RootDir != "" {
		return c.RootDir
	}
	return filepath.Join(c.Dir, "root")
}

// State is containerd's state directory (the shims' bundles are below).
func (c Config) State() string { return filepath.Join(c.Dir, "state") }

// ConfigPath is the generated config file.
func (c Config) ConfigPath() string { return filepath.Join(c.Dir, "config.toml") }

// LogPath is containerd's log (its stdout and stderr).
func (c Config) LogPath() string { return filepath.Join(c.Dir, "containerd.log") }

func (c Config) version() int {
	if c.Version == 0 {
		return 3
	}
	return c.Version
}

func (c Config) runtimes() map[string]string {
	if c.Runtimes == nil {
		return map[string]string{"runc": RuntimeRunc, "mine": RuntimeMine}
	}
	return c.Runtimes
}

// TOML renders the config.
func (c Config) TOML() string {
	var b strings.Builder
	v := c.version()
	fmt.Fprintf(&b, "version = %d\n", v)
	fmt.Fprintf(&b, "root = %q\nstate = %q\ntemp = %q\n", c.Root(), c.State(), filepath.Join(c.Dir, "tmp"))
	if len(c.DisabledPlugins) > 0 {
		quoted := make([]string, len(c.DisabledPlugins))
		for i, p := range c.DisabledPlugins {
			quoted[i] = strconv.Quote(p)
		}
		fmt.Fprintf(&b, "disabled_plugins = [%s]\n", strings.Join(quoted, ", "))
	}
	fmt.Fprintf(&b, "\n[grpc]\n  address = %q\n", c.Address())
	fmt.Fprintf(&b, "\n[ttrpc]\n  address = %q\n", c.TTRPCAddress())
	level := c.LogLevel
	if level == "" {
		level = "debug"
	}
	fmt.Fprintf(&b, "\n[debug]\n  level = %q\n", level)
	// Version 2 quotes plugin IDs with ", version 3 with '.
	q := func(s string) string { return strconv.Quote(s) }
	if v >= 3 {
		q = func(s string) string { return "'" + s + "'" }
	}
	// Every path of the daemon inside Dir: no /opt/containerd, and no NRI
	// socket shared with a containerd of the host.
	fmt.Fprintf(&b, "\n[plugins.%s]\n  path = %q\n", q("io.containerd.internal.v1.opt"), filepath.Join(c.Dir, "opt"))
	fmt.Fprintf(&b, "\n[plugins.%s]\n  disable = true\n", q("io.containerd.nri.v1.nri"))
	snap := c.Snapshotter
	if snap == "" {
		snap = "overlayfs"
	}
	def := c.DefaultRuntime
	if def == "" {
		def = "runc"
	}
	rts := c.runtimes()
	names := make([]string, 0, len(rts))
	for n := range rts {
		names = append(names, n)
	}
	sort.Strings(names)
	var runtimesTable string
	if v >= 3 {
		images := q("io.containerd.cri.v1.images")
		rt := q("io.containerd.cri.v1.runtime")
		fmt.Fprintf(&b, "\n[plugins.%s]\n  snapshotter = %q\n", images, snap)
		if c.SandboxImage != "" {
			fmt.Fprintf(&b, "\n[plugins.%s.pinned_images]\n  sandbox = %q\n", images, c.SandboxImage)
		}
		// These machines cannot lower oom_score_adj (no CAP_SYS_RESOURCE).
		// Pod network namespaces go under state, not /var/run/netns.
		fmt.Fprintf(&b, "\n[plugins.%s]\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n", rt)
		fmt.Fprintf(&b, "\n[plugins.%s.containerd]\n  default_runtime_name = %q\n", rt, def)
		runtimesTable = "plugins." + rt + ".containerd.runtimes"
	} else {
		cri := q("io.containerd.grpc.v1.cri")
		fmt.Fprintf(&b, "\n[plugins.%s]\n  restrict_oom_score_adj = true\n", cri)
		if c.SandboxImage != "" {
			fmt.Fprintf(&b, "  sandbox_image = %q\n", c.SandboxImage)
		}
		fmt.Fprintf(&b, "\n[plugins.%s.containerd]\n  snapshotter = %q\n  default_runtime_name = %q\n", cri, snap, def)
		// 1.7 replaces its default runtimes with the ones the config
		// names: without runc, default_runtime_name = "runc" fails the CRI
		// plugin. Callers keep "runc" in Runtimes.
		runtimesTable = "plugins." + cri + ".containerd.runtimes"
	}
	for _, n := range names {
		fmt.Fprintf(&b, "\n[%s.%s]\n  runtime_type = %q\n", runtimesTable, n, rts[n])
		if p := c.RuntimePaths[n]; p != "" {
			fmt.Fprintf(&b, "  runtime_path = %q\n", p)
		}
		if c.SystemdCgroup {
			fmt.Fprintf(&b, "\n[%s.%s.options]\n  SystemdCgroup = true\n", runtimesTable, n)
		}
	}
	if c.ExtraTOML != "" {
		b.WriteString("\n" + c.ExtraTOML + "\n")
	}
	return b.String()
}

// Containerd is a running private containerd.
type Containerd struct {
	Config Config
	binary string
	cmd    *exec.Cmd
	proc   *daemon
}

// StartContainerd writes cfg's config and starts the containerd binary with
// only stdin (/dev/null), stdout and stderr (the log) open, then waits until
// its gRPC socket accepts connections.
func StartContainerd(binary string, cfg Config) (*Containerd, error) {
	for _, d := range []string{cfg.Root(), cfg.State(), filepath.Join(cfg.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(cfg.ConfigPath(), []byte(cfg.TOML()), 0o644); err != nil {
		return nil, err
	}
	d := &Containerd{Config: cfg, binary: binary}
	if err := d.launch(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Containerd) launch() error {
	cfg := d.Config
	logf, err := os.OpenFile(cfg.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fi, err := logf.Stat()
	if err != nil {
		logf.Close()
		return err
	}
	logStart := fi.Size() // this run's lines begin here (the log is kept across restarts)
	defer logf.Close()    // the child has its own copy
	if err := CloseOnExecAll(); err != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	cmd := exec.Command(d.binary, "--config", cfg.ConfigPath())
	// containerd looks for containerd-shim-* in its working directory
	// before PATH: a stray binary there would replace the shim under test.
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = Env(cfg.PathDirs)
	// Own process group: a ^C to the test does not reach containerd before
	// the test stops it. Killed if the test binary dies by its timeout.
	proc, err := startDaemon(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", d.binary, err)
	}
	d.cmd, d.proc = cmd, proc
	// The socket can accept before containerd serves (a listener made
	// while plugins still load); the line containerd logs once every
	// plugin is loaded and its services are served is the signal, in
	// every release from 1.6 on.
	err = proc.waitLogLine(cfg.LogPath(), logStart, bootedLine, StartTimeout)
	if err == nil {
		err = proc.waitSocket(cfg.Address(), StartTimeout)
	}
	if err != nil {
		return errors.Join(err, d.Stop(), fmt.Errorf("containerd log tail:\n%s", d.LogTail(40)))
	}
	return nil
}

// Pid is containerd's process id.
func (d *Containerd) Pid() int { return d.cmd.Process.Pid }

// Address is containerd's gRPC socket.
func (d *Containerd) Address() string { return d.Config.Address() }

// Crash kills containerd with SIGKILL, as the OOM killer or a crash would,
// and waits for it to exit. Its shims keep running.
func (d *Containerd) Crash() error {
	select {
	case <-d.proc.exited:
		return fmt.Errorf("containerd (pid %d) had already exited: %v", d.cmd.Process.Pid, d.proc.err)
	default:
	}
	if err := d.cmd.Process.Kill(); err != nil {
		return err
	}
	select {
	case <-d.proc.exited:
		return nil
	case <-time.After(StopTimeout):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", d.cmd.Process.Pid)
	}
}

// Restart starts containerd again with the same binary and config once it
// has exited (after Crash or Stop), and waits until it serves.
func (d *Containerd) Restart() error {
	select {
	case <-d.proc.exited:
	default:
		return fmt.Errorf("containerd (pid %d) is still running", d.cmd.Process.Pid)
	}
	return d.launch()
}

// Stop sends SIGTERM, then SIGKILL if containerd is still running after
// StopTimeout, and waits for it to exit.
func (d *Containerd) Stop() error {
	return stopProcess("containerd", d.cmd, d.proc.exited)
}

// LogTail returns the last n lines of containerd's log.
func (d *Containerd) LogTail(n int) string { return fileTail(d.Config.LogPath(), n) }

// stopProcess sends SIGTERM to cmd's process, then SIGKILL after
// StopTimeout, and waits (bounded) until exited is closed.
func stopProcess(name string, cmd *exec.Cmd, exited <-chan struct{}) error {
	select {
	case <-exited:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(StopTimeout):
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-exited:
		return fmt.Errorf("%s ignored SIGTERM for %v and was killed", name, StopTimeout)
	case <-time.After(StopTimeout):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", name, cmd.Process.Pid)
	}
}

// waitSocket polls a unix socket until it accepts a connection, the
// daemon exits, or timeout.
func (d *daemon) waitSocket(path string, timeout time.Duration) error {
	return d.pollUntil("serving "+path, timeout, func() (bool, error) {
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return false, nil
		}
		return true, conn.Close()
	})
}

// bootedLine is what containerd logs when it has started.
const bootedLine = "containerd successfully booted in"

// waitLogLine polls the file path, from offset on, until it holds line, the
// daemon exits, or timeout.
func (d *daemon) waitLogLine(path string, offset int64, line string, timeout time.Duration) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	var seen []byte // this run's lines so far
	return d.pollUntil(fmt.Sprintf("logging %q", line), timeout, func() (bool, error) {
		more, err := io.ReadAll(f)
		seen = append(seen, more...)
		return bytes.Contains(seen, []byte(line)), err
	})
}

// fileTail returns the last n lines of a file.
func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	lines = lines[max(0, len(lines)-n):]
	return string(bytes.Join(lines, []byte("\n")))
}

// Env is the test's environment without containerd client settings and
// without NOTIFY_SOCKET, with dirs first on PATH and no deprecation warnings
// in ctr's output.
func Env(dirs []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "PATH="), strings.HasPrefix(kv, "CONTAINERD_"), strings.HasPrefix(kv, "NOTIFY_SOCKET="):
			continue
		}
		env = append(env, kv)
	}
	path := append(append([]string{}, dirs...), filepath.SplitList(os.Getenv("PATH"))...)
	return append(env, "PATH="+strings.Join(path, ":"), "CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1")
}

// CloseOnExecAll marks every open descriptor above stderr close-on-exec, so
// that descriptors the test binary inherited (from go test, a CI runner or a
// terminal multiplexer) do not leak into the daemons it starts.
func CloseOnExecAll() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		// The descriptor ReadDir used is already closed; EBADF is harmless.
		syscall.CloseOnExec(fd)
	}
	return nil
}

// OverlayWorks reports whether an overlay mount works in dir, which decides
// between the overlayfs and native snapshotters.
func OverlayWorks(dir string) error {
	probe, err := os.MkdirTemp(dir, "overlay-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	var paths []string
	for _, name := range []string{"lower", "upper", "work", "merged"} {
		p := filepath.Join(probe, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		paths = append(paths, p)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", paths[0], paths[1], paths[2])
	if err := syscall.Mount("overlay", paths[3], "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	return syscall.Unmount(paths[3], 0)
}
