package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mineshim/mine/pkg/minimgr"
)

// TestRunAttached runs processes attached, through both shims. The stdin
// of an attached run is connected where the shim reads it: containerd's
// runc shim reads none when the output goes to a binary:// logger, as
// minimgr's does, and the run goes on without it (its output is logged).
func TestRunAttached(t *testing.T) {
	tests := []struct {
		name       string
		stdin      string
		cmd        []string
		wantOut    string
		wantErrSub string
		wantCode   int
		mineOnly   bool // the output depends on the shim's reading stdin
	}{
		{name: "echo", cmd: []string{"echo", "hello"}, wantOut: "hello\n"},
		{name: "exit status", cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, wantOut: "out\n", wantErrSub: "err\n", wantCode: 3},
		{name: "stdin", stdin: "from stdin\n", cmd: []string{"cat"}, wantOut: "from stdin\n", mineOnly: true},
		{name: "status 255", cmd: []string{"sh", "-c", "exit 255"}, wantCode: 255},
		{name: "no such command", cmd: []string{"no-such-command"}, wantErrSub: "executable file not found", wantCode: exitNotFound},
	}
	for _, sc := range bothShims() {
		t.Run(sc.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.useShim(sc.shim)
			for i, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					id := "run" + string(rune('a'+i))
					var stdin io.Reader
					if tc.stdin != "" {
						stdin = strings.NewReader(tc.stdin)
					}
					begin := time.Now()
					r := e.run(stdin, append([]string{"run", "--rm", e.bundle, id}, tc.cmd...)...)
					if sc.shim != "" && tc.mineOnly {
						t.Logf("%s: exit %d, stdout %q, stderr %q", sc.name, r.code, r.stdout, r.stderr)
					} else {
						if r.code != tc.wantCode {
							t.Errorf("exit code %d, want %d (stderr %q)", r.code, tc.wantCode, r.stderr)
						}
						if r.stdout != tc.wantOut {
							t.Errorf("stdout %q, want %q", r.stdout, tc.wantOut)
						}
						if !strings.Contains(r.stderr, tc.wantErrSub) {
							t.Errorf("stderr %q, want it to hold %q", r.stderr, tc.wantErrSub)
						}
					}
					// Below the 10 s that an unread stdin FIFO used to cost.
					if took := time.Since(begin); took > 9*time.Second {
						t.Errorf("the run took %s", took)
					}
					e.assertNoLeftovers(id)
				})
			}
		})
	}
}

// TestRunDetachedWaitFromAnotherProcess: run -d returns at once; a second
// minimgr process waits and exits with the container's status.
func TestRunDetachedWaitFromAnotherProcess(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "det", "sh", "-c", "trap 'echo bye; exit 5' TERM; echo logged; while :; do sleep 0.1; done")
	info := e.state("det")
	if info.Status != minimgr.StatusRunning || info.Log == "" {
		t.Fatalf("state after run -d: %+v", info)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	wait := e.command(ctx, "wait", "det")
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- wait.Wait() }()

	e.mustRun("kill", "det") // SIGTERM, trapped: exit 5
	select {
	case <-waited:
	case <-ctx.Done():
		t.Fatal("wait did not return")
	}
	if code := wait.ProcessState.ExitCode(); code != 5 {
		t.Errorf("wait exit code %d, want 5", code)
	}
	// A later wait answers from the stopped container.
	if r := e.run(nil, "wait", "det"); r.code != 5 {
		t.Errorf("second wait: exit %d, want 5 (%s)", r.code, r.stderr)
	}
	if log := e.mustRun("logs", "det"); log.stdout != "logged\nbye\n" {
		t.Errorf("log %q", log.stdout)
	}
	e.mustRun("delete", "det")
	e.assertNoLeftovers("det")
}

