package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cleanupTimeout bounds how long the leak checks wait for the shim to exit
// and its files to go after a delete returned.
const cleanupTimeout = 10 * time.Second

// containerTraces are the host-side traces of one container.
type containerTraces struct {
	ShimPIDs  []int    // shim processes with -id ID (and -namespace NS) in argv
	Socket    string   // shim socket path; "" when unknown or gone
	Mounts    []string // mount points under the bundle
	RuncState string   // runc state dir; "" when gone
	Bundle    string   // bundle dir; "" when gone
}

func (c containerTraces) String() string {
	return fmt.Sprintf("shim pids %v, socket %q, mounts under bundle %q, runc state %q, bundle %q",
		c.ShimPIDs, c.Socket, c.Mounts, c.RuncState, c.Bundle)
}

func (c containerTraces) empty() bool {
	return len(c.ShimPIDs) == 0 && c.Socket == "" && len(c.Mounts) == 0 && c.RuncState == "" && c.Bundle == ""
}

// bundleDir is where containerd keeps the bundle of a task.
func (h *harness) bundleDir(ns, id string) string {
	return filepath.Join(h.d.cfg.state(), "io.containerd.runtime.v2.task", ns, id)
}

// traces collects what the host holds of container id. socket is the shim
// socket path seen while the container ran, or "".
func (h *harness) traces(ns, id, socket string) (containerTraces, error) {
	var tr containerTraces
	var errs []error
	var err error
	if tr.ShimPIDs, err = shimPIDs(h.d.cfg.address(), h.shimExes, ns, id); err != nil {
		errs = append(errs, err)
	}
	if socket != "" && exists(socket) {
		tr.Socket = socket
	}
	bundle := h.bundleDir(ns, id)
	if tr.Mounts, err = mountsUnder(bundle); err != nil {
		errs = append(errs, err)
	}
	if p := filepath.Join(runcRoot, ns, id); exists(p) {
		tr.RuncState = p
	}
	if exists(bundle) {
		tr.Bundle = bundle
	}
	return tr, errors.Join(errs...)
}

// runningTraces returns the traces of a running container and fails t
// unless every kind is present: otherwise the leak checks that follow could
// not see a leak of that kind.
func (h *harness) runningTraces(t *testing.T, ns, id string) containerTraces {
	t.Helper()
	socket, err := shimSocket(h.bundleDir(ns, id))
	if err != nil {
		t.Fatalf("shim address of %s: %v", id, err)
	}
	tr, err := h.traces(ns, id, socket)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.ShimPIDs) == 0 || tr.Socket == "" || len(tr.Mounts) == 0 || tr.RuncState == "" || tr.Bundle == "" {
		t.Fatalf("running container %s does not show every trace the leak checks look for: %v", id, tr)
	}
	want, err := filepath.EvalSymlinks(h.shimPath(h.runtime))
	if err != nil {
		t.Fatalf("shim binary of %s: %v", h.runtime, err)
	}
	// The shim under test must be the binary we gave containerd, not
	// another one found on PATH.
	for _, pid := range tr.ShimPIDs {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != want {
			t.Fatalf("shim of %s (pid %d) runs %q (%v), want %s", id, pid, exe, err, want)
		}
	}
	return tr
}

// assertNoTraces waits up to cleanupTimeout for every trace of container id
// to go, then reports what is left. socket is the shim socket path seen
// while the container ran, or "" when it is not known.
func (h *harness) assertNoTraces(t *testing.T, ns, id, socket string) {
	t.Helper()
	deadline := time.Now().Add(cleanupTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		tr, err := h.traces(ns, id, socket)
		if err != nil {
			t.Fatal(err)
		}
		if tr.empty() {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%v after deleting %s/%s, left: %v", cleanupTimeout, ns, id, tr)
			return
		}
		<-tick.C
	}
}

// shimProcess is a running containerd shim.
type shimProcess struct {
	pid  int
	argv []string
}

// flag returns the value of -name or --name in the shim's argv, as
// "-name value" or "-name=value".
func (p shimProcess) flag(name string) (string, bool) {
	for i, a := range p.argv {
		for _, dash := range []string{"-", "--"} {
			if a == dash+name && i+1 < len(p.argv) {
				return p.argv[i+1], true
			}
			if v, ok := strings.CutPrefix(a, dash+name+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// shimProcesses lists the live shim processes that serve the containerd at
// address: their -address flag names it. A shim is a process whose argv[0]
// base name starts with "containerd-shim" or whose executable is one of exes
// (MINE_SHIM may have any name).
func shimProcesses(address string, exes []string) ([]shimProcess, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var procs []shimProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a zombie
		}
		p := shimProcess{pid: pid, argv: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")}
		if !strings.HasPrefix(filepath.Base(p.argv[0]), "containerd-shim") {
			exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
			if err != nil || !slices.Contains(exes, exe) {
				continue
			}
		}
		// containerd passes -address to every shim it starts; a process
		// without it (a test binary named containerd-shim-*.test, say) is
		// not a shim of this containerd.
		if a, ok := p.flag("address"); !ok || a != address && a != "unix://"+address {
			continue
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// shimPIDs returns the shims of the containerd at address that serve
// container id of namespace ns: "-id ID" in argv (the containerd shim
// convention), and "-namespace NS" when the flag is there.
func shimPIDs(address string, exes []string, ns, id string) ([]int, error) {
	procs, err := shimProcesses(address, exes)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		if v, ok := p.flag("id"); !ok || v != id {
			continue
		}
		if v, ok := p.flag("namespace"); ok && v != ns {
			continue
		}
		pids = append(pids, p.pid)
	}
	return pids, nil
}

// shimSocket returns the path of the shim socket recorded in the bundle:
// bootstrap.json (containerd 2.3 and later) or the older address file.
func shimSocket(bundle string) (string, error) {
	var addr string
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var res struct {
			Address string `json:"address"`
		}
		if err := json.Unmarshal(data, &res); err != nil {
			return "", fmt.Errorf("parse bootstrap.json: %w", err)
		}
		addr = res.Address
	} else if data, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
		addr = strings.TrimSpace(string(data))
	} else {
		return "", fmt.Errorf("neither bootstrap.json nor address in %s", bundle)
	}
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return "", fmt.Errorf("shim address %q is not a unix:// path", addr)
	}
	return path, nil
}

// mountsUnder returns the mount points at or below dir in this mount
// namespace (containerd, the shims and the tests share it).
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	return mounts, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return !errors.Is(err, fs.ErrNotExist)
}
