package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
)

// runtimeCmdTimeout bounds one call of runc, crun or the shim by a test.
const runtimeCmdTimeout = 10 * time.Second

// runtimeState runs `BINARY --root ROOT state ID` and decodes its answer.
func runtimeState(binary, root, id string) (status string, pid int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), runtimeCmdTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "--root", root, "state", id)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", 0, &stateError{err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	var st struct {
		Status string `json:"status"`
		Pid    int    `json:"pid"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", 0, err
	}
	return st.Status, st.Pid, nil
}

type stateError struct {
	err    error
	stderr string
}

func (e *stateError) Error() string { return e.err.Error() + ": " + e.stderr }

// crunHybridRefusal is how crun 1.8 refuses a cgroup v1 host whose unified
// hierarchy has controllers (hugetlb, on some hosts).
const crunHybridRefusal = "hybrid mode not supported"

func TestRuntimeOptionBinaryNameCrun(t *testing.T) {
	h := requireHarness(t)
	crun, err := exec.LookPath("crun")
	if err != nil {
		t.Skip("crun not found in PATH (Debian package crun; hack/install-deps.sh installs it)")
	}
	// Older crun (Debian 12's 1.8) refuses specs of a version it does not
	// know ("unknown version specified"): give it the version it reports.
	ctx := nsContext(t, defaultNamespace, opTimeout)
	out, err := exec.CommandContext(ctx, crun, "--version").Output()
	if err != nil {
		t.Fatalf("crun --version: %v", err)
	}
	var specOpts []oci.SpecOpts
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "spec: "); ok {
			specOpts = append(specOpts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
				s.Version = strings.TrimSpace(v)
				return nil
			})
		}
	}
	ns, id := defaultNamespace, newID(t)
	r := h.newContainerWith(t, ns, h.runtime, id, &options.Options{BinaryName: "crun"}, specOpts,
		"sh", "-c", "echo hello from the container; exec sleep 1000")
	if err := r.newTask(t); err != nil {
		if strings.Contains(err.Error(), crunHybridRefusal) {
			// (crun refuses it even with --cgroup-manager=disabled.)
			// The refusal is crun's: the shim did run crun.
			h.assertNoTraces(t, ns, id, "")
			t.Skipf("this crun cannot run containers on this host's cgroup setup: %v", err)
		}
		t.Fatalf("create task %s with BinaryName crun: %v", id, err)
	}
	r.start(t)
	r.out.waitFor(t, "hello from the container", exitTimeout)
	root := filepath.Join(runcRoot, ns)
	status, pid, err := runtimeState(crun, root, id)
	if err != nil {
		t.Fatalf("crun --root %s state %s: %v: the container is not crun's", root, id, err)
	}
	if status != "running" || uint32(pid) != r.task.Pid() {
		t.Errorf("crun state: %s, pid %d; want running, pid %d", status, pid, r.task.Pid())
	}
	if _, _, err := runtimeState("runc", root, id); err == nil {
		t.Errorf("runc --root %s state %s succeeds: the container was created by runc, not crun", root, id)
	}
	// The runtime's other commands go to crun too.
	if err := r.task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if status, _, err := runtimeState(crun, root, id); err != nil || status != "paused" {
		t.Errorf("crun state after pause: %q (%v), want paused", status, err)
	}
	if err := r.task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	r.killAndDelete(t)
	h.assertNoTraces(t, ns, id, "")
}

func TestRuntimeOptionRoot(t *testing.T) {
	h := requireHarness(t)
	ns := defaultNamespace
	// stateRoot is the runc root the shim uses for the Root option root:
	// one directory per namespace (ROOT/NS/ID), as containerd's runc shim
	// does, so that equal IDs in two namespaces do not collide.
	stateRoot := func(t *testing.T, root string) string {
		return filepath.Join(root, ns)
	}

	t.Run("state in root while running, gone after delete", func(t *testing.T) {
		root := t.TempDir()
		sr := stateRoot(t, root)
		id := newID(t)
		r := h.startTaskWith(t, ns, id, &options.Options{Root: root}, nil, "sleep", "1000")
		if status, pid, err := runtimeState("runc", sr, id); err != nil || status != "running" || uint32(pid) != r.task.Pid() {
			t.Errorf("runc --root %s state %s: %s, pid %d (%v); want running, pid %d", sr, id, status, pid, err, r.task.Pid())
		}
		if p := filepath.Join(runcRoot, ns, id); exists(p) {
			t.Errorf("%s exists: state in the default root although Root is %s", p, root)
		}
		r.killAndDelete(t)
		if p := filepath.Join(sr, id); exists(p) {
			t.Errorf("%s left after delete", p)
		}
		h.assertNoTraces(t, ns, id, "")
	})

	// The shim dies; containerd runs `shim delete`, which must find the
	// root in the bundle to delete the container.
	t.Run("shim killed, delete finds the root", func(t *testing.T) {
		root := t.TempDir()
		sr := stateRoot(t, root)
		id := newID(t)
		state := filepath.Join(sr, id)
		// With no shim left, only runc can stop a container the test
		// found not deleted.
		t.Cleanup(func() {
			if exists(state) {
				ctx, cancel := context.WithTimeout(context.Background(), runtimeCmdTimeout)
				defer cancel()
				out, err := exec.CommandContext(ctx, "runc", "--root", sr, "delete", "--force", id).CombinedOutput()
				t.Logf("cleanup: runc --root %s delete --force %s: %v %s", sr, id, err, out)
			}
		})
		r := h.startTaskWith(t, ns, id, &options.Options{Root: root}, nil, "sleep", "1000")
		pid := int(r.task.Pid())
		shims, err := shimPIDs(h.d.cfg.address(), h.shimExes, ns, id)
		if err != nil || len(shims) != 1 {
			t.Fatalf("shim of %s: %v (%v)", id, shims, err)
		}
		if !exists(state) {
			t.Fatalf("no runc state in %s", state)
		}
		if err := syscall.Kill(shims[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !pollUntil(cleanupTimeout, func() bool { return !exists(state) && !pidAlive(pid) }) {
			t.Errorf("%v after the shim was killed: runc state %s exists %v, init %d alive %v",
				cleanupTimeout, state, exists(state), pid, pidAlive(pid))
		}
		ctx := nsContext(t, ns, opTimeout)
		if _, err := r.task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("delete the task of the dead shim: %v", err)
		}
		if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Fatalf("delete container: %v", err)
		}
		r.deleted = true
		h.assertNoTraces(t, ns, id, "")
	})
}

func TestRuntimeOptionShimCgroup(t *testing.T) {
	h := requireHarness(t)
	t.Run("existing cgroup", func(t *testing.T) {
		cg := newShimCgroup(t)
		if cgroupUnified() {
			if _, err := cgroup2.NewManager("/sys/fs/cgroup", cg, &cgroup2.Resources{}); err != nil {
				t.Fatalf("create cgroup %s: %v", cg, err)
			}
		} else if _, err := cgroup1.New(cgroup1.StaticPath(cg), &specs.LinuxResources{}); err != nil {
			t.Fatalf("create cgroup %s: %v", cg, err)
		}
		h.checkShimCgroup(t, cg)
	})
	t.Run("cgroup created by the shim", func(t *testing.T) {
		if !h.expectMine(t, "it needs the cgroup to exist") {
			t.SkipNow()
		}
		h.checkShimCgroup(t, newShimCgroup(t))
	})
}

// newShimCgroup returns the path of a cgroup that does not exist yet, which
// a cleanup removes after the test's containers are gone.
func newShimCgroup(t *testing.T) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	cg := "/mine-e2e-shim-" + hex.EncodeToString(b[:])
	mounts, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if p := filepath.Join(m.point, cg); exists(p) {
			t.Fatalf("%s exists before the test", p)
		}
	}
	// Registered before the container's, so it runs after it.
	t.Cleanup(func() {
		if err := removeCgroup(cg); err != nil {
			t.Errorf("remove the shim cgroup: %v", err)
		}
	})
	return cg
}

// checkShimCgroup runs a container with the ShimCgroup option cg and checks
// that its shim is in that cgroup, and its init not.
func (h *harness) checkShimCgroup(t *testing.T, cg string) {
	t.Helper()
	ns, id := defaultNamespace, newID(t)
	r := h.startTaskWith(t, ns, id, &options.Options{ShimCgroup: cg}, nil, "sleep", "1000")
	shims, err := shimPIDs(h.d.cfg.address(), h.shimExes, ns, id)
	if err != nil || len(shims) != 1 {
		t.Fatalf("shim of %s: %v (%v)", id, shims, err)
	}
	shim := shims[0]
	groups, err := procCgroups(shim)
	if err != nil {
		t.Fatal(err)
	}
	if cgroupUnified() {
		if groups[""] != cg {
			t.Errorf("shim (pid %d) is in cgroup %s, want %s", shim, groups[""], cg)
		}
	} else {
		var checked int
		for hier, path := range groups {
			if hier == "" || strings.HasPrefix(hier, "name=") {
				continue // the unified hierarchy of a hybrid host; named hierarchies
			}
			checked++
			if path != cg {
				t.Errorf("shim (pid %d) is in cgroup %s of hierarchy %s, want %s", shim, path, hier, cg)
			}
		}
		if checked == 0 {
			t.Errorf("shim (pid %d) shows no cgroup v1 controller: %v", shim, groups)
		}
	}
	// The container has its own cgroup.
	if init, err := procCgroups(int(r.task.Pid())); err == nil {
		for hier, path := range init {
			if path == cg {
				t.Errorf("the container's init is in the shim cgroup %s (hierarchy %q)", cg, hier)
			}
		}
	}
	r.killAndDelete(t)
}

func TestRuntimeOptionSystemdCgroupWithoutSystemd(t *testing.T) {
	h := requireHarness(t)
	if exists("/run/systemd/system") {
		t.Skip("systemd runs on this host: SystemdCgroup works here")
	}
	ns, id := defaultNamespace, newID(t)
	r := h.newContainerWith(t, ns, h.runtime, id, &options.Options{SystemdCgroup: true}, nil, "true")
	err := r.newTask(t)
	if err == nil {
		t.Fatal("create with SystemdCgroup succeeded on a host without systemd")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "systemd") {
		t.Errorf("create error %q does not mention systemd", err)
	}
	if h.runtime == runtimeMine && !errdefs.IsFailedPrecondition(err) {
		t.Errorf("create error %q is not FailedPrecondition", err)
	}
	h.assertNoTraces(t, ns, id, "")
}

// featuresWrapper is a runtime wrapper whose `features` answer is its own.
const (
	featuresMarker  = "1.0.99-mine-e2e"
	featuresWrapper = `if [ "$sub" = features ]; then
	echo '{"ociVersionMin":"1.0.0","ociVersionMax":"` + featuresMarker + `"}'
	exit 0
