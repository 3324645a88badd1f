package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
)

// kill -9 of the shim of a running container: containerd publishes the exit
// and the delete, `shim delete` cleans up, and nothing is left behind.
func TestShimKilled(t *testing.T) {
	h := requireHarness(t)
	const ns = "e2e-fault"
	id := newID(t)
	events := h.recordEvents(t, ns, id)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	tr := h.runningTraces(t, ns, id)
	if len(tr.ShimPIDs) != 1 {
		t.Fatalf("shims of %s: %v", id, tr.ShimPIDs)
	}
	if err := syscall.Kill(tr.ShimPIDs[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The client's Wait ends with the connection; containerd learns the
	// exit from `shim delete` and publishes it.
	got, err := events.waitFor("/tasks/delete", 15*time.Second)
	if err != nil {
		t.Fatalf("events %s: %v", topics(got), err)
	}
	var exit *apievents.TaskExit
	for _, e := range got {
		if x, ok := e.Event.(*apievents.TaskExit); ok && x.ID == id {
			exit = x
		}
	}
	if exit == nil {
		t.Fatalf("no /tasks/exit before /tasks/delete: %s", topics(got))
	}
	if exit.ExitStatus != 137 {
		t.Errorf("exit status after the shim died: %d, want 137", exit.ExitStatus)
	}
	ctx := nsContext(t, ns, opTimeout)
	if _, err := r.task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		t.Logf("task delete after the shim died: %v", err)
	}
	if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container: %v", err)
	}
	r.deleted = true
	h.assertNoTraces(t, ns, id, tr.Socket)
	// The container's process died with it (runc delete --force).
	if pids, _ := shimPIDs(h.d.cfg.address(), h.shimExes, ns, id); len(pids) != 0 {
		t.Errorf("shim processes left: %v", pids)
	}
}

// shimStats reads the open descriptors and (through SIGUSR1) the goroutine
// count of a shim daemon whose working directory is bundle.
func shimStats(t *testing.T, pid int, bundle string) (fds, goroutines int) {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	stacks := filepath.Join(bundle, "shim-stacks.txt")
	os.Remove(stacks)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(stacks)
		if err == nil {
			first, _, _ := strings.Cut(string(data), "\n")
			if n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutines ")); err == nil {
				return len(entries), n
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stack dump from shim %d", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Many create/start/exec/delete cycles through one shim (a group kept alive
// by an anchor container): its fd and goroutine counts stay flat, and no
// zombie is left under it.
func TestCyclesDoNotLeak(t *testing.T) {
	h := requireHarness(t)
	cycles := 200
	if s := os.Getenv("MINE_E2E_CYCLES"); s != "" {
		cycles, _ = strconv.Atoi(s)
	}
	const ns = "e2e-cycles"
	h.ensureImage(t, ns)
	group := newID(t)
	ctx := nsContext(t, ns, 10*time.Minute)
	image, err := h.client.GetImage(ctx, imageRef)
	if err != nil {
		t.Fatal(err)
	}
	newContainer := func(id string, args ...string) (client.Container, client.Task) {
		t.Helper()
		c, err := h.client.NewContainer(ctx, id,
			client.WithImage(image),
			client.WithSnapshotter(h.snapshotter),
			client.WithNewSnapshot(id+"-snapshot", image),
			client.WithRuntime(h.runtime, nil),
			client.WithContainerLabels(map[string]string{}),
			client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(args...),
				oci.WithAnnotations(map[string]string{"io.containerd.runc.v2.group": group})),
		)
		if err != nil {
			t.Fatalf("container %s: %v", id, err)
		}
		task, err := c.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatalf("task %s: %v", id, err)
		}
		return c, task
	}
	anchor, anchorTask := newContainer(group, "sleep", "1000")
	defer func() {
		anchorTask.Delete(ctx, client.WithProcessKill)
		anchor.Delete(ctx, client.WithSnapshotCleanup)
	}()
	if err := anchorTask.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pids, err := shimPIDs(h.d.cfg.address(), h.shimExes, ns, group)
	if err != nil || len(pids) != 1 {
		t.Fatalf("shim of group %s: %v %v", group, pids, err)
	}
	shim, bundle := pids[0], h.bundleDir(ns, group)

	cycle := func(i int) {
		id := fmt.Sprintf("%s-%d", group, i)
		c, task := newContainer(id, "sleep", "1000")
		exitC, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		spec, err := c.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Args = []string{"true"}
		p, err := task.Exec(ctx, "e", &pspec, cio.NullIO)
		if err != nil {
			t.Fatalf("exec in %s: %v", id, err)
		}
		pc, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatalf("exec start in %s: %v", id, err)
		}
		if st := <-pc; st.ExitCode() != 0 {
			t.Fatalf("exec in %s exited %d", id, st.ExitCode())
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if st := <-exitC; st.ExitCode() != 137 {
			t.Fatalf("%s exited %d", id, st.ExitCode())
		}
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Fatal(err)
		}
	}
	// Warm up: lazily created state (buffers, the first exec) is not a leak.
	for i := 0; i < 5; i++ {
		cycle(i)
	}
	fds0, g0 := shimStats(t, shim, bundle)
	for i := 5; i < 5+cycles; i++ {
		cycle(i)
	}
	fds1, g1 := shimStats(t, shim, bundle)
	t.Logf("after %d cycles: fds %d -> %d, goroutines %d -> %d", cycles, fds0, fds1, g0, g1)
	if fds1 > fds0+3 {
		t.Errorf("shim fds grew from %d to %d over %d cycles", fds0, fds1, cycles)
	}
	if g1 > g0+3 {
		t.Errorf("shim goroutines grew from %d to %d over %d cycles", g0, g1, cycles)
	}
	if z := zombiesOf(t, shim); len(z) > 0 {
		t.Errorf("zombie children of the shim: %v", z)
	}
}

