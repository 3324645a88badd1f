package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// nullIOTimeout bounds the create of a task without stdio; it normally
// takes well under a second.
const nullIOTimeout = 10 * time.Second

// TestTaskWithoutStdio creates, starts, kills and deletes a long-running
// task that has no stdin, stdout or stderr at all: what CRI does for every
// pod's sandbox (pause) container, and what `ctr run --null-io` does.
func TestTaskWithoutStdio(t *testing.T) {
	h := requireHarness(t)
	ns := defaultNamespace
	h.ensureImage(t, ns)

	t.Run("client", func(t *testing.T) {
		id := newID(t)
		ctx := nsContext(t, ns, opTimeout)
		image, err := h.client.GetImage(ctx, imageRef)
		if err != nil {
			t.Fatal(err)
		}
		container, err := h.client.NewContainer(ctx, id,
			client.WithImage(image),
			client.WithSnapshotter(h.snapshotter),
			client.WithNewSnapshot(id+"-snapshot", image),
			client.WithRuntime(h.runtime, nil),
			client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("sleep", "1000")),
		)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), opTimeout)
			defer cancel()
			if task, err := container.Task(ctx, nil); err == nil {
				task.Delete(ctx, client.WithProcessKill)
			}
			container.Delete(ctx, client.WithSnapshotCleanup)
		})
		cctx, cancel := context.WithTimeout(ctx, nullIOTimeout)
		defer cancel()
		start := time.Now()
		task, err := container.NewTask(cctx, cio.NullIO)
		if err != nil {
			t.Fatalf("create of a task without stdio (as CRI creates sandbox containers): %v after %v", err, time.Since(start).Round(time.Millisecond))
		}
		exitC, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start: %v", err)
		}
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill: %v", err)
		}
		select {
		case st := <-exitC:
			if code, _, err := st.Result(); code != 137 || err != nil {
				t.Errorf("Wait status %d (%v), want 137", code, err)
			}
		case <-time.After(exitTimeout):
			t.Fatalf("no exit within %v of SIGKILL", exitTimeout)
		}
		if st, err := task.Delete(ctx); err != nil || st.ExitCode() != 137 {
			t.Errorf("task delete: exit status %d (%v), want 137", st.ExitCode(), err)
		}
		if err := container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Errorf("delete container: %v", err)
		}
		h.assertNoTraces(t, ns, id, "")
	})

	t.Run("ctr run --null-io", func(t *testing.T) {
		id := newID(t)
		args := []string{"-n", ns, "run", "--rm", "--null-io", "--runtime", h.runtime}
		if h.snapshotter != "overlayfs" {
			args = append(args, "--snapshotter", h.snapshotter)
		}
		ctx, cancel := context.WithTimeout(context.Background(), nullIOTimeout)
		defer cancel()
		out, code, err := h.runCtr(ctx, append(args, imageRef, id, "sh", "-c", "echo lost; exit 3")...)
		if err != nil || code != 3 || out != "" {
			t.Errorf("ctr run --null-io sh -c 'echo lost; exit 3': exit %d (%v), output %q; want 3 within %v, no output",
				code, err, out, nullIOTimeout)
		}
		h.assertNoTraces(t, ns, id, "")
	})
}