fi`
)

// TestShimInfo runs the shim with -info as containerd does (runtime options
// on stdin, a RuntimeInfo proto on stdout), and asks containerd for the
// runtime's info.
func TestShimInfo(t *testing.T) {
	h := requireHarness(t)
	shim := h.shimPath(h.runtime)
	if shim == "" {
		t.Skipf("no shim binary known for %s", h.runtime)
	}
	wrapper, _ := runtimeWrapper(t, featuresWrapper)

	runInfo := func(t *testing.T, opts *options.Options) *apitypes.RuntimeInfo {
		t.Helper()
		var stdin []byte
		if opts != nil {
			a, err := typeurl.MarshalAnyToProto(opts)
			if err != nil {
				t.Fatal(err)
			}
			if stdin, err = proto.Marshal(a); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), runtimeCmdTimeout)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, shim, "-info")
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s -info: %v: %s", shim, err, stderr.String())
		}
		var info apitypes.RuntimeInfo
		if err := proto.Unmarshal(out, &info); err != nil {
			t.Fatalf("%s -info output does not decode as RuntimeInfo: %v", shim, err)
		}
		if info.GetName() != h.runtime {
			t.Errorf("RuntimeInfo name %q, want %q", info.GetName(), h.runtime)
		}
		if info.GetVersion().GetVersion() == "" {
			t.Errorf("RuntimeInfo has no version: %v", info.GetVersion())
		}
		if opts != nil {
			v, err := typeurl.UnmarshalAny(info.GetOptions())
			if err != nil {
				t.Fatalf("decode RuntimeInfo options: %v", err)
			}
			if o, ok := v.(*options.Options); !ok || !proto.Equal(o, opts) {
				t.Errorf("RuntimeInfo options %v, want the options given %v", v, opts)
			}
		}
		return &info
	}
	decodeFeatures := func(t *testing.T, info *apitypes.RuntimeInfo) *features.Features {
		t.Helper()
		const wantType = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
		if got := info.GetFeatures().GetTypeUrl(); got != wantType {
			t.Fatalf("RuntimeInfo features of type %q, want %q", got, wantType)
		}
		var f features.Features
		if err := json.Unmarshal(info.GetFeatures().GetValue(), &f); err != nil {
			t.Fatalf("RuntimeInfo features do not decode as runtime-spec features: %v", err)
		}
		return &f
	}

	t.Run("runc", func(t *testing.T) {
		info := runInfo(t, &options.Options{BinaryName: "runc"})
		got := decodeFeatures(t, info)
		ctx, cancel := context.WithTimeout(context.Background(), runtimeCmdTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "runc", "features").Output()
		if err != nil {
			t.Skipf("runc features: %v: this runc has no features command", err)
		}
		var want features.Features
		if err := json.Unmarshal(out, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("RuntimeInfo features differ from `runc features`:\n got %+v\nwant %+v", *got, want)
		}
	})
	t.Run("BinaryName", func(t *testing.T) {
		if got := decodeFeatures(t, runInfo(t, &options.Options{BinaryName: wrapper})).OCIVersionMax; got != featuresMarker {
			t.Errorf("features ociVersionMax %q, want %q from the features of BinaryName %s", got, featuresMarker, wrapper)
		}
	})
	t.Run("no options", func(t *testing.T) {
		if f := decodeFeatures(t, runInfo(t, nil)); f.OCIVersionMax == "" {
			t.Errorf("features of the default runtime have no ociVersionMax: %+v", f)
		}
	})
	t.Run("containerd introspection", func(t *testing.T) {
		ctx := nsContext(t, defaultNamespace, opTimeout)
		info, err := h.client.RuntimeInfo(ctx, h.runtime, &options.Options{BinaryName: wrapper})
		if err != nil {
			t.Fatalf("containerd RuntimeInfo of %s: %v", h.runtime, err)
		}
		if info.Name != h.runtime {
			t.Errorf("RuntimeInfo name %q, want %q", info.Name, h.runtime)
		}
		f, ok := info.Features.(*features.Features)
		if !ok || f.OCIVersionMax != featuresMarker {
			t.Errorf("RuntimeInfo features %#v, want features with ociVersionMax %q", info.Features, featuresMarker)
		}
	})
}

// TestTaskAPIv2 runs a container with containerd talking the Task API v2
// to the shim. containerd 2.x uses its legacy start protocol for a shim
// binary named containerd-shim-runc-v1, to which the shim answers with
// version 2; the runtime is named by the absolute path of such a link.
func TestTaskAPIv2(t *testing.T) {
	h := requireHarness(t)
	if h.runtime != runtimeMine || h.shim == "" {
		t.Skipf("the runtime under test is %s, not %s", h.runtime, runtimeMine)
	}
	link := filepath.Join(t.TempDir(), "containerd-shim-runc-v1")
	if err := os.Symlink(h.shim, link); err != nil {
		t.Fatal(err)
	}
	ns, id := defaultNamespace, newID(t)
	rec := h.recordEvents(t, ns, id)
	r := h.newContainerWith(t, ns, link, id, nil, nil, "sh", "-c", "echo ready; exec sleep 1000")
	if err := r.newTask(t); err != nil {
		t.Fatalf("create task with runtime %s: %v", link, err)
	}
	r.start(t)
	r.out.waitFor(t, "ready", exitTimeout)

	var boot struct {
		Version int `json:"version"`
	}
	data, err := os.ReadFile(filepath.Join(h.bundleDir(ns, id), "bootstrap.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &boot); err != nil || boot.Version != 2 {
		t.Fatalf("bootstrap.json %s (%v): want version 2, the Task API v2", data, err)
	}

	ctx := nsContext(t, ns, opTimeout)
	if err := r.task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	r.wantStatus(t, client.Paused)
	if err := r.task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if pids, err := r.task.Pids(ctx); err != nil || len(pids) != 1 || pids[0].Pid != r.task.Pid() {
		t.Errorf("pids %v (%v), want the init %d", pids, err, r.task.Pid())
	}
	if m, err := r.task.Metrics(ctx); err != nil || m.Data == nil {
		t.Errorf("metrics %v: %v", m, err)
	}
	r.kill(t, syscall.SIGKILL)
	if code := r.wait(t); code != 137 {
		t.Errorf("exit status %d, want 137", code)
	}
	if code := r.delete(t); code != 137 {
		t.Errorf("delete exit status %d, want 137", code)
	}
	wantTopics(t, rec, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete")
	h.assertNoTraces(t, ns, id, "")
}

// TestRuntimeOptionIoUidGid checks that the pipes of the init's and of an
// exec's stdio belong to IoUid and IoGid. runc hands the owner uid over to
// the process's user (fixStdioPermissions) but keeps the group, so the
// group of /proc/self/fd/1 and 2 seen from inside is IoGid.
func TestRuntimeOptionIoUidGid(t *testing.T) {
	h := requireHarness(t)
	const uid, gid = 4321, 5432
	ns, id := defaultNamespace, newID(t)
	r := h.startTaskWith(t, ns, id, &options.Options{IoUid: uid, IoGid: gid}, nil,
		"sh", "-c", "stat -L -c %g /proc/self/fd/1 /proc/self/fd/2; echo done; exec sleep 1000")
	r.out.waitFor(t, "done\n", exitTimeout)

	ctx := nsContext(t, ns, opTimeout)
	spec, err := r.container.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps := *spec.Process
	ps.Args = []string{"sh", "-c", "stat -L -c %g /proc/self/fd/1 /proc/self/fd/2; echo done"}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	out := newOutputBuffer()
	p, err := r.task.Exec(ctx, "iogid-"+hex.EncodeToString(b[:]), &ps, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	exitC, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start exec: %v", err)
	}
	out.waitFor(t, "done\n", exitTimeout)
	select {
	case <-exitC:
	case <-ctx.Done():
		t.Fatalf("exec did not exit: %v", ctx.Err())
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatalf("delete exec: %v", err)
	}
	want := fmt.Sprintf("%[1]d\n%[1]d\ndone\n", gid)
	if got := r.out.String(); got != want {
		t.Errorf("groups of the init's stdout and stderr pipes: %q, want %q (IoGid)", got, want)
	}
	if got := out.String(); got != want {
		t.Errorf("groups of an exec's stdout and stderr pipes: %q, want %q (IoGid)", got, want)
	}
	r.killAndDelete(t)
}
