package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mineshim/mine/pkg/minimgr"
)

// processesOf returns the pids of the processes whose command line names
// the test's state root: shims (-address ROOT/minimgr.sock), loggers
// (ROOT/NS/ID/io/...) and removers (--state-dir ROOT) of minimgr.
func (e *env) processesOf() []int {
	e.t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		if bytes.Contains(cmdline, []byte(e.root+"/")) || bytes.Contains(cmdline, []byte(e.root+"\x00")) {
			out = append(out, pid)
		}
	}
	return out
}

// assertNoProcesses fails when a process of the test's state root is left.
func (e *env) assertNoProcesses() {
	e.t.Helper()
	if ps := e.processesOf(); len(ps) != 0 {
		var desc []string
		for _, p := range ps {
			b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "cmdline"))
			desc = append(desc, strconv.Itoa(p)+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
		e.t.Errorf("processes left:\n%s", strings.Join(desc, "\n"))
	}
}

// TestReuseIDRightAfterDelete (bug 1): an ID deleted with -f is taken again
// at once; the new container must work and no shim may be left.
func TestReuseIDRightAfterDelete(t *testing.T) {
	e := newEnv(t, true)
	for i := range 10 {
		e.mustRun("run", "-d", e.bundle, "r", "sleep", "100")
		e.mustRun("delete", "-f", "r")
		e.mustRun("run", "-d", e.bundle, "r", "sleep", "100")
		if got := e.list()["r"]; got.Status != minimgr.StatusRunning {
			t.Fatalf("round %d: list says %+v", i, got)
		}
		e.mustRun("delete", "-f", "r")
	}
	e.assertNoLeftovers("r")
	e.assertNoProcesses()
}

// TestRunRemoveCycles (bug 1): run --rm and run/delete reusing one ID, with
// no shim, logger or remover left behind.
func TestRunRemoveCycles(t *testing.T) {
	e := newEnv(t, true)
	n := 200
	if testing.Short() {
		n = 20
	}
	for i := range n {
		if i%2 == 0 {
			if r := e.run(nil, "run", "--rm", e.bundle, "cyc", "true"); r.code != 0 {
				t.Fatalf("cycle %d: run --rm: exit %d: %s", i, r.code, r.stderr)
			}
			continue
		}
		e.mustRun("run", "-d", e.bundle, "cyc", "true")
		e.mustRun("wait", "cyc")
		e.mustRun("delete", "cyc")
	}
	e.assertNoLeftovers("cyc")
	e.assertNoProcesses()
}

// TestRunOutputReaderGone (bug 2): `run --rm ... | head -1`: minimgr must not
// die of SIGPIPE, the container must not block on output nobody reads, and
// --rm must be honoured.
func TestRunOutputReaderGone(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	run := e.command(ctx, "run", "--rm", e.bundle, "pipe", "sh", "-c", "seq 1 100000")
	out, err := run.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	run.Stderr = &stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	if l := readLine(t, bufio.NewReader(out), 20*time.Second); l != "1" {
		t.Fatalf("first line %q", l)
	}
	out.Close() // what head does after its line
	err = run.Wait()
	if ctx.Err() != nil {
		t.Fatalf("minimgr did not end: %s", stderr.String())
	}
	var ee interface{ Sys() any }
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("minimgr died of %v", ws.Signal())
		}
	}
	if code := run.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d, want the container's 0 (stderr %q)", code, stderr.String())
	}
	e.assertNoLeftovers("pipe")
	e.assertNoProcesses()
}

// TestTerminalWithoutTerminal (bug 3): -t with a stdin that is not a
// terminal is refused at once, clearly, as docker does.
func TestTerminalWithoutTerminal(t *testing.T) {
	e := newEnv(t, true)
	r := e.run(strings.NewReader("x\n"), "run", "--rm", "-t", e.bundle, "tty", "sh")
	if r.code != exitOwnError || !strings.Contains(r.stderr, "not a terminal") {
		t.Errorf("exit %d, stderr %q: want %d and 'not a terminal'", r.code, r.stderr, exitOwnError)
	}
	e.assertNoLeftovers("tty")
}

