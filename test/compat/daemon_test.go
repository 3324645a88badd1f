package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	daemonStartTimeout = 20 * time.Second
	daemonStopTimeout  = 10 * time.Second
)

// release is one containerd release line of the matrix.
type release struct {
	name     string // subtest name
	env      string // variable naming the directory of its binaries
	cacheDir string // where hack/install-deps.sh puts them, under MINE_CACHE
	line     string // major.minor the binary must report
}

var releases = []release{
	{name: "containerd-2.4", env: "MINE_CONTAINERD_BIN", cacheDir: "bin", line: "2.4"},
	{name: "containerd-2.2", env: "MINE_CONTAINERD22_BIN", cacheDir: "containerd-v2.2.9/bin", line: "2.2"},
	{name: "containerd-1.7", env: "MINE_CONTAINERD17_BIN", cacheDir: "containerd-v1.7.35/bin", line: "1.7"},
	{name: "containerd-1.6", env: "MINE_CONTAINERD16_BIN", cacheDir: "containerd-v1.6.20/bin", line: "1.6"},
}

// configVersion is the config format the release reads: 1.6 and 1.7 know
// version 2 only, 2.x takes version 3.
func (r release) configVersion() int {
	if strings.HasPrefix(r.line, "1.") {
		return 2
	}
	return 3
}

// binDir finds the directory of the release's containerd and ctr. It returns
// a reason to skip when they are not there.
func (r release) binDir() (dir, skip string) {
	dir = os.Getenv(r.env)
	from := r.env
	if dir == "" {
		cache := os.Getenv("MINE_CACHE")
		if cache == "" {
			if home, err := os.UserHomeDir(); err == nil {
				cache = filepath.Join(home, ".cache", "mine")
			}
		}
		dir = filepath.Join(cache, r.cacheDir)
		from = r.env + " is unset; default " + dir
		if r.env == "MINE_CONTAINERD_BIN" && !executable(filepath.Join(dir, "containerd")) {
			// Like the e2e tests: containerd 2.4 may be on PATH.
			if p, err := exec.LookPath("containerd"); err == nil {
				dir, from = filepath.Dir(p), "PATH"
			}
		}
	}
	for _, b := range []string{"containerd", "ctr"} {
		if !executable(filepath.Join(dir, b)) {
			return "", fmt.Sprintf("no %s of containerd %s in %s (%s); hack/install-deps.sh builds it", b, r.line, dir, from)
		}
	}
	return dir, ""
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

var versionRE = regexp.MustCompile(`\s+v?(\d+)\.(\d+)\.(\d+)\S*`)

// binaryVersion returns "major.minor.patch" of a containerd or ctr binary.
func binaryVersion(bin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", bin, err, out)
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %q", bin, out)
	}
	return m[1] + "." + m[2] + "." + m[3], nil
}

// daemonConfig describes a private containerd of one release.
type daemonConfig struct {
	Dir         string
	Version     int // config format: 2 or 3
	Snapshotter string
	PathDirs    []string // first on containerd's PATH: the shim's directory
	// SandboxImage is CRI's pause image.
	SandboxImage string
}

func (c daemonConfig) address() string    { return filepath.Join(c.Dir, "c.sock") }
func (c daemonConfig) state() string      { return filepath.Join(c.Dir, "state") }
func (c daemonConfig) configPath() string { return filepath.Join(c.Dir, "config.toml") }
func (c daemonConfig) logPath() string    { return filepath.Join(c.Dir, "containerd.log") }