// TestMinimgrKilledContainerSurvives: minimgr dies with -9 while attached;
// a fresh minimgr finds the container running, execs into it, kills it and
// waits for the right status; the init never changed.
func TestMinimgrKilledContainerSurvives(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	run := e.command(ctx, "run", e.bundle, "surv", "sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done")
	out, err := run.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	if l := readLine(t, bufio.NewReader(out), 20*time.Second); l != "ready" {
		t.Fatalf("first line %q", l)
	}
	// The program runs (and prints) a moment before the Start call that
	// started it has returned and the shim says running.
	before := e.state("surv")
	for deadline := time.Now().Add(10 * time.Second); before.Status == minimgr.StatusCreated && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		before = e.state("surv")
	}
	if before.Status != minimgr.StatusRunning || before.Pid == 0 {
		t.Fatalf("state before: %+v", before)
	}
	initFD := pidfd(t, before.Pid)

	if err := run.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = run.Wait()
	if exited(initFD, 0) {
		t.Fatal("the container died with minimgr")
	}

	got := e.list()["surv"]
	if got.Status != minimgr.StatusRunning || got.Pid != before.Pid || got.ShimPid != before.ShimPid {
		t.Fatalf("list after minimgr died: %+v, before %+v", got, before)
	}
	r := e.mustRun("exec", "--exec-id", "e1", "surv", "sh", "-c", "echo inside; cat /proc/1/cmdline | tr '\\0' ' '")
	if !strings.HasPrefix(r.stdout, "inside\nsh -c trap") {
		t.Errorf("exec output %q", r.stdout)
	}
	if st := e.state("surv"); st.Pid != before.Pid || st.Status != minimgr.StatusRunning {
		t.Errorf("state after exec: %+v", st)
	}
	if exited(initFD, 0) {
		t.Fatal("the init died before it was killed")
	}
	e.mustRun("kill", "surv")
	if r := e.run(nil, "wait", "surv"); r.code != 42 {
		t.Errorf("wait: exit %d, want 42 (%s)", r.code, r.stderr)
	}
	if !exited(initFD, 10*time.Second) {
		t.Error("init still there after wait")
	}
	e.mustRun("delete", "surv")
	e.assertNoLeftovers("surv")
}

// TestShimKilled: a shim killed with -9 is listed dead; cleanup reports
// the status `shim delete` saved and leaves nothing behind.
func TestShimKilled(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "orphan", "sleep", "1000")
	info := e.state("orphan")
	if info.ShimPid == 0 || info.Pid == 0 {
		t.Fatalf("state: %+v", info)
	}
	shimFD := pidfd(t, info.ShimPid)
	if err := syscall.Kill(info.ShimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !exited(shimFD, 10*time.Second) {
		t.Fatal("shim survived SIGKILL")
	}

	if got := e.list()["orphan"]; got.Status != minimgr.StatusDead {
		t.Fatalf("list: %+v, want dead", got)
	}
	r := e.mustRun("cleanup")
	if want := "removed orphan (dead shim, exit status 137)"; !strings.Contains(r.stdout, want) {
		t.Errorf("cleanup said %q, want %q", r.stdout, want)
	}
	waitGone(t, info.Pid, 10*time.Second)
	e.assertNoLeftovers("orphan")
	if got := e.list(); len(got) != 0 {
		t.Errorf("list after cleanup: %+v", got)
	}
	// An unknown ID now.
	if r := e.run(nil, "wait", "orphan"); r.code != exitOwnError || !strings.Contains(r.stderr, "not found") {
		t.Errorf("wait after cleanup: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestWaitReapsDeadShim: wait on a container whose shim died reports the
// status `shim delete` gives, and delete removes what is left.
func TestWaitReapsDeadShim(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "reap", "sleep", "1000")
	info := e.state("reap")
	shimFD := pidfd(t, info.ShimPid)
	if err := syscall.Kill(info.ShimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !exited(shimFD, 10*time.Second) {
		t.Fatal("shim survived SIGKILL")
	}
	if r := e.run(nil, "wait", "reap"); r.code != 137 {
		t.Errorf("wait: exit %d, want 137 (%s)", r.code, r.stderr)
	}
	if got := e.list()["reap"]; got.Status != minimgr.StatusStopped || got.Exit == nil || got.Exit.Status != 137 {
		t.Errorf("list after wait: %+v", got)
	}
	e.mustRun("delete", "reap")
	waitGone(t, info.Pid, 10*time.Second)
	e.assertNoLeftovers("reap")
}

// TestEvents: `minimgr events` sees a container's events in order.
func TestEvents(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	srv := e.command(ctx, "events", "--json")
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := srv.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = srv.Process.Signal(syscall.SIGTERM)
			_ = srv.Wait()
		}
	}
	defer stop()
	if l := readLine(t, bufio.NewReader(stderr), 20*time.Second); !strings.Contains(l, "listening on") {
		t.Fatalf("events said %q", l)
	}

	e.mustRun("run", "-d", e.bundle, "ev", "sleep", "1000")
	if r := e.run(nil, "exec", "--exec-id", "x1", "ev", "sh", "-c", "exit 3"); r.code != 3 {
		t.Fatalf("exec: exit %d, want 3 (%s)", r.code, r.stderr)
	}
	e.mustRun("kill", "-s", "KILL", "ev")
	if r := e.run(nil, "wait", "ev"); r.code != 137 {
		t.Fatalf("wait: %d", r.code)
	}
	e.mustRun("delete", "ev")

	type event struct {
		Namespace string `json:"namespace"`
		Topic     string `json:"topic"`
		Event     struct {
			ContainerID string `json:"container_id"`
			ID          string `json:"id"`
			ExecID      string `json:"exec_id"`
			ExitStatus  int    `json:"exit_status"`
		} `json:"event"`
	}
	want := []string{
		"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
		"/tasks/exit x1 3", "/tasks/exit ev 137", "/tasks/delete",
	}
	var got []string
	rd := bufio.NewReader(stdout)
	for len(got) < len(want) {
		var ev event
		l := readLine(t, rd, 20*time.Second)
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("event %q: %v", l, err)
		}
		if ev.Namespace != e.ns || ev.Event.ContainerID != "ev" {
			t.Fatalf("event of another container: %s", l)
		}
		s := ev.Topic
		if s == "/tasks/exit" {
			s = strings.Join([]string{s, ev.Event.ID, strconv.Itoa(ev.Event.ExitStatus)}, " ")
		}
		got = append(got, s)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("events\n got %q\nwant %q", got, want)
	}
	stop()
	if _, err := os.Stat(filepath.Join(e.root, "events.sock")); !os.IsNotExist(err) {
		t.Errorf("events socket left: %v", err)
	}
}