// TestExecIDReuse (bug 4): the ID of a finished detached exec, or of an
// attached one whose client was killed, can be used again, and the exit
// status of a detached exec can be read.
func TestExecIDReuse(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "c", "sleep", "1000")
	defer e.run(nil, "delete", "-f", "c")

	e.mustRun("exec", "-d", "--exec-id", "e1", "c", "sh", "-c", "exit 7")
	r := e.run(nil, "wait", "--exec", "e1", "c")
	if r.code != 7 || strings.TrimSpace(r.stdout) != "7" {
		t.Errorf("wait --exec e1: exit %d, stdout %q, stderr %q: want 7", r.code, r.stdout, r.stderr)
	}
	e.mustRun("exec", "-d", "--exec-id", "e1", "c", "true")
	// The ID is free once that exec has exited, not while it may still run.
	if r := e.run(nil, "wait", "--exec", "e1", "c"); r.code != 0 {
		t.Errorf("wait --exec e1: exit %d, stderr %q: want 0", r.code, r.stderr)
	}
	if r := e.run(nil, "exec", "--exec-id", "e1", "c", "sh", "-c", "exit 4"); r.code != 4 {
		t.Errorf("attached exec with a used ID: exit %d (%s)", r.code, r.stderr)
	}
	// The ID of an exec that runs is refused, and that exec is left alone.
	e.mustRun("exec", "-d", "--exec-id", "e3", "c", "sleep", "1000")
	if r := e.run(nil, "exec", "--exec-id", "e3", "c", "true"); r.code != exitOwnError || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("exec with the ID of a running exec: exit %d, stderr %q: want %d and 'already exists'", r.code, r.stderr, exitOwnError)
	}
	e.mustRun("kill", "-s", "KILL", "--exec", "e3", "c")
	if r := e.run(nil, "wait", "--exec", "e3", "c"); r.code != 137 {
		t.Errorf("wait --exec e3 after SIGKILL: exit %d (%s), want 137", r.code, r.stderr)
	}

	// An attached exec whose client is killed.
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	ex := e.command(ctx, "exec", "--exec-id", "e2", "c", "sh", "-c", "echo ready; sleep 1; exit 3")
	out, err := ex.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ex.Start(); err != nil {
		t.Fatal(err)
	}
	if l := readLine(t, bufio.NewReader(out), 20*time.Second); l != "ready" {
		t.Fatalf("exec said %q", l)
	}
	_ = ex.Process.Kill()
	_ = ex.Wait()
	if r := e.run(nil, "wait", "--exec", "e2", "c"); r.code != 3 {
		t.Errorf("wait --exec e2: exit %d (%s)", r.code, r.stderr)
	}
	if r := e.run(nil, "exec", "--exec-id", "e2", "c", "true"); r.code != 0 {
		t.Errorf("exec e2 again: exit %d (%s)", r.code, r.stderr)
	}
}

// TestStatsTable (bug 5): stats prints a table, not base64.
func TestStatsTable(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "st", "sleep", "1000")
	defer e.run(nil, "delete", "-f", "st")
	r := e.mustRun("stats", "--no-stream", "st")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("stats: %q", r.stdout)
	}
	for _, col := range []string{"ID", "CPU", "MEM USAGE / LIMIT", "PIDS"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q lacks %q", lines[0], col)
		}
	}
	f := strings.Fields(lines[1])
	if len(f) < 2 || f[0] != "st" || strings.Contains(r.stdout, "type_url") {
		t.Errorf("row %q", lines[1])
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[1]), " 1") {
		t.Errorf("row %q: want 1 pid last", lines[1])
	}
}

