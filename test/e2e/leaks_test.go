package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mineshim/mine/test/internal/testenv"
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
// address (testenv.ShimProcesses).
func shimProcesses(address string, exes []string) ([]shimProcess, error) {
	ps, err := testenv.ShimProcesses(address, exes)
	if err != nil {
		return nil, err
	}
	procs := make([]shimProcess, len(ps))
	for i, p := range ps {
		procs[i] = shimProcess{pid: p.Pid, argv: p.Argv}
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
func mountsUnder(dir string) ([]string, error) { return testenv.MountsUnder(dir) }

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo.
func unescapeMountinfo(s string) string { return testenv.UnescapeMountinfo(s) }

func exists(p string) bool {
	_, err := os.Lstat(p)
	return !errors.Is(err, fs.ErrNotExist)
}
