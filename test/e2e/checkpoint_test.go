package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
)

// criuCheckTimeout bounds `criu check`.
const criuCheckTimeout = 20 * time.Second

// checkpoint checkpoints the task of r with o through the client, which
// pauses the task around the checkpoint. The client also records a
// checkpoint image in containerd for runtimes other than runc's; it is
// deleted.
func (r *taskRun) checkpoint(t *testing.T, o *options.CheckpointOptions) error {
	t.Helper()
	ctx := nsContext(t, r.ns, opTimeout)
	img, err := r.task.Checkpoint(ctx, func(i *client.CheckpointTaskInfo) error {
		i.Options = o
		return nil
	})
	if err != nil {
		return err
	}
	if name := img.Name(); name != "" {
		if err := r.h.client.ImageService().Delete(ctx, name); err != nil {
			t.Errorf("delete checkpoint image %s: %v", name, err)
		}
	}
	return nil
}

// checkpointWrapper is a runtime wrapper that fakes runc checkpoint and
// restore. checkpoint: it saves its arguments in $dir/checkpoint.args and
// writes a fake image into --image-path. restore: it saves its arguments in
// $dir/restore.args and runs the container from scratch instead (runc run
// takes the same --bundle, --pid-file, --detach and --console-socket).
const checkpointWrapper = `case "$sub" in
checkpoint)
	printf '%s\n' "$@" >"$dir/checkpoint.args"
	img=$(arg --image-path "$@") || { echo "no --image-path" >&2; exit 1; }
	mkdir -p "$img" && echo fake >"$img/fake.img"
	exit $?
	;;
restore)
	printf '%s\n' "$@" >"$dir/restore.args"
	skip= first=1
	for a in "$@"; do
		if [ -n "$first" ]; then set --; first=; fi
		if [ -n "$skip" ]; then skip=; continue; fi
		case "$a" in
		restore) a=run ;;
		--image-path|--work-path|--parent-path|--manage-cgroups-mode|--empty-ns) skip=1; continue ;;
		--tcp-established|--ext-unix-sk|--shell-job|--file-locks) continue ;;
		esac
		set -- "$@" "$a"
	done
	;;
esac`