// TestDeleteDeadWithoutForce (bug 5): delete without -f of a container whose
// shim does not answer refuses and touches nothing; -f ends the shim too.
func TestDeleteDeadWithoutForce(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "dd", "sleep", "1000")
	info := e.state("dd")
	initFD, shimFD := pidfd(t, info.Pid), pidfd(t, info.ShimPid)
	if err := syscall.Kill(info.ShimPid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(info.ShimPid, syscall.SIGCONT)
	if got := e.list()["dd"]; got.Status != minimgr.StatusDead {
		t.Fatalf("list: %+v, want dead", got)
	}
	if r := e.run(nil, "delete", "dd"); r.code == 0 {
		t.Errorf("delete without -f of a dead container succeeded")
	}
	if exited(initFD, 0) || exited(shimFD, 0) {
		t.Fatal("delete without -f killed the container or its shim")
	}
	if _, err := os.Stat(filepath.Join(e.root, e.ns, "dd")); err != nil {
		t.Fatalf("delete without -f removed the state: %v", err)
	}
	e.mustRun("delete", "-f", "dd")
	if !exited(initFD, 10*time.Second) || !exited(shimFD, 10*time.Second) {
		t.Error("delete -f left the container or its shim")
	}
	e.assertNoLeftovers("dd")
	e.assertNoProcesses()
}

// TestRunRemoveClientKilled (bug 5): run --rm whose client is killed -9:
// the container is removed once it exits, all the same.
func TestRunRemoveClientKilled(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	e.killReadyRun(ctx, "rmk", nil)
	// The container still runs, waiting for a line: end it.
	e.mustRun("kill", "-s", "KILL", "rmk")
	e.waitRemoved("rmk")
	e.assertNoLeftovers("rmk")
	for deadline := time.Now().Add(10 * time.Second); len(e.processesOf()) != 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	e.assertNoProcesses()
}

// TestRunRemoveClientKilledDuringStart: the client of run --rm is killed
// while the shim still reports the container created, its process already
// running (runc start has not returned: here it lingers 2 s, as on a loaded
// machine). The remover must not take it for a container that was never
// started and force-delete it: the container runs on, and is removed once
// it exits.
func TestRunRemoveClientKilledDuringStart(t *testing.T) {
	e := newEnv(t, true)
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not in PATH")
	}
	dir := t.TempDir()
	script := "#!/bin/sh\n" + runc + " \"$@\"\nrc=$?\nfor a in \"$@\"; do [ \"$a\" = start ] && sleep 2; done\nexit $rc\n"
	if err := os.WriteFile(filepath.Join(dir, "runc"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	e.killReadyRun(ctx, "rks", []string{"PATH=" + dir + ":" + os.Getenv("PATH")}, func() {
		if got := e.list()["rks"]; got.Status != minimgr.StatusCreated {
			t.Fatalf("while runc start lingers: %+v, want created", got)
		}
	})
	// Once the start has returned, the container runs, waiting for a line.
	var got minimgr.Info
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = e.list()["rks"]; got.Status != minimgr.StatusCreated {
			break
		}
	}
	if got.Status != minimgr.StatusRunning {
		t.Fatalf("after the client was killed during the start: %+v, want running", got)
	}
	e.mustRun("kill", "-s", "KILL", "rks")
	e.waitRemoved("rks")
	e.assertNoLeftovers("rks")
}

// killReadyRun runs `run --rm` of container id with sh reading a line after
// it said "ready", the client's environment extended by env; once ready,
// it calls each of before, then kills the client with SIGKILL.
func (e *env) killReadyRun(ctx context.Context, id string, env []string, before ...func()) {
	e.t.Helper()
	run := e.command(ctx, "run", "--rm", e.bundle, id, "sh", "-c", "echo ready; read x; exit 0")
	if env != nil {
		run.Env = append(os.Environ(), env...)
	}
	in, err := run.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	defer in.Close()
	out, err := run.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := run.Start(); err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = run.Process.Kill(); _ = run.Wait() }()
	if l := readLine(e.t, bufio.NewReader(out), 20*time.Second); l != "ready" {
		e.t.Fatalf("run said %q", l)
	}
	for _, f := range before {
		f()
	}
}

