package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// oomProbe observes the OOM kills of one memory cgroup the way a shim does,
// and timestamps the moment the kernel's oom_kill counter moved: it waits
// for the kernel's notification (cgroup v1: an eventfd registered on
// memory.oom_control; v2: inotify IN_MODIFY on memory.events), then
// re-reads the counter every counterPoll until it is above its value at
// creation. On v1 the notification comes when the cgroup goes under OOM,
// usually a millisecond or so before the counter moves.
type oomProbe struct {
	counter string   // memory.oom_control (v1) or memory.events (v2)
	base    int64    // oom_kill when the probe was made
	f       *os.File // the eventfd or inotify descriptor, non-blocking
}

const (
	counterPoll  = 50 * time.Microsecond
	counterBound = time.Second
)

// newOOMProbe watches the memory cgroup of pid.
func newOOMProbe(pid int) (*oomProbe, error) {
	dir, v2, err := memoryCgroup(pid)
	if err != nil {
		return nil, err
	}
	p := &oomProbe{}
	var fd int
	if v2 {
		p.counter = filepath.Join(dir, "memory.events")
		if fd, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
			return nil, fmt.Errorf("inotify: %w", err)
		}
		if _, err := unix.InotifyAddWatch(fd, p.counter, unix.IN_MODIFY); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("watch %s: %w", p.counter, err)
		}
	} else {
		p.counter = filepath.Join(dir, "memory.oom_control")
		if fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		if err := registerV1(dir, fd); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	// A non-blocking descriptor joins Go's poller: reads honour deadlines.
	p.f = os.NewFile(uintptr(fd), "oom-probe")
	if p.base, err = p.read(); err != nil {
		p.f.Close()
		return nil, err
	}
	return p, nil
}

// registerV1 asks for OOM notifications of the v1 memory cgroup dir on efd.
// The kernel keeps the registration until efd is closed.
func registerV1(dir string, efd int) error {
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return err
	}
	defer ctl.Close()
	line := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(line), 0); err != nil {
		return fmt.Errorf("register OOM eventfd: %w", err)
	}
	return nil
}

// read returns the oom_kill counter.
func (p *oomProbe) read() (int64, error) {
	data, err := os.ReadFile(p.counter)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "oom_kill" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s has no oom_kill counter (kernel < 4.13?)", p.counter)
}

// wait returns when the counter went up: the time it was seen above the
// base, in CLOCK_MONOTONIC seconds.
func (p *oomProbe) wait(deadline time.Time) (float64, error) {
	if err := p.f.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	buf := make([]byte, 4096)
	for {
		if _, err := p.f.Read(buf); err != nil {
			return 0, fmt.Errorf("no OOM notification: %w", err)
		}
		limit := time.Now().Add(counterBound)
		for {
			n, err := p.read()
			if err != nil {
				return 0, err
			}
			if n > p.base {
				return monotonic(), nil
			}
			if time.Now().After(limit) {
				break // a notification without a kill: wait for the next
			}
			time.Sleep(counterPoll)
		}
	}
}

func (p *oomProbe) close() error { return p.f.Close() }

// memoryCgroup returns the directory of the memory cgroup of pid, and
// whether it is in the unified (v2) hierarchy: the v1 hierarchy holding the
// memory controller when there is one (hybrid hosts), else the 0:: cgroup.
func memoryCgroup(pid int) (string, bool, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", false, err
	}
	var v1Path, v2Path string
	hasV2 := false
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2Path, hasV2 = parts[2], true
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1Path = parts[2]
			}
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		root, mp := unescapeMount(f[3]), unescapeMount(f[4])
		switch {
		case v1Path != "" && g[0] == "cgroup" && hasOption(g[2], "memory"):
			return filepath.Join(mp, relTo(root, v1Path)), false, nil
		case v1Path == "" && hasV2 && g[0] == "cgroup2":
			return filepath.Join(mp, relTo(root, v2Path)), true, nil
		}
	}
	return "", false, errors.New("no mounted memory cgroup hierarchy for pid " + strconv.Itoa(pid))
}

func hasOption(opts, name string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// relTo returns path relative to the root of a cgroup mount.
func relTo(root, path string) string {
	if root == "/" {
		return path
	}
	return strings.TrimPrefix(path, root)
}
