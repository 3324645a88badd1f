package minimgr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// shimProc is a shim daemon process of this Manager's root, held by a
// pidfd so that a signal never reaches a process that reused its pid.
type shimProc struct {
	pid int
	fd  int
}

// findShim returns the shim daemon of rec when pid still runs it: a
// process whose command line is the shim binary with -namespace NS -id ID
// -address of this root. ok is false when there is none.
func (m *Manager) findShim(pid int, id string) (*shimProc, bool) {
	if pid <= 0 {
		return nil, false
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, false
	}
	ns, sid, addr, ok := shimArgs(pid)
	if !ok || ns != m.cfg.Namespace || sid != id || addr != m.grpcAddress() || !alive(fd) {
		unix.Close(fd)
		return nil, false
	}
	return &shimProc{pid: pid, fd: fd}, true
}

// shimArgs reads the -namespace, -id and -address flags of a process; ok
// is false when it does not look like a shim daemon.
func shimArgs(pid int) (ns, id, address string, ok bool) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return "", "", "", false
	}
	args := bytes.Split(bytes.TrimRight(data, "\x00"), []byte{0})
	if len(args) < 2 {
		return "", "", "", false
	}
	for i := 1; i+1 < len(args); i++ {
		switch string(args[i]) {
		case "-namespace", "--namespace":
			ns = string(args[i+1])
		case "-id", "--id":
			id = string(args[i+1])
		case "-address", "--address":
			address = string(args[i+1])
		case "start", "delete":
			return "", "", "", false // a `shim start` or `shim delete`, not the daemon
		}
	}
	return ns, id, address, ns != "" && id != "" && address != ""
}

// alive reports whether the process of pidfd fd still runs.
func alive(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// waitExit waits at most bound for the process to exit.
func (p *shimProc) waitExit(bound time.Duration) bool {
	deadline := time.Now().Add(bound)
	for {
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		if errors.Is(err, unix.EINTR) && time.Now().Before(deadline) {
			continue
		}
		return err == nil && n > 0
	}
}

// kill sends SIGKILL and waits, at most killBound, for the exit.
func (p *shimProc) kill() error {
	if err := unix.PidfdSendSignal(p.fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill shim %d: %w", p.pid, err)
	}
	if !p.waitExit(killBound) {
		return fmt.Errorf("shim %d still there %s after SIGKILL", p.pid, killBound)
	}
	return nil
}

func (p *shimProc) close() { unix.Close(p.fd) }

// killBound bounds the wait for a process killed with SIGKILL.
const killBound = 5 * time.Second

// shimExitBound bounds how long a shim that was told to shut down, and
// answered, may take to end by itself. The shim bounds its own teardown to
// 23 s: up to 10 s for the calls in flight (another client's among them)
// to be answered and 3 s more for its clients to hang up, 5 s to stop its
// server, then 5 s to send its last events, which it drops at once when
// nobody listens for them. A slow but healthy shim is not killed under a
// call or with events queued.
const shimExitBound = 25 * time.Second

// endShim makes sure that the shim daemon (pid) of container id is gone.
// One that was told to shut down and answered (told) is given
// shimExitBound to end by itself; then, or at once when it was not told or
// did not answer, it is killed.
func (m *Manager) endShim(pid int, id string, told bool) error {
	p, ok := m.findShim(pid, id)
	if !ok {
		return nil
	}
	defer p.close()
	if told && p.waitExit(shimExitBound) {
		return nil
	}
	return p.kill()
}

// runcRunning reports whether runc knows container id as running, paused
// or created (its processes live), asked within deleteTimeout. When runc
// keeps a state file for id but does not answer, whether the processes live
// is unknown: an error.
func (m *Manager) runcRunning(ctx context.Context, id string) (bool, error) {
	bin := "runc"
	if o := m.cfg.RuncOptions; o != nil && o.BinaryName != "" {
		bin = o.BinaryName
	}
	ctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--root", m.runcRoot(), "state", id)
	cmd.WaitDelay = waitDelay // a child of runc's may hold its stdout
	out, err := cmd.Output()
	var st struct {
		Status string `json:"status"`
	}
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	if err != nil {
		if !exists(filepath.Join(m.runcRoot(), id, "state.json")) {
			return false, nil // runc knows no such container (or never finished creating it)
		}
		return false, fmt.Errorf("runc state %s: %w", id, err)
	}
	return st.Status == "running" || st.Status == "paused" || st.Status == "created", nil
}

// cmdline is the command line of pid, nil when it is gone.
func cmdline(pid int) []string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// orphanShims returns the shim daemons of this root and namespace whose
// container has no state directory any more (a shim that outlived its
// delete): pid by container ID.
func (m *Manager) orphanShims() map[int]string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := map[int]string{}
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		ns, id, addr, ok := shimArgs(pid)
		if !ok || ns != m.cfg.Namespace || addr != m.grpcAddress() || validateName("container id", id) != nil {
			continue
		}
		if _, err := os.Lstat(m.StateDir(id)); errors.Is(err, os.ErrNotExist) {
			out[pid] = id
		}
	}
	return out
}

// endOrphanShims kills the shims that orphanShims finds.
func (m *Manager) endOrphanShims() ([]Removed, error) {
	var (
		removed []Removed
		errs    []error
	)
	for pid, id := range m.orphanShims() {
		p, ok := m.findShim(pid, id)
		if !ok {
			continue
		}
		// Checked again with the pidfd held: the state may have come back.
		if _, err := os.Lstat(m.StateDir(id)); err == nil {
			p.close()
			continue
		}
		if err := p.kill(); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, Removed{ID: id, Reason: "shim without state", Exit: Exit{Pid: pid, Status: 137}})
		}
		p.close()
	}
	return removed, errors.Join(errs...)
}

// loggerBound bounds how long Delete lets the loggers of a container write
// what was left in their pipes.
const loggerBound = 2 * time.Second

// endLoggers waits, within loggerBound, for the binary:// loggers of the
// processes of state directory dir to finish (the container is gone: they
// are at the end of their pipes), then kills those that have not: no
// process of a container outlives its Delete.
func endLoggers(dir string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	prefix := filepath.Join(dir, ioDir) + "/"
	var procs []*shimProc
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		args := cmdline(pid)
		if len(args) != 3 || args[1] != LoggerArg || !strings.HasPrefix(args[2], prefix) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		// Checked again with the pidfd held.
		if a := cmdline(pid); len(a) != 3 || a[2] != args[2] {
			unix.Close(fd)
			continue
		}
		procs = append(procs, &shimProc{pid: pid, fd: fd})
	}
	deadline := time.Now().Add(loggerBound)
	for _, p := range procs {
		if !p.waitExit(max(time.Until(deadline), 0)) {
			_ = p.kill()
		}
		p.close()
	}
}