// TestRemoverDeletesNeverStarted: the client of run --rm dies after its
// Create, before any Start. The remover waits its settle time (shortened
// here from the minute) for a start under way to show, then force-deletes
// the container, which would otherwise stay created for good. While the
// client lives, the container is left to it.
func TestRemoverDeletesNeverStarted(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("create", e.bundle, "nvs", "true")
	client := exec.Command("sleep", "1000")
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Process.Kill(); _ = client.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	const settle = time.Second
	remover := e.command(ctx, removerCommand, "--client-pid", strconv.Itoa(client.Process.Pid), "--start-settle", settle.String(), "nvs")
	var stderr bytes.Buffer
	remover.Stderr = &stderr
	if err := remover.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- remover.Wait() }()
	time.Sleep(2 * settle)
	if got := e.list()["nvs"]; got.Status != minimgr.StatusCreated {
		t.Fatalf("with its client alive: %+v, want created", got)
	}
	_ = client.Process.Kill()
	_ = client.Wait()
	gone := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("remover: %v: %s", err, stderr.Bytes())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the remover still runs 20 s after its client died: %v", e.list())
	}
	if took := time.Since(gone); took < settle {
		t.Errorf("the remover ended %s after the client died, before the settle time %s", took, settle)
	}
	if _, err := os.Stat(filepath.Join(e.root, e.ns, "nvs")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the remover left the container: %v", e.list())
	}
	e.assertNoLeftovers("nvs")
	for deadline := time.Now().Add(10 * time.Second); len(e.processesOf()) != 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	e.assertNoProcesses()
}

// TestRunRemoveRelativeStateDir: run --rm with a relative --state-dir. The
// remover runs from / and must find the state where the client did.
func TestRunRemoveRelativeStateDir(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, minimgrBin, "--state-dir", filepath.Base(e.root), "--namespace", e.ns,
		"--runtime-binary", shimBin, "run", "-d", "--rm", e.bundle, "rel", "true")
	cmd.Dir = filepath.Dir(e.root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run: %v: %s", err, out)
	}
	e.waitRemoved("rel")
	e.assertNoLeftovers("rel")
}

