package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// newContainerWith creates a container of the test image running args under
// runtime rt with runtime options ro (containerd passes them to the shim at
// bootstrap and in CreateTaskRequest.Options) and the spec changed by
// specOpts, without a task. A cleanup kills and deletes what the test did
// not delete.
func (h *harness) newContainerWith(t *testing.T, ns, rt, id string, ro any, specOpts []oci.SpecOpts, args ...string) *taskRun {
	t.Helper()
	h.ensureImage(t, ns)
	ctx := nsContext(t, ns, opTimeout)
	image, err := h.client.GetImage(ctx, imageRef)
	if err != nil {
		t.Fatalf("get image %s: %v", imageRef, err)
	}
	container, err := h.client.NewContainer(ctx, id,
		client.WithImage(image),
		client.WithSnapshotter(h.snapshotter),
		client.WithNewSnapshot(id+"-snapshot", image),
		client.WithRuntime(rt, ro),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(image), oci.WithProcessArgs(args...)}, specOpts...)...),
	)
	if err != nil {
		t.Fatalf("create container %s: %v", id, err)
	}
	r := &taskRun{h: h, ns: ns, id: id, container: container, out: newOutputBuffer()}
	t.Cleanup(func() { r.cleanup(t) })
	return r
}

// newTask creates the task of r with its output in r.out and subscribes to
// its exit. It returns the error of the create, for tests that expect one.
func (r *taskRun) newTask(t *testing.T, opts ...client.NewTaskOpts) error {
	t.Helper()
	ctx := nsContext(t, r.ns, opTimeout)
	task, err := r.container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, r.out, r.out)), opts...)
	if err != nil {
		return err
	}
	r.task = task
	if r.exitC, err = task.Wait(ctx); err != nil {
		t.Fatalf("wait task %s: %v", r.id, err)
	}
	return nil
}

// start starts the task created by newTask.
func (r *taskRun) start(t *testing.T) {
	t.Helper()
	if err := r.task.Start(nsContext(t, r.ns, opTimeout)); err != nil {
		t.Fatalf("start task %s: %v", r.id, err)
	}
}

// startTaskWith is startTask with runtime options and spec changes.
func (h *harness) startTaskWith(t *testing.T, ns, id string, ro any, specOpts []oci.SpecOpts, args ...string) *taskRun {
	t.Helper()
	r := h.newContainerWith(t, ns, h.runtime, id, ro, specOpts, args...)
	if err := r.newTask(t); err != nil {
		t.Fatalf("create task %s with runtime %s and options %v: %v", id, h.runtime, ro, err)
	}
	r.start(t)
	return r
}

// expectMine reports whether an expectation holds for the runtime under
// test: it does for the mine shim. containerd's runc shim, run to check the
// tests themselves, differs in what (logged) and is not held to it.
func (h *harness) expectMine(t *testing.T, what string) bool {
	t.Helper()
	if h.runtime == runtimeRunc {
		t.Logf("not checked with %s, which differs: %s", runtimeRunc, what)
		return false
	}
	return true
}

// killAndDelete kills the init with SIGKILL, waits for its exit and deletes
// the task and the container.
func (r *taskRun) killAndDelete(t *testing.T) {
	t.Helper()
	r.kill(t, syscall.SIGKILL)
	if code := r.wait(t); code != 137 {
		t.Errorf("exit status after SIGKILL: %d, want 137", code)
	}
	r.delete(t)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// runtimeWrapper writes a shell script that stands in for runc (as the
// BinaryName runtime option) into a new temporary directory. The script
// sets $dir (that directory), $runc (the real runc), $sub (the runc
// command: create, start, pause, checkpoint, ...), $log (the value of
// --log) and the function arg (`arg --image-path "$@"` prints the value of
// that option), then runs body, then execs runc with the same arguments. body
// may exit to replace runc, or change the arguments with set --.
func runtimeWrapper(t *testing.T, body string) (path, dir string) {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not found in PATH")
	}
	if runc, err = filepath.Abs(runc); err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
# Stands in for runc in the e2e test %s.
dir=%s
runc=%s
sub= log= prev=
for a in "$@"; do
	case "$prev" in
	--root|--log|--log-format|--criu) ;;
	*) if [ -z "$sub" ]; then case "$a" in -*) ;; *) sub=$a ;; esac; fi ;;
	esac
	if [ "$prev" = --log ]; then log=$a; fi
	prev=$a
