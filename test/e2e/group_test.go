package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/mineshim/mine/internal/mountfd"
)

// The tasks of a group deleted at the same time, as a kubelet removes a
// pod's containers, all get their delete answered, and the group's shim
// exits after the last (both runtimes). containerd sends the group's shim a
// Shutdown after each task's delete; the shim that finds no container left
// may be answering the delete of another task at that moment, and must
// answer it before it exits. The mine shim waits for its clients to hang up
// (cmd/containerd-shim-mine-v2/server.go: ttrpc's own Shutdown closes a
// connection whose first request is still being handled, which cut a
// delete here before the shim waited). containerd's runc shim exits without
// waiting: its failed deletes ("ttrpc: closed", seen once when a benchmark
// removed a group in parallel) are logged, not asserted.
func TestGroupParallelDelete(t *testing.T) {
	h := requireHarness(t)
	const tasks, rounds = 6, 4
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			var failed []string
			for round := range rounds {
				group := newID(t)
				hosts := make([]*execHost, tasks)
				for i := range hosts {
					hosts[i] = h.startHost(t, rt, fmt.Sprintf("%s-%d", group, i), cio.NullIO,
						oci.WithProcessArgs(sleeper...), oci.WithAnnotations(map[string]string{groupAnnotation: group}))
				}
				// One shim serves the group: it runs with the first
				// container's id, and no other container has one.
				var shim int
				for i, c := range hosts {
					pids, err := shimPIDs(h.d.cfg.address(), h.shimExes, c.ns, c.id)
					if err != nil {
						t.Fatal(err)
					}
					want := 0
					if i == 0 {
						want = 1
					}
					if len(pids) != want {
						t.Fatalf("group %s: %d shims run with id %s, want %d", group, len(pids), c.id, want)
					}
					if i == 0 {
						shim = pids[0]
					}
				}
				for _, c := range hosts {
					c.kill(t, syscall.SIGKILL)
				}
				for _, c := range hosts {
					c.waitInit(t)
				}
				ctxs := make([]context.Context, tasks)
				for i, c := range hosts {
					ctxs[i] = c.ctx(t, opTimeout)
				}
				errs := make([]error, tasks)
				var wg sync.WaitGroup
				for i, c := range hosts {
					wg.Go(func() { _, errs[i] = c.task.Delete(ctxs[i]) })
				}
				wg.Wait()
				for i, c := range hosts {
					if errs[i] != nil {
						failed = append(failed, fmt.Sprintf("round %d, %s: %v", round, c.id, errs[i]))
						continue
					}
					c.task = nil // deleted: the cleanup deletes the container only
				}
				if !pollUntil(cleanupTimeout, func() bool { return !pidAlive(shim) }) {
					t.Fatalf("the shim of group %s (pid %d) still runs %v after its tasks were deleted; failed deletes: %q",
						group, shim, cleanupTimeout, failed)
				}
			}
			if len(failed) == 0 {
				return
			}
			msg := fmt.Sprintf("%d of %d task deletes failed:\n%s", len(failed), tasks*rounds, strings.Join(failed, "\n"))
			if rt == runtimeRunc {
				t.Logf("containerd's runc shim (not asserted): %s", msg)
				return
			}
			t.Error(msg)
		})
	}
}

// A container deleted from a group leaves nothing of its rootfs behind in
// the shim that goes on serving the group (both runtimes): nothing mounted
// under its bundle when the delete returns, and soon after no descriptor of
// the shim's on a detached mount. (The mine shim detaches a lone overlay
// rootfs with its root held open and closes it after the reply, so that
// the overlay's teardown is not on the delete's path: pkg/process,
// detachRootfs.)
func TestGroupDeleteReleasesRootfs(t *testing.T) {
	h := requireHarness(t)
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			group := newID(t)
			hosts := make([]*execHost, 2)
			for i := range hosts {
				hosts[i] = h.startHost(t, rt, fmt.Sprintf("%s-%d", group, i), cio.NullIO,
					oci.WithProcessArgs(sleeper...), oci.WithAnnotations(map[string]string{groupAnnotation: group}))
			}
			pids, err := shimPIDs(h.d.cfg.address(), h.shimExes, hosts[0].ns, hosts[0].id)
			if err != nil || len(pids) != 1 {
				t.Fatalf("the group's shim: %v, %v", pids, err)
			}
			shim := pids[0]
			gone := hosts[1]
			bundle := h.bundleDir(gone.ns, gone.id)
			if m, err := mountsUnder(bundle); err != nil || len(m) == 0 {
				t.Fatalf("no rootfs mounted under %s before the delete (%v): the check below would see nothing", bundle, err)
			}
			gone.kill(t, syscall.SIGKILL)
			gone.waitInit(t)
			gone.delete(t)
			if m, err := mountsUnder(bundle); err != nil || len(m) != 0 {
				t.Fatalf("mounted under %s after the delete returned: %v, %v", bundle, m, err)
			}
			var held []string
			if !pollUntil(cleanupTimeout, func() bool {
				held, err = mountfd.Detached(shim)
				return err == nil && len(held) == 0
			}) {
				t.Fatalf("the group's shim (pid %d) still holds detached mounts %v after %v: %v", shim, held, cleanupTimeout, err)
			}
			if !pidAlive(shim) {
				t.Fatalf("the group's shim (pid %d) exited with a container left", shim)
			}
		})
	}
}