// TestRemoverClientGoneBeforeIt: the client of run --rm was killed before
// its remover began. The remover takes it for gone (it cannot follow a pid
// that no longer exists), and a container that stays created goes.
func TestRemoverClientGoneBeforeIt(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("create", e.bundle, "cgb", "true")
	client := exec.Command("true")
	if err := client.Run(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	remover := e.command(ctx, removerCommand, "--client-pid", strconv.Itoa(client.Process.Pid), "--start-settle", "1s", "cgb")
	done := make(chan error, 1)
	go func() { done <- remover.Run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("remover: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the remover of a created container whose client was already gone still runs: %v", e.list())
	}
	e.assertNoLeftovers("cgb")
}

// TestCreateKilledDuringShimStart: minimgr is killed while its `shim start`
// runs, and that start then fails: the state has a record but no shim
// address. The ID is not stuck: list says dead, delete -f and cleanup
// remove it, and run takes it again.
func TestCreateKilledDuringShimStart(t *testing.T) {
	e := newEnv(t, true)
	wrapper := filepath.Join(t.TempDir(), "shim")
	script := "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = start ] && { sleep 2; exit 1; }; done\nexec " + shimBin + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	run := exec.CommandContext(ctx, minimgrBin, "--state-dir", e.root, "--namespace", e.ns, "--runtime-binary", wrapper,
		"run", "-d", e.bundle, "ks", "true")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	_ = run.Process.Kill()
	_ = run.Wait()
	time.Sleep(1500 * time.Millisecond) // the wrapper's start fails meanwhile
	if got := e.list()["ks"]; got.Status != minimgr.StatusDead {
		t.Errorf("list: %+v, want dead", got)
	}
	e.mustRun("delete", "-f", "ks")
	e.assertNoLeftovers("ks")
	e.mustRun("run", "-d", e.bundle, "ks", "true")
	e.mustRun("wait", "ks")
	e.mustRun("delete", "ks")
	e.assertNoLeftovers("ks")
}

// waitRemoved waits (20 s at most) until the state of container id is gone.
func (e *env) waitRemoved(id string) {
	e.t.Helper()
	dir := filepath.Join(e.root, e.ns, id)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("state of %s still there: %v", id, e.list())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStopIgnoringSIGTERM (bug 6): stop on a PID 1 that ignores SIGTERM
// returns after -t with SIGKILL; wait prints the status.
func TestStopIgnoringSIGTERM(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "c2", "sleep", "1000")
	e.waitRuns("c2", "sleep")
	start := time.Now()
	e.mustRun("stop", "-t", "1", "c2")
	if d := time.Since(start); d < time.Second {
		t.Errorf("stop returned after %s, before its -t", d)
	}
	r := e.run(nil, "wait", "c2")
	if r.code != 137 || strings.TrimSpace(r.stdout) != "137" {
		t.Errorf("wait: exit %d, stdout %q", r.code, r.stdout)
	}
	e.mustRun("delete", "c2")
	e.assertNoLeftovers("c2")
}

// TestDetachedLifecycleBothShims: the detached lifecycle (log, stop of a
// PID 1 that ignores SIGTERM, wait, delete, the ID taken again at once, no
// process left) through our shim and through containerd's runc shim.
func TestDetachedLifecycleBothShims(t *testing.T) {
	for _, tc := range bothShims() {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(tc.shim)
			for round := range 3 {
				e.mustRun("run", "-d", e.bundle, "bs", "sh", "-c", "echo hi; exec sleep 1000")
				if got := e.list()["bs"]; got.Status != minimgr.StatusRunning {
					t.Fatalf("round %d: %+v", round, got)
				}
				e.waitRuns("bs", "sleep")
				e.mustRun("stop", "-t", "1", "bs")
				if r := e.run(nil, "wait", "bs"); r.code != 137 {
					t.Errorf("round %d: wait %d (%s)", round, r.code, r.stderr)
				}
				if r := e.mustRun("logs", "bs"); r.stdout != "hi\n" {
					t.Errorf("round %d: logs %q", round, r.stdout)
				}
				e.mustRun("delete", "bs")
			}
			e.assertNoLeftovers("bs")
			e.assertNoProcesses()
		})
	}
}

