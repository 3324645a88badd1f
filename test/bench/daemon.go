package bench

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
	daemonReadyTimeout = 20 * time.Second
	daemonStopTimeout  = 10 * time.Second
)

// daemon is a private containerd: its root, state, sockets, config and log
// all live in dir.
type daemon struct {
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returned
	err  error         // cmd.Wait's result; read after done is closed
}

func (d *daemon) socket() string      { return filepath.Join(d.dir, "c.sock") }
func (d *daemon) ttrpcSocket() string { return filepath.Join(d.dir, "c.sock.ttrpc") }
func (d *daemon) logPath() string     { return filepath.Join(d.dir, "containerd.log") }
func (d *daemon) configPath() string  { return filepath.Join(d.dir, "config.toml") }

// pid is containerd's process id.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// disabledPlugins are not loaded by the benchmark's containerd: CRI (no
// pods are run; its event handling and CNI setup would only add noise) and
// NRI (its socket would be shared with a containerd of the host).
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.runtime",
	"io.containerd.cri.v1.images",
	"io.containerd.nri.v1.nri",
}

// config renders a version 3 config (containerd 2.0 to 2.4 accept it). The
// log level is containerd's default, info: the shims then run without
// -debug, as in production.
func (d *daemon) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 3\n")
	fmt.Fprintf(&b, "root = %q\n", filepath.Join(d.dir, "root"))
	fmt.Fprintf(&b, "state = %q\n", filepath.Join(d.dir, "state"))
	fmt.Fprintf(&b, "temp = %q\n", filepath.Join(d.dir, "tmp"))
	quoted := make([]string, len(disabledPlugins))
	for i, p := range disabledPlugins {
		quoted[i] = strconv.Quote(p)
	}
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n", strings.Join(quoted, ", "))
	fmt.Fprintf(&b, "\n[grpc]\n  address = %q\n", d.socket())
	fmt.Fprintf(&b, "\n[ttrpc]\n  address = %q\n", d.ttrpcSocket())
	fmt.Fprintf(&b, "\n[plugins.'io.containerd.internal.v1.opt']\n  path = %q\n", filepath.Join(d.dir, "opt"))
	return b.String()
}

// startDaemon starts containerd with its state in dir and pathDirs first on
// its PATH (where it finds the shims), and waits until it serves. The child
// gets only stdin (/dev/null), stdout and stderr (the log): a descriptor
// the benchmark inherited would otherwise leak into every shim.
func startDaemon(containerd, dir string, pathDirs []string) (*daemon, error) {
	d := &daemon{dir: dir, done: make(chan struct{})}
	for _, sub := range []string{"root", "state", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(d.configPath(), []byte(d.config()), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // containerd has its own copy
	if err := cloexecInherited(); err != nil {
		return nil, err
	}
	cmd := exec.Command(containerd, "--config", d.configPath())
	// containerd looks for a shim binary in its working directory before
	// PATH: start it where no stray containerd-shim-* can be.
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = childEnv(pathDirs)
	// Own process group, so a ^C to the benchmark reaches containerd only
	// through stop; killed with the benchmark if it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", containerd, err)
	}
	d.cmd = cmd
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	if err := d.waitReady(); err != nil {
		return nil, errors.Join(err, d.stop(), fmt.Errorf("containerd log:\n%s", d.logTail(30)))
	}
	return d, nil
}

func (d *daemon) waitReady() error {
	deadline := time.NewTimer(daemonReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.DialTimeout("unix", d.socket(), time.Second); err == nil {
			return c.Close()
		}
		select {
		case <-d.done:
			return fmt.Errorf("containerd exited before serving: %v", d.err)
		case <-deadline.C:
			return fmt.Errorf("containerd did not serve %s within %v", d.socket(), daemonReadyTimeout)
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, then SIGKILL after daemonStopTimeout, and waits for
// containerd to exit.
func (d *daemon) stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(daemonStopTimeout):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return fmt.Errorf("containerd ignored SIGTERM for %v and was killed", daemonStopTimeout)
	case <-time.After(daemonStopTimeout):
		return fmt.Errorf("containerd (pid %d) did not exit after SIGKILL", d.pid())
	}
}

// logTail returns the last n lines of containerd's log.
func (d *daemon) logTail(n int) string {
	data, err := os.ReadFile(d.logPath())
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	lines = lines[max(0, len(lines)-n):]
	return string(bytes.Join(lines, []byte("\n")))
}

// childEnv is the benchmark's environment without containerd client
// settings, with dirs first on PATH.
func childEnv(dirs []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "CONTAINERD_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			continue
		}
		env = append(env, kv)
	}
	path := append(append([]string{}, dirs...), filepath.SplitList(os.Getenv("PATH"))...)
	return append(env, "PATH="+strings.Join(path, string(filepath.ListSeparator)))
}

// cloexecInherited marks every descriptor above stderr close-on-exec.
func cloexecInherited() error {
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
