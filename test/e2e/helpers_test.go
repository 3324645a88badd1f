package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
)

const (
	// ctrTimeout bounds one ctr invocation.
	ctrTimeout = 60 * time.Second
	// opTimeout bounds one client call sequence (create, start, delete).
	opTimeout = 30 * time.Second
	// exitTimeout bounds the wait for a container to exit.
	exitTimeout = 20 * time.Second
)

// runCtr runs ctr against the private containerd. err is set when ctr could
// not run or timed out, not for a non-zero exit code.
func (h *harness) runCtr(ctx context.Context, args ...string) (out string, code int, err error) {
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.ctrPath, append([]string{"--address", h.d.cfg.address()}, args...)...)
	cmd.Env = ctrEnv()
	cmd.WaitDelay = 5 * time.Second
	b, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return string(b), -1, fmt.Errorf("ctr %s: no exit within %v", strings.Join(args, " "), ctrTimeout)
	case errors.As(err, &exitErr):
		return string(b), exitErr.ExitCode(), nil
	case err != nil:
		return string(b), -1, err
	}
	return string(b), 0, nil
}

// ctrEnv is the environment of ctr: no CONTAINERD_* settings of the caller,
// and no deprecation warnings (cgroup v1 on these machines) mixed into the
// output of the container.
func ctrEnv() []string {
	return append(daemonEnv(nil), "CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1")
}

// ctr runs ctr with args and returns its combined output and exit code. It
// fails t when ctr cannot run or does not finish in time.
func (h *harness) ctr(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, code, err := h.runCtr(context.Background(), args...)
	if err != nil {
		t.Fatalf("%v\noutput:\n%s", err, out)
	}
	return out, code
}

// ctrRunArgs are the arguments of `ctr -n ns run --rm` of the test image
// with runtime rt. The snapshotter is named only when it is not ctr's
// default, so the command reads like the one users type.
func (h *harness) ctrRunArgs(ns, rt, id string, args ...string) []string {
	a := []string{"-n", ns, "run", "--rm", "--runtime", rt}
	if h.snapshotter != "overlayfs" {
		a = append(a, "--snapshotter", h.snapshotter)
	}
	return append(append(a, imageRef, id), args...)
}

// ctrRun runs `ctr run --rm` of the test image and returns the combined
// output and ctr's exit code, which is the container's.
func (h *harness) ctrRun(t *testing.T, ns, rt, id string, args ...string) (string, int) {
	t.Helper()
	h.ensureImage(t, ns)
	return h.ctr(t, h.ctrRunArgs(ns, rt, id, args...)...)
}

// ensureImage imports the test image into ns unless it is there already.
func (h *harness) ensureImage(t testing.TB, ns string) {
	t.Helper()
	if err := h.importImage(ns); err != nil {
		t.Fatal(err)
	}
}

var idUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// newID returns a container ID made from the test name and a random suffix,
// so runs never collide with state a crashed earlier run left behind.
func newID(t testing.TB) string {
	t.Helper()
	name := strings.Trim(idUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 48 {
		name = strings.Trim(name[len(name)-48:], "-")
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return name + "-" + hex.EncodeToString(b[:])
}

// nsContext returns a context in namespace ns bounded by timeout.
func nsContext(t testing.TB, ns string, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), timeout)
	t.Cleanup(cancel)
	return ctx
}

// taskRun is a container started through the Go client.
type taskRun struct {
	h         *harness
	ns, id    string
	container client.Container
	task      client.Task
	exitC     <-chan client.ExitStatus
	out       *outputBuffer
	deleted   bool
}

// startTask creates a container of the test image running args under
// runtime rt, creates its task, subscribes to its exit, and starts it. A
// cleanup kills and deletes what the test did not delete.
func (h *harness) startTask(t *testing.T, ns, rt, id string, args ...string) *taskRun {
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
		client.WithRuntime(rt, nil),
		client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(args...)),
	)
	if err != nil {
		t.Fatalf("create container %s: %v", id, err)
	}
	r := &taskRun{h: h, ns: ns, id: id, container: container, out: newOutputBuffer()}
	t.Cleanup(func() { r.cleanup(t) })

	r.task, err = container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, r.out, r.out)))
	if err != nil {
		t.Fatalf("create task %s with runtime %s: %v", id, rt, err)
	}
	// Wait before Start, so a fast exit cannot be missed.
	if r.exitC, err = r.task.Wait(ctx); err != nil {
		t.Fatalf("wait task %s: %v", id, err)
	}
	if err := r.task.Start(ctx); err != nil {
		t.Fatalf("start task %s: %v", id, err)
	}
	return r
}

// kill sends sig to the container's init process.
func (r *taskRun) kill(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := r.task.Kill(nsContext(t, r.ns, opTimeout), sig); err != nil {
		t.Fatalf("kill %s with %v: %v", r.id, sig, err)
	}
}

// wait returns the exit code that the client's Wait reports.
func (r *taskRun) wait(t *testing.T) uint32 {
	t.Helper()
	select {
	case st := <-r.exitC:
		code, _, err := st.Result()
		if err != nil {
			t.Fatalf("wait %s: %v", r.id, err)
		}
		return code
	case <-time.After(exitTimeout):
		t.Fatalf("container %s did not exit within %v; output so far:\n%s", r.id, exitTimeout, r.out.String())
	}
	return 0
}

// delete deletes the task and the container with its snapshot, and returns
// the exit status the task delete reported. The output is complete after it.
func (r *taskRun) delete(t *testing.T) uint32 {
	t.Helper()
	ctx := nsContext(t, r.ns, opTimeout)
	st, err := r.task.Delete(ctx)
	if err != nil {
		t.Fatalf("delete task %s: %v", r.id, err)
	}
	if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container %s: %v", r.id, err)
	}
	r.deleted = true
	return st.ExitCode()
}

// cleanup removes what a failed test left running.
func (r *taskRun) cleanup(t *testing.T) {
	if r.deleted {
		return
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), r.ns), opTimeout)
	defer cancel()
	if r.task != nil {
		if _, err := r.task.Delete(ctx, client.WithProcessKill); err != nil {
			t.Logf("cleanup: delete task %s: %v", r.id, err)
		}
	}
	if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Logf("cleanup: delete container %s: %v", r.id, err)
	}
}

// runTask runs args to completion through the Go client and returns the
// output and the exit code from Wait, checking that the task delete reports
// the same code.
func (h *harness) runTask(t *testing.T, ns, rt, id string, args ...string) (string, uint32) {
	t.Helper()
	r := h.startTask(t, ns, rt, id, args...)
	code := r.wait(t)
	if del := r.delete(t); del != code {
		t.Errorf("task delete reported exit status %d, Wait reported %d", del, code)
	}
	return r.out.String(), code
}

// outputBuffer collects container output and lets a test wait for a marker.
type outputBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer  // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced on each write
}

func newOutputBuffer() *outputBuffer {
	return &outputBuffer{changed: make(chan struct{})}
}

func (b *outputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.buf.Write(p)
}

func (b *outputBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the output contains marker.
func (b *outputBuffer) waitFor(t *testing.T, marker string, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		found, changed, out := strings.Contains(b.buf.String(), marker), b.changed, b.buf.String()
		b.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("output has no %q after %v; output:\n%s", marker, timeout, out)
		}
	}
}