// TestRunUnreadStdin: 300 KB of stdin that the container never reads (`head
// -c 300000 /dev/zero | minimgr run --rm B x true`) must not wedge the
// container: the run ends with the container's status, --rm removes it and
// the shim is gone.
func TestRunUnreadStdin(t *testing.T) {
	e := newEnv(t, true)
	r := e.run(bytes.NewReader(make([]byte, 300000)), "run", "--rm", e.bundle, "unread", "true")
	if r.code != 0 {
		t.Fatalf("exit %d, want 0\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	e.assertNoLeftovers("unread")
	e.assertNoProcesses()
}

// runcInPath puts a script, as runc, first in the PATH of e's commands and
// the shims they start: format with the real runc's path as its first
// argument, then args. It skips when there is no runc.
func (e *env) runcInPath(format string, args ...any) {
	e.t.Helper()
	realRunc, err := exec.LookPath("runc")
	if err != nil {
		e.t.Skip("needs runc in PATH")
	}
	dir := e.t.TempDir()
	script := fmt.Sprintf(format, append([]any{realRunc}, args...)...)
	if err := os.WriteFile(filepath.Join(dir, "runc"), []byte(script), 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.environ = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
}

// slowKillRunc is a runc that answers `kill` only a while after it has
// signalled, as a loaded machine may: the container's exit, and the removal
// that `run -d --rm` makes of it, can then come while the Kill call that
// caused them is still in flight.
const slowKillRunc = `#!/bin/sh
for a in "$@"; do
	if [ "$a" = kill ]; then %[1]q "$@"; rc=$?; sleep %[2]d; exit $rc; fi
done
exec %[1]q "$@"
`

// TestKillAnsweredWhileRemoved: `minimgr kill` of a `run -d --rm`
// container gets its answer although the container is removed (Delete,
// Shutdown, the shim's end) before the shim has answered: the removal does
// not end the shim under a call in flight. containerd's runc shim answers
// too: it records the exit only once the Kill has returned.
func TestKillAnsweredWhileRemoved(t *testing.T) {
	// Seconds after the signal: longer than the 3 s the shim gives its
	// clients to hang up once told to shut down.
	const answerAfter = 4
	for _, tc := range bothShims() {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(tc.shim)
			e.runcInPath(slowKillRunc, answerAfter)

			e.mustRun("run", "-d", "--rm", e.bundle, "slowkill", "sleep", "1000")
			begin := time.Now()
			r := e.run(nil, "kill", "-s", "KILL", "slowkill")
			took := time.Since(begin)
			if r.code != 0 {
				t.Errorf("kill: exit %d after %s: %s", r.code, took, r.stderr)
			}
			e.waitRemoved("slowkill")
			e.assertNoLeftovers("slowkill")
			e.assertNoProcesses()
		})
	}
}

// lateExecRunc is a runc whose `start` returns before the container's init
// has been told to exec its program, which it is a moment later: a wider
// window of what a real `runc start` leaves, which returns once runc's init
// was told and before that init has exec'd.
const lateExecRunc = `#!/bin/sh
for a in "$@"; do
	if [ "$a" = start ]; then (sleep 0.3; %[1]q "$@"; : > %[2]q) >/dev/null 2>&1 & exit 0; fi
done
exec %[1]q "$@"
`

// trapTerm is a container program that exits 42 on SIGTERM.
var trapTerm = []string{"sh", "-c", `trap "exit 42" TERM; while :; do sleep 0.1; done`}

// TestSignalBeforeExec: a SIGTERM sent right after Start, before runc's
// init has exec'd the container's program, reaches the program: it exits as
// its TERM handler says. Sent to runc's init instead (a Go program, PID 1
// of its namespace), it ends the container with status 2. containerd's runc
// shim signals at once; its status is logged.
func TestSignalBeforeExec(t *testing.T) {
	for _, tc := range bothShims() {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(tc.shim)
			started := filepath.Join(t.TempDir(), "started")
			e.runcInPath(lateExecRunc, started)

			e.mustRun(append([]string{"run", "-d", e.bundle, "early"}, trapTerm...)...)
			e.mustRun("kill", "-s", "TERM", "early")
			e.expectTermHandled("early", tc)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(started); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the late runc start did not end within 10 s")
				}
			}
			e.mustRun("delete", "early")
			e.assertNoProcesses()
		})
	}
}

// slowRunc is a runc whose subcommand named by its third argument creates
// the file of its second argument when it is called, and only two seconds
// later runs: a Start call in flight for that long, time enough for a Kill
// to come in it even on a loaded machine (one that came after would meet
// the wait after a start, as in TestSignalBeforeExec).
const slowRunc = `#!/bin/sh
for a in "$@"; do
	if [ "$a" = %[3]s ]; then : > %[2]q; sleep 2; exec %[1]q "$@"; fi
done
exec %[1]q "$@"
`

// slowRunc puts slowRunc for sub in PATH (for the shims started from now
// on) and returns the file it creates when sub is called.
func (e *env) slowRunc(sub string) string {
	e.t.Helper()
	called := filepath.Join(e.t.TempDir(), "called")
	e.runcInPath(slowRunc, called, sub)
	return called
}

// startHeld runs minimgr with args in the background and returns once the
// slowed runc subcommand was called (the file called exists). wait waits
// for the command's end and reports a failure with its stderr.
func (e *env) startHeld(called string, args ...string) (wait func() error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	var stderr bytes.Buffer
	cmd := e.command(ctx, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	wait = func() error {
		defer cancel()
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("minimgr %v: %w: %s", args, err, stderr.String())
		}
		return nil
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(called); err == nil {
			return wait
		}
		if time.Now().After(deadline) {
			_ = wait()
			e.t.Fatalf("minimgr %v: the slowed runc was not called within 10 s", args)
		}
	}
}