// TestErrors: one line, classified, non-zero.
func TestErrors(t *testing.T) {
	e := newEnv(t, false)
	dir := t.TempDir()
	badJSON := filepath.Join(dir, "badjson")
	noRoot := filepath.Join(dir, "noroot")
	for _, d := range []string{badJSON, noRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(badJSON, "config.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(noRoot, "config.json"), []byte(`{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantSub  string
	}{
		{"missing bundle", []string{"run", filepath.Join(dir, "nope"), "c1"}, exitOwnError, "not found"},
		{"bad config.json", []string{"run", badJSON, "c1"}, exitOwnError, "invalid argument"},
		{"no rootfs", []string{"create", noRoot, "c1"}, exitError, "invalid argument"},
		{"unknown id", []string{"kill", "nosuch"}, exitError, "not found"},
		{"unknown id wait", []string{"wait", "nosuch"}, exitOwnError, "not found"},
		{"unknown id delete", []string{"delete", "nosuch"}, exitError, "not found"},
		{"bad id", []string{"start", "../x"}, exitError, "invalid argument"},
		{"bad namespace", []string{"--namespace", "a b", "list"}, exitError, "invalid argument"},
		{"bad signal", []string{"kill", "-s", "SIGNOPE", "c1"}, exitError, "invalid argument"},
		{"terminal without one", []string{"run", "-t", badJSON, "c1"}, exitOwnError, "not a terminal"},
		{"usage", []string{"run"}, exitUsage, "needs BUNDLE and ID"},
		{"unknown command", []string{"frobnicate"}, exitUsage, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.run(nil, tc.args...)
			if r.code != tc.wantCode {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.wantCode, r.stderr)
			}
			first, _, _ := strings.Cut(r.stderr, "\n")
			if !strings.Contains(first, tc.wantSub) {
				t.Errorf("first line of stderr %q, want %q in it", first, tc.wantSub)
			}
			if tc.wantCode != exitUsage && strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", r.stderr)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
		ok   bool
	}{
		{"9", syscall.SIGKILL, true},
		{"KILL", syscall.SIGKILL, true},
		{"sigterm", syscall.SIGTERM, true},
		{"SIGUSR1", syscall.SIGUSR1, true},
		{"0", 0, false},
		{"NOPE", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSignal(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSignal(%q) = %v, %v", tc.in, got, err)
		}
	}
}