// TestCheckpointPlumbing checks what the shim asks of the runtime for a
// checkpoint and a restore requested through containerd, and the events,
// with a wrapper of runc that fakes checkpoint and restore (CRIU is not
// needed).
func TestCheckpointPlumbing(t *testing.T) {
	h := requireHarness(t)
	ns := defaultNamespace
	wrapper, dir := runtimeWrapper(t, checkpointWrapper)
	criuWork := filepath.Join(t.TempDir(), "criu-work")

	t.Run("leave running, work path from the runtime options", func(t *testing.T) {
		id := newID(t)
		rec := h.recordEvents(t, ns, id)
		r := h.startTaskWith(t, ns, id, &options.Options{BinaryName: wrapper, CriuWorkPath: criuWork}, nil, "sleep", "1000")
		img := filepath.Join(t.TempDir(), "image")
		if err := r.checkpoint(t, &options.CheckpointOptions{ImagePath: img}); err != nil {
			t.Fatalf("checkpoint: %v", err)
		}
		args := readArgs(t, filepath.Join(dir, "checkpoint.args"))
		work := criuWork
		if !h.expectMine(t, "it puts CriuWorkPath under the bundle") {
			work = ""
		}
		// Not asked to exit: the container keeps running.
		checkCheckpointArgs(t, args, id, img, work, "--leave-running")
		if !exists(filepath.Join(img, "fake.img")) {
			t.Errorf("no image in %s", img)
		}
		// The client pauses the task around the checkpoint.
		if h.expectMine(t, "it publishes no /tasks/checkpointed") {
			wantTopics(t, rec, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/checkpointed", "/tasks/resumed")
			events, _ := rec.waitFor("/tasks/checkpointed", eventTimeout)
			for _, e := range events {
				if c, ok := e.Event.(*apievents.TaskCheckpointed); ok && c.GetCheckpoint() != img {
					t.Errorf("TaskCheckpointed names checkpoint %q, want the image path %q", c.GetCheckpoint(), img)
				}
			}
		}
		r.wantStatus(t, client.Running)
		r.killAndDelete(t)
	})

	t.Run("exit, with every CRIU option", func(t *testing.T) {
		id := newID(t)
		r := h.startTaskWith(t, ns, id, &options.Options{BinaryName: wrapper, CriuWorkPath: criuWork}, nil, "sleep", "1000")
		img := filepath.Join(t.TempDir(), "image")
		work := filepath.Join(t.TempDir(), "work")
		parent := filepath.Join(t.TempDir(), "parent")
		err := r.checkpoint(t, &options.CheckpointOptions{
			ImagePath: img, WorkPath: work, ParentPath: parent, Exit: true,
			OpenTcp: true, ExternalUnixSockets: true, Terminal: true, FileLocks: true,
			EmptyNamespaces: []string{"network"}, CgroupsMode: "soft",
		})
		if err != nil {
			t.Fatalf("checkpoint: %v", err)
		}
		args := readArgs(t, filepath.Join(dir, "checkpoint.args"))
		extra := []string{"--parent-path", parent, "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
			"--empty-ns", "network"}
		if h.expectMine(t, "it does not pass CgroupsMode") {
			extra = append(extra, "--manage-cgroups-mode", "soft")
		}
		checkCheckpointArgs(t, args, id, img, work, extra...)
		if slices.Contains(args, "--leave-running") {
			t.Errorf("runtime checkpoint with --leave-running although the checkpoint options ask to exit: %q", args)
		}
		r.killAndDelete(t)
	})

	t.Run("restore at start", func(t *testing.T) {
		id := newID(t)
		rec := h.recordEvents(t, ns, id)
		img := filepath.Join(t.TempDir(), "image")
		if err := os.Mkdir(img, 0o755); err != nil {
			t.Fatal(err)
		}
		work := filepath.Join(t.TempDir(), "work")
		r := h.newContainerWith(t, ns, h.runtime, id, &options.Options{BinaryName: wrapper}, nil,
			"sh", "-c", "echo restored; exec sleep 1000")
		if err := r.newTask(t, client.WithRestoreImagePath(img), client.WithRestoreWorkPath(work)); err != nil {
			t.Fatalf("create task from checkpoint %s: %v", img, err)
		}
		if exists(filepath.Join(dir, "restore.args")) {
			t.Fatal("restored at create: the restore belongs to start")
		}
		r.start(t)
		r.out.waitFor(t, "restored", exitTimeout)
		args := readArgs(t, filepath.Join(dir, "restore.args"))
		want := map[string]string{"--image-path": img, "--work-path": work}
		for flag, v := range want {
			if got, ok := optionValue(args, flag); !ok || got != v {
				t.Errorf("runtime restore %s %q, want %q; arguments %q", flag, got, v, args)
			}
		}
		if !slices.Contains(args, "--detach") || args[len(args)-1] != id {
			t.Errorf("runtime restore arguments %q: want --detach and the container ID %s last", args, id)
		}
		r.wantStatus(t, client.Running)
		wantTopics(t, rec, "/tasks/create", "/tasks/start")
		events, _ := rec.waitFor("/tasks/start", eventTimeout)
		if c := events[0].Event.(*apievents.TaskCreate); c.GetCheckpoint() != img {
			t.Errorf("TaskCreate names checkpoint %q, want %q", c.GetCheckpoint(), img)
		}
		if s := events[1].Event.(*apievents.TaskStart); s.GetPid() == 0 || s.GetPid() != r.task.Pid() {
			t.Errorf("TaskStart pid %d, task pid %d: want the restored init's pid in both", s.GetPid(), r.task.Pid())
		}
		r.killAndDelete(t)
	})
}

// checkCheckpointArgs checks the arguments of a runtime checkpoint call:
// the command, image and work paths (work unless ""), the container ID
// last, and extra flags (each with its value, if any) somewhere.
func checkCheckpointArgs(t *testing.T, args []string, id, img, work string, extra ...string) {
	t.Helper()
	if !slices.Contains(args, "checkpoint") || args[len(args)-1] != id {
		t.Errorf("runtime arguments %q: want checkpoint ... %s", args, id)
	}
	for flag, v := range map[string]string{"--image-path": img, "--work-path": work} {
		if v == "" {
			continue
		}
		if got, ok := optionValue(args, flag); !ok || got != v {
			t.Errorf("runtime checkpoint %s %q, want %q; arguments %q", flag, got, v, args)
		}
	}
	joined := "\x00" + strings.Join(args, "\x00") + "\x00"
	for i := 0; i < len(extra); {
		// A flag and its value, or a flag alone.
		n := 1
		if i+1 < len(extra) && !strings.HasPrefix(extra[i+1], "--") {
			n = 2
		}
		if seq := "\x00" + strings.Join(extra[i:i+n], "\x00") + "\x00"; !strings.Contains(joined, seq) {
			t.Errorf("runtime checkpoint arguments %q lack %q", args, extra[i:i+n])
		}
		i += n
	}
}

// TestCheckpointFailureReportsRuntimeError makes the real runc fail a
// checkpoint (an empty namespace it does not know; runc refuses it before
// it runs CRIU): the client gets runc's error text, the task keeps running
// and no /tasks/checkpointed is published.
func TestCheckpointFailureReportsRuntimeError(t *testing.T) {
	h := requireHarness(t)
	ns, id := defaultNamespace, newID(t)
	rec := h.recordEvents(t, ns, id)
	r := h.startTask(t, ns, h.runtime, id, "sleep", "1000")
	const bogus = "mine-e2e-no-such-namespace"
	err := r.checkpoint(t, &options.CheckpointOptions{
		ImagePath:       filepath.Join(t.TempDir(), "image"),
		EmptyNamespaces: []string{bogus},
	})
	if err == nil {
		t.Fatal("checkpoint with an unknown empty namespace succeeded")
	}
	if !strings.Contains(err.Error(), bogus) {
		t.Errorf("checkpoint error %q does not carry runc's error (which names %q)", err, bogus)
	}
	r.wantStatus(t, client.Running)
	wantTopics(t, rec, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed")
	r.killAndDelete(t)
}

var counterLine = regexp.MustCompile(`(?m)^n=(\d+)$`)

// counterValues returns the values a counter container printed, in order.
func counterValues(out string) []int {
	var vals []int
	for _, m := range counterLine.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		vals = append(vals, v)
	}
	return vals
}

// TestCheckpointRestore checkpoints a counter with CRIU, restores it into a
// new container, and checks that the count goes on from where it stopped.
// It skips when CRIU is missing or cannot dump on this kernel.
func TestCheckpointRestore(t *testing.T) {
	h := requireHarness(t)
	if _, err := exec.LookPath("criu"); err != nil {
		t.Skip("criu not found in PATH (Debian package criu; hack/install-deps.sh installs it)")
	}
	ns := defaultNamespace
	counter := []string{"sh", "-c", `i=0; while :; do i=$((i+1)); echo "n=$i"; usleep 20000; done`}

	id := newID(t)
	r := h.startTask(t, ns, h.runtime, id, counter...)
	r.out.waitFor(t, "n=5\n", exitTimeout)
	img := filepath.Join(t.TempDir(), "image")
	work := t.TempDir()
	err := r.checkpoint(t, &options.CheckpointOptions{ImagePath: img, WorkPath: work, Exit: true})
	if err != nil {
		// runc says "criu failed: ... log file: WORK/dump.log".
		if !strings.Contains(strings.ToLower(err.Error()), "criu") {
			t.Errorf("checkpoint error %q does not carry runc's error text (which names criu)", err)
		}
		if reason := criuUnusable(work); reason != "" {
			t.Skipf("CRIU cannot checkpoint on this host: %s; the checkpoint failed with: %v", reason, err)
		}
		t.Fatalf("checkpoint: %v\nCRIU log:\n%s", err, criuLogErrors(work))
	}
	// Exit: the checkpoint stopped the container.
	r.wait(t)
	r.delete(t) // the output is complete after it
	before := counterValues(r.out.String())
	if len(before) < 5 {
		t.Fatalf("the counter printed %v before the checkpoint, want at least 1..5", before)
	}
	last := before[len(before)-1]

	id2 := newID(t)
	r2 := h.newContainerWith(t, ns, h.runtime, id2, nil, nil, counter...)
	if err := r2.newTask(t, client.WithRestoreImagePath(img), client.WithRestoreWorkPath(t.TempDir())); err != nil {
		t.Fatalf("create task %s from checkpoint %s: %v", id2, img, err)
	}
	r2.start(t)
	r2.out.waitFor(t, fmt.Sprintf("n=%d\n", last+3), exitTimeout)
	after := counterValues(r2.out.String())
	if len(after) == 0 || after[0] != last+1 {
		t.Errorf("the restored counter printed %v; the original stopped at %d, want it to go on with %d", after, last, last+1)
	}
	r2.killAndDelete(t)
}

// criuUnusable says why CRIU cannot checkpoint here, from the log of the
// failed dump in work and `criu check`, or "" when nothing says so.
func criuUnusable(work string) string {
	var reasons []string
	if errs := criuLogErrors(work); strings.Contains(strings.ToLower(errs), "vdso") {
		reasons = append(reasons, "dump.log: "+errs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), criuCheckTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "criu", "check").CombinedOutput()
	if err != nil {
		reasons = append(reasons, fmt.Sprintf("`criu check` fails (%v): %s", err, lastLines(strings.TrimSpace(string(out)), 5)))
	}
	if len(reasons) > 0 {
		if v, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
			reasons = append(reasons, "kernel "+strings.TrimSpace(string(v)))
		}
	}
	return strings.Join(reasons, "; ")
}