// zombiesOf lists the zombie children of pid.
func zombiesOf(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// The shim's socket is 0600 in a 0700 directory, and a peer with another
// uid is refused even when it can reach the socket.
func TestSocketSecurity(t *testing.T) {
	h := requireHarness(t)
	const ns = "e2e-security"
	id := newID(t)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	defer func() {
		r.kill(t, syscall.SIGKILL)
		r.wait(t)
		r.delete(t)
	}()
	sock, err := shimSocket(h.bundleDir(ns, id))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket %s has mode %v, want 0600", sock, perm)
	}
	dst, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if perm := dst.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket directory has mode %v, want 0700", perm)
	}

	// Our own uid is served.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := v3.NewTTRPCTaskClient(c).Connect(cctx, &v3.ConnectRequest{ID: id}); err != nil {
		t.Fatalf("connect as the shim's uid: %v", err)
	}

	// Another uid, with the file modes opened up for it: a hard link of the
	// socket in a directory it can reach, the socket's mode 0666. The shim
	// itself must refuse it (the peer credentials of the connection).
	base := filepath.Dir(sock)
	for p := filepath.Dir(sock); p != "/"; p = filepath.Dir(p) {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o001 == 0 {
			base = filepath.Dir(p) // above the highest private directory
		}
	}
	dir, err := os.MkdirTemp(base, "mine-e2e-peer-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "sock")
	if err := os.Link(sock, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(sock, 0o600)
	for p := filepath.Dir(dir); p != "/"; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by others (%v): the probe cannot reach the socket", p, st.Mode().Perm())
		}
	}
	probe := filepath.Join(dir, "peerprobe")
	build := exec.Command("go", "build", "-o", probe, "./testdata/peerprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
	cmd := exec.Command(probe)
	cmd.Env = []string{"MINE_E2E_PEER_ID=" + id, "MINE_E2E_PEER_SOCKET=" + link}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe as uid 65534: %v\n%s", err, out)
	}
	t.Logf("probe as uid 65534: %s", out)
	if !strings.HasPrefix(string(out), "refused") || strings.Contains(string(out), "dial:") {
		t.Fatalf("a peer with another uid was not refused: %s", out)
	}
}
