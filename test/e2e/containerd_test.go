package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	daemonStartTimeout = 20 * time.Second
	daemonStopTimeout  = 10 * time.Second
)

// daemonConfig describes a private containerd.
type daemonConfig struct {
	// Dir holds root, state, temp, the sockets, config.toml and the log.
	// Keep it short: unix socket paths are limited to about 106 bytes.
	Dir string
	// Snapshotter is the CRI image snapshotter (ctr and the Go client are
	// told theirs on each call).
	Snapshotter string
	// Runtimes maps CRI runtime names to runtime types.
	Runtimes map[string]string
	// PathDirs are put first on containerd's PATH, so it finds the shims.
	PathDirs []string
	// ExtraTOML is appended to the generated config (for example by CRI
	// tests that need a CNI section).
	ExtraTOML string
}

func (c daemonConfig) root() string         { return filepath.Join(c.Dir, "root") }
func (c daemonConfig) state() string        { return filepath.Join(c.Dir, "state") }
func (c daemonConfig) address() string      { return filepath.Join(c.Dir, "c.sock") }
func (c daemonConfig) ttrpcAddress() string { return filepath.Join(c.Dir, "c.sock.ttrpc") }
func (c daemonConfig) configPath() string   { return filepath.Join(c.Dir, "config.toml") }
func (c daemonConfig) logPath() string      { return filepath.Join(c.Dir, "containerd.log") }

// toml renders a version 3 config, which containerd 2.0 to 2.4 accept
// (2.4 migrates it to version 4 in memory and logs that it did).
func (c daemonConfig) toml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 3\n")
	fmt.Fprintf(&b, "root = %q\n", c.root())
	fmt.Fprintf(&b, "state = %q\n", c.state())
	fmt.Fprintf(&b, "temp = %q\n", filepath.Join(c.Dir, "tmp"))
	fmt.Fprintf(&b, "\n[grpc]\n  address = %q\n", c.address())
	fmt.Fprintf(&b, "\n[ttrpc]\n  address = %q\n", c.ttrpcAddress())
	fmt.Fprintf(&b, "\n[debug]\n  level = \"debug\"\n")
	// Keep every path of the daemon inside Dir: no /opt/containerd, and no
	// NRI socket shared with a containerd of the host.
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.internal.v1.opt']\n  path = %q\n", filepath.Join(c.Dir, "opt"))
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n")
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = %q\n", c.Snapshotter)
	// These machines cannot lower oom_score_adj (no CAP_SYS_RESOURCE).
	// Pod network namespaces go under state, not /var/run/netns.
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n")
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = \"runc\"\n")
	for _, name := range sortedKeys(c.Runtimes) {
		fmt.Fprintf(&b, "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.%s]\n  runtime_type = %q\n",
			name, c.Runtimes[name])
	}
	if c.ExtraTOML != "" {
		b.WriteString("\n" + c.ExtraTOML + "\n")
	}
	return b.String()
}

// daemon is a running private containerd.
type daemon struct {
	cfg    daemonConfig
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait returned
	err    error         // cmd.Wait's result, set before exited is closed
}

// startDaemon writes the config and starts containerd with only stdin
// (/dev/null), stdout and stderr (the log file) open, then waits until its
// gRPC socket accepts connections.
func startDaemon(containerd string, cfg daemonConfig) (*daemon, error) {
	for _, d := range []string{cfg.root(), cfg.state(), filepath.Join(cfg.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(cfg.configPath(), []byte(cfg.toml()), 0o644); err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg}
	if err := d.launch(containerd); err != nil {
		return nil, err
	}
	return d, nil
}

// launch starts the containerd binary with d's config file and waits until
// it serves.
func (d *daemon) launch(containerd string) error {
	cfg := d.cfg
	logf, err := os.OpenFile(cfg.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy

	if err := closeOnExecAll(); err != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	cmd := exec.Command(containerd, "--config", cfg.configPath())
	// containerd looks for containerd-shim-* in its working directory
	// before PATH: a stray binary there would replace the shim under test.
	cmd.Dir = cfg.Dir
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = nil
	cmd.Env = daemonEnv(cfg.PathDirs)
	// Own process group: a ^C to the test does not reach containerd before
	// the test stops it. Pdeathsig: a test binary killed by its timeout does
	// not leave containerd running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", containerd, err)
	}
	d.cmd, d.exited, d.err = cmd, make(chan struct{}), nil
	exited := d.exited
	go func() {
		d.err = cmd.Wait()
		close(exited)
	}()
	if err := d.waitReady(daemonStartTimeout); err != nil {
		stopErr := d.stop()
		return errors.Join(err, stopErr, fmt.Errorf("containerd log tail:\n%s", d.logTail(40)))
	}
	return nil
}

// crash kills containerd with SIGKILL, as the OOM killer or a crash would,
// and waits for it to exit. Its shims keep running.
func (d *daemon) crash() error {
	select {
	case <-d.exited:
		return fmt.Errorf("containerd (pid %d) had already exited: %v", d.cmd.Process.Pid, d.err)
	default:
	}
	if err := d.cmd.Process.Kill(); err != nil {
		return err
	}
	select {
	case <-d.exited:
		return nil
	case <-time.After(daemonStopTimeout):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", d.cmd.Process.Pid)
	}
}

// restart starts containerd again with the same binary and config once it
// has exited (after crash or stop), and waits until it serves. Its shims,
// state and sockets are where the previous run left them.
func (d *daemon) restart() error {
	select {
	case <-d.exited:
	default:
		return fmt.Errorf("containerd (pid %d) is still running", d.cmd.Process.Pid)
	}
	return d.launch(d.cmd.Path)
}

// daemonEnv is the test's environment without containerd client settings,
// with dirs first on PATH.
func daemonEnv(dirs []string) []string {
	var env []string
	path := os.Getenv("PATH")
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "PATH="), strings.HasPrefix(kv, "CONTAINERD_"), strings.HasPrefix(kv, "NOTIFY_SOCKET="):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+strings.Join(append(append([]string{}, dirs...), path), ":"))
}

// waitReady polls the gRPC socket until it accepts a connection, containerd
// exits, or the timeout passes.
func (d *daemon) waitReady(timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.DialTimeout("unix", d.cfg.address(), time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("containerd exited before serving %s: %v", d.cfg.address(), d.err)
		case <-deadline.C:
			return fmt.Errorf("containerd did not serve %s within %v", d.cfg.address(), timeout)
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, then SIGKILL if containerd is still running after
// daemonStopTimeout, and waits for it to exit.
func (d *daemon) stop() error {
	select {
	case <-d.exited:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-d.exited:
		return nil
	case <-time.After(daemonStopTimeout):
	}
	if err := d.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-d.exited:
		return fmt.Errorf("containerd ignored SIGTERM for %v and was killed", daemonStopTimeout)
	case <-time.After(daemonStopTimeout):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", d.cmd.Process.Pid)
	}
}

// logTail returns the last n lines of containerd's log.
func (d *daemon) logTail(n int) string {
	data, err := os.ReadFile(d.cfg.logPath())
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", d.cfg.logPath(), err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// closeOnExecAll marks every open descriptor above stderr close-on-exec, so
// that descriptors the test binary inherited (from go test, a CI runner or a
// terminal multiplexer) do not leak into containerd and from there into
// shims, where fd-leak checks would see them.
func closeOnExecAll() error {
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

// overlayWorks reports whether an overlay mount works in dir, which decides
// between the overlayfs and native snapshotters.
func overlayWorks(dir string) error {
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
