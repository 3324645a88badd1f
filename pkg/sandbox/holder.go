package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/process"
)

// holderEnv carries the holder's configuration (JSON) to the re-executed
// binary; its presence selects the holder mode.
const holderEnv = "MINE_SANDBOX_HOLDER"

// holderReadyFD is the holder's inherited write end of the pipe on which it
// reports "ok" once it sits in the pod's namespaces, or why it cannot.
const holderReadyFD = 3

// holderReadyTimeout bounds how long Start waits for the holder.
const holderReadyTimeout = 10 * time.Second

// sandboxOOMScoreAdj is the score a pause container gets from CRI: the
// holder is among the last victims. Without CAP_SYS_RESOURCE a lower score
// than the shim's cannot be set; the shim's is kept then.
const sandboxOOMScoreAdj = -998

// holderConfig is what the holder does once cloned into its namespaces.
type holderConfig struct {
	Netns    string            `json:"netns,omitempty"` // joined when set
	Hostname string            `json:"hostname,omitempty"`
	SetHost  bool              `json:"set_hostname,omitempty"` // own UTS namespace
	Sysctls  map[string]string `json:"sysctls,omitempty"`
	OOMScore int               `json:"oom_score_adj"`
}

// RunHolderIfAsked turns the process into a pod's namespace holder when it
// was launched as one, and never returns then; trim, when set, is called
// once the holder is set up, to give back memory start-up used. It must be
// called from an init function of package main: the Go runtime runs init on
// the main thread, locked, and the main thread's namespaces are what
// /proc/<pid>/ns/* show.
func RunHolderIfAsked(trim func()) {
	raw, ok := os.LookupEnv(holderEnv)
	if !ok {
		return
	}
	ready := os.NewFile(holderReadyFD, "ready")
	if err := setupHolder(raw); err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(ready, "ok")
	ready.Close()
	// The holder runs a sliver of the binary: the pages that start-up
	// mapped go back (measured: 13.4 MB RSS without, 4.9 MB with; a
	// forced GC on top raised it to 5.4 MB).
	if trim != nil {
		trim()
	}
	holdAndReap()
}

func setupHolder(raw string) error {
	var c holderConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return fmt.Errorf("holder config: %w", err)
	}
	if c.Netns != "" {
		fd, err := unix.Open(c.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", c.Netns, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join netns %s: %w", c.Netns, err)
		}
	}
	if c.SetHost && c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", c.Hostname, err)
		}
	}
	// Network sysctls are those of the writing thread's network
	// namespace: this one, the main thread, which has joined the pod's.
	for k, v := range c.Sysctls {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
		if err := os.WriteFile(path, []byte(v), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(c.OOMScore)), 0)
	if err != nil && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("set oom_score_adj: %w", err)
	}
	return nil
}

// holdAndReap sits in the namespaces and reaps every child the PID
// namespace hands to its PID 1, until killed. SIGTERM and SIGINT end it,
// as they end a pause container.
func holdAndReap() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	for s := range sigs {
		if s != unix.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
		}
	}
}

// holder is a running holder process, seen from the shim.
type holder struct {
	reaper  *process.Reaper
	pid     int
	started time.Time
	exited  chan struct{} // closed when exit is set
	exit    process.Exit  // valid once exited is closed
}

// spawnHolder launches the holder and waits until it reports that it sits
// in the pod's namespaces. Its exit is claimed from reaper.
func spawnHolder(ctx context.Context, reaper *process.Reaper, self string, p Pod, netns string) (*holder, error) {
	c := holderConfig{
		Netns:    netns,
		Hostname: p.Hostname,
		SetHost:  !p.HostNetwork,
		Sysctls:  p.Sysctls,
		OOMScore: sandboxOOMScoreAdj,
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var flags uintptr
	if !p.HostNetwork {
		flags |= unix.CLONE_NEWUTS
	}
	if !p.HostIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if !p.HostPID {
		flags |= unix.CLONE_NEWPID
	}
	rr, rw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer rr.Close()
	cmd := exec.Command(self)
	cmd.Args = []string{"mine-sandbox-holder"}
	cmd.Env = []string{holderEnv + "=" + string(raw), "GOMAXPROCS=1"}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{rw}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: flags,
		Setsid:     true,
		// The holder dies with the thread that spawned it, which stays
		// locked until the holder's exit: a dead shim leaves no holder.
		Pdeathsig: unix.SIGKILL,
	}
	h := &holder{reaper: reaper, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with the goroutine, after the
		// holder's exit.
		m := reaper.Mark()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		h.pid = cmd.Process.Pid
		h.started = time.Now()
		ch := reaper.Claim(h.pid, m)
		started <- nil
		h.exit = <-ch
		_ = cmd.Process.Release()
		close(h.exited)
	}()
	err = <-started
	rw.Close()
	if err != nil {
		return nil, fmt.Errorf("launch holder: %w", err)
	}
	msg := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(rr).ReadString('\n')
		msg <- strings.TrimSpace(line)
	}()
	fail := func(err error) (*holder, error) {
		kctx, cancel := context.WithTimeout(context.Background(), holderReadyTimeout)
		defer cancel()
		return nil, errors.Join(err, h.kill(kctx))
	}
	select {
	case m := <-msg:
		if m != "ok" {
			if m == "" {
				m = "exited before it was ready"
			}
			return fail(fmt.Errorf("holder: %s", m))
		}
	case <-time.After(holderReadyTimeout):
		return fail(fmt.Errorf("holder not ready within %s: %w", holderReadyTimeout, errdefs.ErrUnavailable))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	return h, nil
}

// alive reports whether the holder has not exited.
func (h *holder) alive() bool {
	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits (bounded by ctx) for the exit.
func (h *holder) kill(ctx context.Context) error {
	if !h.alive() {
		return nil
	}
	// Through the reaper: a holder already reaped (its pid maybe reused) is
	// not signalled.
	if err := h.reaper.Signal(h.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill holder %d: %w", h.pid, err)
	}
	select {
	case <-h.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("holder %d not reaped: %w", h.pid, ctx.Err())
	}
}
