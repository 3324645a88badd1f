package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// containerd killed with -9 in the middle of a create, a start or an exec,
// then restarted, many times: no container that was running is lost, no
// exit status is wrong, and nothing leaks once everything is deleted.
func TestContainerdKilledMidOperation(t *testing.T) {
	h := requireHarness(t)
	iterations := 50
	if s := os.Getenv("MINE_E2E_CRASH_ITERATIONS"); s != "" {
		iterations, _ = strconv.Atoi(s)
	}
	p := h.privateHarness(t, "killed-mid-op")
	const ns = "e2e-crash"
	p.ensureImage(t, ns)
	ops := []string{"create", "start", "exec"}
	for i := 0; i < iterations; i++ {
		op := ops[i%len(ops)]
		id := fmt.Sprintf("%s-%d-%s", op, i, newID(t)[len(newID(t))-8:])
		p.crashDuring(t, ns, id, op, time.Duration(rand.IntN(30))*time.Millisecond)
	}
}

// crashDuring runs op on a new container, kills containerd after delay,
// restarts it and checks what it finds.
func (p *harness) crashDuring(t *testing.T, ns, id, op string, delay time.Duration) {
	t.Helper()
	ctx := nsContext(t, ns, opTimeout)
	image, err := p.client.GetImage(ctx, imageRef)
	if err != nil {
		t.Fatal(err)
	}
	container, err := p.client.NewContainer(ctx, id,
		client.WithImage(image),
		client.WithSnapshotter(p.snapshotter),
		client.WithNewSnapshot(id+"-snapshot", image),
		client.WithRuntime(p.runtime, nil),
		client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("sleep", "1000")),
	)
	if err != nil {
		t.Fatalf("container %s: %v", id, err)
	}
	var task client.Task
	if op != "create" {
		if task, err = container.NewTask(ctx, cio.NullIO); err != nil {
			t.Fatalf("task %s: %v", id, err)
		}
	}
	if op == "exec" {
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	done := make(chan error, 1)
	go func() {
		switch op {
		case "create":
			_, err := container.NewTask(ctx, cio.NullIO)
			done <- err
		case "start":
			done <- task.Start(ctx)
		case "exec":
			spec, err := container.Spec(ctx)
			if err != nil {
				done <- err
				return
			}
			ps := *spec.Process
			ps.Args = []string{"sleep", "1000"}
			proc, err := task.Exec(ctx, "e", &ps, cio.NullIO)
			if err == nil {
				err = proc.Start(ctx)
			}
			done <- err
		}
	}()
	time.Sleep(delay) // fault injection: the moment of the crash varies
	if err := p.d.crash(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done: // the call ended with the connection, or had finished
	case <-time.After(opTimeout):
		t.Fatalf("%s of %s still running %v after containerd died", op, id, opTimeout)
	}
	if err := p.d.restart(); err != nil {
		t.Fatal(err)
	}
	p.connect(t)

	ctx = nsContext(t, ns, opTimeout)
	c, err := p.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("container %s lost after the restart: %v", id, err)
	}
	tk, err := c.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
		if op == "exec" {
			t.Errorf("%s: the running task was lost when containerd was killed during an exec", id)
		}
	case err != nil:
		t.Fatalf("task of %s after the restart: %v", id, err)
	default:
		st, err := tk.Status(ctx)
		if err != nil {
			t.Fatalf("status of %s after the restart: %v", id, err)
		}
		if op == "exec" && st.Status != client.Running {
			t.Errorf("%s: %s after the restart, want running", id, st.Status)
		}
		if st.Status == client.Running || st.Status == client.Created {
			exitC, err := tk.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := tk.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %s after the restart: %v", id, err)
			}
			select {
			case es := <-exitC:
				if es.ExitCode() != 137 {
					t.Errorf("%s: exit status %d after SIGKILL, want 137", id, es.ExitCode())
				}
			case <-time.After(exitTimeout):
				t.Fatalf("%s did not exit after SIGKILL", id)
			}
		}
		dctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		if _, err := tk.Delete(dctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			t.Fatalf("delete task %s: %v", id, err)
		}
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container %s: %v", id, err)
	}
	// A shim that containerd started but forgot in the crash (it died
	// between start and Create) exits by itself once it has been idle for
	// its orphan timeout (10 s); anything else goes at once.
	deadline := time.Now().Add(orphanBound)
	for {
		tr, err := p.traces(ns, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if tr.empty() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after deleting %s (containerd killed during %s), left: %v", orphanBound, id, op, tr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// orphanBound is how long a forgotten shim may take to exit by itself.
const orphanBound = 30 * time.Second