// TestSignalDuringStart: a SIGTERM sent while the Start call is still in
// flight (by another client: containerd and CRI wait for their Start)
// waits for the Start, which succeeds, and reaches the program, not runc's
// init. containerd's runc shim also has its Kill wait for the Start; it
// then signals at once, in the window of TestSignalBeforeExec, so its
// exit status is logged.
func TestSignalDuringStart(t *testing.T) {
	for _, tc := range bothShims() {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(tc.shim)
			called := e.slowRunc("start")

			e.mustRun(append([]string{"create", e.bundle, "midstart"}, trapTerm...)...)
			wait := e.startHeld(called, "start", "midstart")
			e.mustRun("kill", "-s", "TERM", "midstart")
			if err := wait(); err != nil {
				t.Errorf("start with a TERM sent during it: %v", err)
			}
			e.expectTermHandled("midstart", tc)
			e.mustRun("delete", "midstart")
			e.assertNoProcesses()
		})
	}
}

// TestSignalDuringExecStart: a SIGTERM sent to an exec while its Start call
// is still in flight (by another client) waits for the Start and then
// reaches the exec, as containerd's runc shim does: the Kill succeeds, the
// Start too, and the exec ends by the signal.
func TestSignalDuringExecStart(t *testing.T) {
	for _, tc := range bothShims() {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(tc.shim)
			called := e.slowRunc("exec")

			e.mustRun("run", "-d", e.bundle, "midexec", "sleep", "1000")
			wait := e.startHeld(called, "exec", "-d", "--exec-id", "e1", "midexec", "sleep", "1000")
			killed := e.run(nil, "kill", "-s", "TERM", "--exec", "e1", "midexec")
			if killed.code != 0 {
				t.Errorf("kill of the exec during its start: exit %d: %s", killed.code, killed.stderr)
			}
			if err := wait(); err != nil {
				t.Errorf("exec with a TERM sent during its start: %v", err)
			}
			if killed.code != 0 {
				// The TERM was refused: end the exec for the wait.
				e.run(nil, "kill", "-s", "KILL", "--exec", "e1", "midexec")
			} else if r := e.run(nil, "wait", "--exec", "e1", "midexec"); r.code != 128+int(syscall.SIGTERM) {
				t.Errorf("exec's exit status %d, want %d (ended by the TERM): %s", r.code, 128+int(syscall.SIGTERM), r.stderr)
			}
			e.mustRun("kill", "-s", "KILL", "midexec")
			e.run(nil, "wait", "midexec")
			e.mustRun("delete", "midexec")
			e.assertNoProcesses()
		})
	}
}

// expectTermHandled waits for the container id running trapTerm, which
// was sent SIGTERM, to stop, and checks that the program's handler ended
// it (for mine; containerd's runc shim's status is logged).
func (e *env) expectTermHandled(id string, tc shimCase) {
	e.t.Helper()
	// A TERM that reaches sh after its exec but before its trap is set is
	// dropped (a namespace's PID 1 without a handler): the program's own
	// start-up, not the window under test. Sent again, it is handled.
	for try := 0; e.state(id).Status != minimgr.StatusStopped; try++ {
		if try == 20 {
			e.t.Log("TERM sent again: the first came before sh's trap")
			e.mustRun("kill", "-s", "TERM", id)
		}
		if try == 100 {
			e.t.Fatal("the container did not stop within 10 s of its TERMs")
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := e.run(nil, "wait", id)
	if tc.shim != "" {
		e.t.Logf("%s: exit status %d after the TERM", tc.name, r.code)
	} else if r.code != 42 {
		e.t.Errorf("exit status %d, want the program's TERM handler's 42 (2: the signal reached runc's init): %s", r.code, r.stderr)
	}
}