// toml renders the config. Both formats carry the CRI runtime "mine" the way
// docs/kubernetes.md shows it, so each release also proves it accepts that
// snippet.
func (c daemonConfig) toml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = %d\n", c.Version)
	fmt.Fprintf(&b, "root = %q\nstate = %q\ntemp = %q\n", filepath.Join(c.Dir, "root"), c.state(), filepath.Join(c.Dir, "tmp"))
	fmt.Fprintf(&b, "\n[grpc]\n  address = %q\n", c.address())
	fmt.Fprintf(&b, "\n[ttrpc]\n  address = %q\n", c.address()+".ttrpc")
	fmt.Fprintf(&b, "\n[debug]\n  level = \"debug\"\n")
	q := func(s string) string { return `"` + s + `"` } // version 2 quotes plugin IDs with "
	if c.Version >= 3 {
		q = func(s string) string { return "'" + s + "'" }
	}
	fmt.Fprintf(&b, "\n[plugins.%s]\n  path = %q\n", q("io.containerd.internal.v1.opt"), filepath.Join(c.Dir, "opt"))
	fmt.Fprintf(&b, "\n[plugins.%s]\n  disable = true\n", q("io.containerd.nri.v1.nri"))
	if c.Version >= 3 {
		fmt.Fprintf(&b, "\n[plugins.%s]\n  snapshotter = %q\n", q("io.containerd.cri.v1.images"), c.Snapshotter)
		fmt.Fprintf(&b, "\n[plugins.%s.pinned_images]\n  sandbox = %q\n", q("io.containerd.cri.v1.images"), c.SandboxImage)
		fmt.Fprintf(&b, "\n[plugins.%s]\n  restrict_oom_score_adj = true\n", q("io.containerd.cri.v1.runtime"))
		fmt.Fprintf(&b, "\n[plugins.%s.containerd.runtimes.mine]\n  runtime_type = \"io.containerd.mine.v2\"\n", q("io.containerd.cri.v1.runtime"))
	} else {
		fmt.Fprintf(&b, "\n[plugins.%s]\n  restrict_oom_score_adj = true\n  sandbox_image = %q\n", q("io.containerd.grpc.v1.cri"), c.SandboxImage)
		fmt.Fprintf(&b, "\n[plugins.%s.containerd]\n  snapshotter = %q\n", q("io.containerd.grpc.v1.cri"), c.Snapshotter)
		// 1.7 replaces its default runtimes with the ones the config
		// names: without runc, default_runtime_name = "runc" fails the CRI
		// plugin.
		fmt.Fprintf(&b, "\n[plugins.%s.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n", q("io.containerd.grpc.v1.cri"))
		fmt.Fprintf(&b, "\n[plugins.%s.containerd.runtimes.mine]\n  runtime_type = \"io.containerd.mine.v2\"\n", q("io.containerd.grpc.v1.cri"))
	}
	return b.String()
}

// daemon is a running private containerd.
type daemon struct {
	cfg    daemonConfig
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed
}

// startDaemon starts containerd with only stdio open (stdin /dev/null,
// stdout and stderr to the log) and waits until it serves.
func startDaemon(containerd string, cfg daemonConfig) (*daemon, error) {
	for _, d := range []string{"root", "state", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(cfg.configPath(), []byte(cfg.toml()), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(cfg.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if err := closeOnExecAll(); err != nil {
		return nil, err
	}
	cmd := exec.Command(containerd, "--config", cfg.configPath())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv(cfg.PathDirs)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	deadline := time.NewTimer(daemonStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.DialTimeout("unix", cfg.address(), time.Second); err == nil {
			conn.Close()
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("containerd exited before serving: %v; log:\n%s", d.err, d.logTail(40))
		case <-deadline.C:
			return nil, errors.Join(fmt.Errorf("containerd did not serve within %v; log:\n%s", daemonStartTimeout, d.logTail(40)), d.stop())
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, then SIGKILL after daemonStopTimeout.
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
	d.cmd.Process.Kill()
	select {
	case <-d.exited:
		return fmt.Errorf("containerd ignored SIGTERM for %v and was killed", daemonStopTimeout)
	case <-time.After(daemonStopTimeout):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", d.cmd.Process.Pid)
	}
}

func (d *daemon) logTail(n int) string {
	data, err := os.ReadFile(d.cfg.logPath())
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// cleanEnv is the test's environment without containerd client settings,
// with dirs first on PATH and no deprecation warnings in ctr's output.
func cleanEnv(dirs []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "CONTAINERD_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			continue
		}
		env = append(env, kv)
	}
	path := strings.Join(append(append([]string{}, dirs...), os.Getenv("PATH")), ":")
	return append(env, "PATH="+path, "CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1")
}

// closeOnExecAll keeps descriptors the test binary inherited out of
// containerd and its shims.
func closeOnExecAll() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// overlayWorks reports whether an overlay mount works under dir.
func overlayWorks(dir string) error {
	probe, err := os.MkdirTemp(dir, "overlay-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	var p []string
	for _, n := range []string{"lower", "upper", "work", "merged"} {
		p = append(p, filepath.Join(probe, n))
		if err := os.Mkdir(p[len(p)-1], 0o755); err != nil {
			return err
		}
	}
	if err := syscall.Mount("overlay", p[3], "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", p[0], p[1], p[2])); err != nil {
		return err
	}
	return syscall.Unmount(p[3], 0)
}