done
arg() {
	_want=$1; shift
	_prev=
	for _a in "$@"; do
		if [ "$_prev" = "$_want" ]; then printf '%%s\n' "$_a"; return 0; fi
		_prev=$_a
	done
	return 1
}
%s
exec "$runc" "$@"
`, t.Name(), shellQuote(dir), shellQuote(runc), body)
	path = filepath.Join(dir, "runc-wrapper")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

// readArgs reads the argument list a wrapper saved with printf '%s\n' "$@".
func readArgs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the runtime wrapper recorded no call: %v", err)
	}
	return strings.Split(strings.TrimRight(string(data), "\n"), "\n")
}

// optionValue returns the value that follows flag in args.
func optionValue(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

// cgroupUnified reports whether the host runs cgroup v2 only.
func cgroupUnified() bool { return cgroups.Mode() == cgroups.Unified }

// cgroupMount is one mounted cgroup hierarchy.
type cgroupMount struct {
	point string   // mount point
	root  string   // root of the mount within the hierarchy
	v2    bool     // cgroup2
	opts  []string // v1: the super options, among them the controllers and name=...
}

// cgroupMounts lists the cgroup hierarchies mounted in this mount namespace.
func cgroupMounts() ([]cgroupMount, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []cgroupMount
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		m := cgroupMount{point: unescapeMountinfo(f[4]), root: unescapeMountinfo(f[3])}
		switch g[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			m.opts = strings.Split(g[2], ",")
		default:
			continue
		}
		mounts = append(mounts, m)
	}
	return mounts, sc.Err()
}

// procCgroups parses /proc/PID/cgroup: hierarchy controllers ("" for the
// unified hierarchy) to cgroup path.
func procCgroups(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out, nil
}

// cgroupDir returns the directory of the cgroup of pid for a cgroup v1
// controller ("memory", "cpu", "freezer"), or its unified cgroup when
// controller is "".
func cgroupDir(pid int, controller string) (string, error) {
	groups, err := procCgroups(pid)
	if err != nil {
		return "", err
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return "", err
	}
	path, ok := groups[""]
	if controller != "" {
		ok = false
		for hier, p := range groups {
			if slices.Contains(strings.Split(hier, ","), controller) {
				path, ok = p, true
			}
		}
	}
	if !ok {
		return "", fmt.Errorf("pid %d has no cgroup for controller %q: %v", pid, controller, groups)
	}
	for _, m := range mounts {
		if (controller == "" && m.v2) || (controller != "" && !m.v2 && slices.Contains(m.opts, controller)) {
			if m.root != "/" {
				path = strings.TrimPrefix(path, m.root)
			}
			return filepath.Join(m.point, path), nil
		}
	}
	return "", fmt.Errorf("no mounted cgroup hierarchy with controller %q for pid %d (cgroups %v)", controller, pid, groups)
}

// readCgroupFile returns the trimmed content of file in dir.
func readCgroupFile(t *testing.T, dir, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// removeCgroup removes the cgroup at path (relative to the cgroup root) from
// every mounted hierarchy, waiting up to cleanupTimeout for it to empty.
func removeCgroup(path string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		dir := filepath.Join(m.point, path)
		if !exists(dir) {
			continue
		}
		var err error
		if !pollUntil(cleanupTimeout, func() bool {
			err = os.Remove(dir)
			return err == nil || errors.Is(err, os.ErrNotExist)
		}) {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			errs = append(errs, fmt.Errorf("remove %s: %w (processes left: %v)", dir, err, strings.Fields(string(procs))))
		}
	}
	return errors.Join(errs...)
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	return data[i+2] != 'Z'
}

// pollUntil polls cond every 20ms until it holds or timeout passes, and
// reports whether it held.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}