// criuLogErrors returns the error lines of CRIU's dump log in work.
func criuLogErrors(work string) string {
	data, err := os.ReadFile(filepath.Join(work, "dump.log"))
	if errors.Is(err, os.ErrNotExist) {
		return "(no dump.log)"
	}
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "Error") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return strings.Join(lines, " | ")
}

// noProcessDeleteBound bounds the delete of a task that never had a
// process. The shim waits up to 5 s for the exit of an init it killed, but
// such a task has no init to wait for: its delete takes milliseconds, and
// a delete that waited takes 5 s at least. The bound sits just below, so
// that a loaded machine has all the room there is.
const noProcessDeleteBound = 4500 * time.Millisecond

// TestRestoreFailure creates tasks from a checkpoint image that runc cannot
// restore (an empty directory): the start fails with the runtime's error,
// and the task, which never had a process, is deleted at once, with
// /tasks/create and /tasks/delete only, leaving nothing behind.
func TestRestoreFailure(t *testing.T) {
	h := requireHarness(t)
	ns := defaultNamespace
	for _, start := range []bool{true, false} {
		name := "start fails"
		if !start {
			name = "never started"
		}
		t.Run(name, func(t *testing.T) {
			id := newID(t)
			rec := h.recordEvents(t, ns, id)
			img := t.TempDir()
			r := h.newContainerWith(t, ns, h.runtime, id, nil, nil, "sleep", "1000")
			if err := r.newTask(t, client.WithRestoreImagePath(img)); err != nil {
				t.Fatalf("create task from checkpoint %s: %v", img, err)
			}
			ctx := nsContext(t, ns, opTimeout)
			if start {
				err := r.task.Start(ctx)
				if err == nil {
					t.Fatalf("restore from the empty directory %s succeeded", img)
				}
				if !strings.Contains(err.Error(), "restore") {
					t.Errorf("start error %q does not say that the restore failed", err)
				}
				r.wantStatus(t, client.Created)
			}
			begin := time.Now()
			if _, err := r.task.Delete(ctx); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if d := time.Since(begin); d > noProcessDeleteBound {
				t.Errorf("the delete of a task that never had a process took %v, want less than %v", d.Round(time.Millisecond), noProcessDeleteBound)
			}
			if err := r.container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
				t.Fatalf("delete container: %v", err)
			}
			r.deleted = true
			wantTopics(t, rec, "/tasks/create", "/tasks/delete")
			h.assertNoTraces(t, ns, id, "")
		})
	}
}
