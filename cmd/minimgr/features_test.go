package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

// TestReadmeSession runs the README's minimgr session as printed, with
// minimgr pointed at the test's state and binaries and /tmp/bb at a
// temporary directory.
func TestReadmeSession(t *testing.T) {
	e := newEnv(t, true)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(readme)
	i := strings.Index(sec, "## minimgr")
	if i < 0 {
		t.Fatal("README has no minimgr section")
	}
	sec = sec[i:]
	start := strings.Index(sec, "```sh\n")
	end := strings.Index(sec[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatal("no sh block in the minimgr section")
	}
	script := sec[start+6 : start+6+end]
	bb := filepath.Join(t.TempDir(), "bb")
	script = strings.ReplaceAll(script, "/tmp/bb", bb)
	wrapper := "minimgr() { " + minimgrBin + " --state-dir " + e.root + " --namespace " + e.ns + " --runtime-binary " + shimBin + " \"$@\"; }\n"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", wrapper+script)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the session did not end: %s", out)
	}
	if err != nil {
		t.Fatalf("the session failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"hi\nexit status 3\n",
		"ID  ", "c2  ", "running",
		"PID   USER     COMMAND", "1 root     sleep 1000",
		"hello\n137\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("session output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "oops") {
		t.Errorf("logs 2>/dev/null printed stderr:\n%s", out)
	}
	e.assertNoLeftovers("c1")
	e.assertNoLeftovers("c2")
}

// TestLogs: stdout and stderr kept apart, timestamps, tail, and -f that
// follows a running container until it exits.
func TestLogs(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", "-i", e.bundle, "lg", "sh", "-c", "echo out1; echo err1 >&2; echo out2; read x; echo after; exit 0")
	// Wait until the first lines are in.
	if r := e.run(nil, "logs", "lg"); !strings.Contains(r.stdout, "out2") {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for !strings.Contains(e.run(nil, "logs", "lg").stdout, "out2") && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	r := e.mustRun("logs", "lg")
	if r.stdout != "out1\nout2\n" || r.stderr != "err1\n" {
		t.Errorf("logs: stdout %q stderr %q", r.stdout, r.stderr)
	}
	// The streams are read apart: which of out2 and err1 came last may vary.
	if r := e.mustRun("logs", "--tail", "1", "lg"); strings.Count(r.stdout+r.stderr, "\n") != 1 {
		t.Errorf("logs --tail 1: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if r := e.mustRun("logs", "--tail", "3", "lg"); r.stdout != "out1\nout2\n" || r.stderr != "err1\n" {
		t.Errorf("logs --tail 3: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r = e.mustRun("logs", "--timestamps", "lg")
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z out1\n`).MatchString(r.stdout) {
		t.Errorf("logs --timestamps: %q", r.stdout)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	follow := e.command(ctx, "logs", "-f", "lg")
	out, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(out)
	for _, want := range []string{"out1", "out2"} {
		if l := readLine(t, rd, 20*time.Second); l != want {
			t.Fatalf("logs -f: %q, want %q", l, want)
		}
	}
	// The container goes on: its new output reaches the follower.
	stdin, err := os.OpenFile(filepath.Join(e.root, e.ns, "lg", "io", "init.stdin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("stdin FIFO of run -d: %v", err)
	}
	if _, err := stdin.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	if l := readLine(t, rd, 20*time.Second); l != "after" {
		t.Fatalf("logs -f: %q, want after", l)
	}
	if err := follow.Wait(); err != nil {
		t.Errorf("logs -f did not end cleanly after the exit: %v", err)
	}
	e.mustRun("delete", "lg")
}

// TestCommandExitCodes: docker's 126 and 127.
func TestCommandExitCodes(t *testing.T) {
	e := newEnv(t, true)
	if r := e.run(nil, "run", "--rm", e.bundle, "nf", "no-such-command"); r.code != exitNotFound {
		t.Errorf("not found: exit %d, want 127 (%s)", r.code, r.stderr)
	}
	if r := e.run(nil, "run", "--rm", e.bundle, "nx", "/etc/passwd"); r.code != exitCannotExecute {
		t.Errorf("not executable: exit %d, want 126 (%s)", r.code, r.stderr)
	}
	e.assertNoLeftovers("nf")
	e.assertNoLeftovers("nx")
	e.mustRun("run", "-d", e.bundle, "ex", "sleep", "1000")
	if r := e.run(nil, "exec", "ex", "nope"); r.code != exitNotFound {
		t.Errorf("exec not found: exit %d, want 127 (%s)", r.code, r.stderr)
	}
	e.mustRun("delete", "-f", "ex")
}

// TestRunOptions: the options that change the config without editing it.
func TestRunOptions(t *testing.T) {
	e := newEnv(t, true)
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "f"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(envFile, []byte("# comment\nFROM_FILE=yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		cmd  string
		want string
	}{
		{"env", []string{"-e", "A=1", "--env", "B=two words", "--env-file", envFile}, `echo "$A/$B/$FROM_FILE"`, "1/two words/yes\n"},
		{"workdir", []string{"-w", "/tmp"}, "pwd", "/tmp\n"},
		{"user", []string{"-u", "1000:1001"}, "id -u; id -g", "1000\n1001\n"},
		{"hostname", []string{"--hostname", "box"}, "hostname", "box\n"},
		{"volume", []string{"-v", host + ":/mnt:ro"}, "cat /mnt/f; touch /mnt/g 2>/dev/null || echo ro", "from host\nro\n"},
		{"tmpfs", []string{"--mount", "type=tmpfs,target=/scratch"}, "grep -c ' /scratch tmpfs ' /proc/mounts", "1\n"},
		{"writable rootfs", nil, "touch /tmp/w && echo rw", "rw\n"},
		{"read-only", []string{"--read-only"}, "touch /w 2>/dev/null || echo ro", "ro\n"},
		{"memory", []string{"--memory", "64m"}, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max", "67108864\n"},
		{"pids", []string{"--pids-limit", "50"}, "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max", "50\n"},
		{"net none", []string{"--net", "none"}, "ls /sys/class/net", "lo\n"},
		{"cap-drop", []string{"--cap-drop", "ALL"}, "grep CapEff /proc/self/status", "CapEff:\t0000000000000000\n"},
		{"cap-add", []string{"--cap-drop", "ALL", "--cap-add", "NET_RAW"}, "grep CapEff /proc/self/status", "CapEff:\t0000000000002000\n"},
	}
	// --net host: the container is in this test's network namespace (the
	// namespace's identity, not its interfaces, which other tests on the
	// host may add or remove meanwhile).
	hostNet, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tests = append(tests, struct {
		name string
		args []string
		cmd  string
		want string
	}{"net host", []string{"--net", "host"}, "readlink /proc/self/ns/net", hostNet + "\n"})
	// --privileged gives every capability minimgr has itself.
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		var bnd string
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
				bnd = strings.TrimSpace(v)
			}
		}
		tests = append(tests, struct {
			name string
			args []string
			cmd  string
			want string
		}{"privileged", []string{"--privileged"}, "grep CapEff /proc/self/status", "CapEff:\t" + bnd + "\n"})
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := "opt" + strconv.Itoa(i)
			args := append([]string{"run", "--rm"}, tc.args...)
			args = append(args, e.bundle, id, "sh", "-c", tc.cmd)
			r := e.run(nil, args...)
			if r.code != 0 || r.stdout != tc.want {
				t.Errorf("%v: exit %d, stdout %q (want %q), stderr %q", tc.args, r.code, r.stdout, tc.want, r.stderr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(e.bundle, "rootfs", "tmp", "w")); err != nil {
		t.Errorf("the writable rootfs is the bundle's: %v", err)
	}
}

// TestCLIConventions: flags anywhere and combined, --help on stdout,
// version, inspect, list columns, update, restart, run -d --rm.
func TestCLIConventions(t *testing.T) {
	e := newEnv(t, true)
	r := e.mustRun("--help")
	for _, c := range []string{"run", "create", "start", "exec", "attach", "logs", "kill", "stop", "restart", "wait",
		"delete", "list", "inspect", "pids", "pause", "resume", "update", "stats", "events", "cleanup", "bundle", "version"} {
		if !strings.Contains(r.stdout, "\n  "+c+" ") {
			t.Errorf("--help lacks %s", c)
		}
	}
	if r := e.mustRun("run", "--help"); !strings.Contains(r.stdout, "--detach-keys") {
		t.Errorf("run --help: %q", r.stdout)
	}
	if r := e.mustRun("version"); !strings.HasPrefix(r.stdout, "minimgr version ") {
		t.Errorf("version: %q", r.stdout)
	}

	e.mustRun("run", "-d", "--stop-signal", "SIGUSR1", e.bundle, "cv", "sh", "-c", "trap 'exit 9' USR1; while :; do sleep 0.1; done")
	r = e.mustRun("inspect", "--format", "{{.Status}} {{index .Command 0}}", "cv")
	if r.stdout != "running sh\n" {
		t.Errorf("inspect --format: %q", r.stdout)
	}
	var infos []minimgr.Info
	if err := json.Unmarshal([]byte(e.mustRun("inspect", "cv").stdout), &infos); err != nil || len(infos) != 1 || infos[0].ID != "cv" {
		t.Errorf("inspect: %v %+v", err, infos)
	}
	r = e.mustRun("list")
	if !strings.Contains(r.stdout, "COMMAND") || !strings.Contains(r.stdout, "CREATED") || !strings.Contains(r.stdout, `"sh -c trap`) {
		t.Errorf("list: %q", r.stdout)
	}
	e.mustRun("update", "cv", "--memory", "32m")
	if r := e.mustRun("exec", "cv", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"); r.stdout != "33554432\n" {
		t.Errorf("after update: %q", r.stdout)
	}
	e.mustRun("stop", "cv", "-t", "20") // flags after the ID; the stop signal, trapped
	if r := e.run(nil, "wait", "cv"); r.code != 9 {
		t.Errorf("stop sent not the stop signal: wait %d", r.code)
	}
	e.mustRun("restart", "-t", "1", "cv")
	if got := e.list()["cv"]; got.Status != minimgr.StatusRunning {
		t.Errorf("after restart: %+v", got)
	}
	e.mustRun("delete", "cv", "-f")

	// run -d --rm: removed once it exits, with no client around.
	e.mustRun("run", "-di", "--rm", e.bundle, "drm", "sh", "-c", "read x")
	dir := filepath.Join(e.root, e.ns, "drm")
	e.mustRun("kill", "-s", "KILL", "drm")
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("run -d --rm: state still there: %+v", e.list())
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.assertNoLeftovers("drm")
}

// TestRuntimeFoundAndRoot: minimgr copied anywhere finds the shim next to
// itself; a user who is not root is told so.
func TestRuntimeFoundAndRoot(t *testing.T) {
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, minimgrBin, "--state-dir", e.root, "--namespace", e.ns, "run", "--rm", e.bundle, "nx", "echo", "found")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"} // no shim there
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "found\n" {
		t.Errorf("shim next to minimgr: %v: %s", err, out)
	}
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd = exec.CommandContext(ctx, minimgrBin, "--state-dir", e.root, "list")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitError || !strings.Contains(string(out), "needs root") {
		t.Errorf("as nobody: %v: %s", err, out)
	}
}

// TestCleanupEndsShimWithoutState: a shim whose state directory is gone is
// found and ended by cleanup. The shim is stopped first, as a wedged one
// would be: a shim that runs notices on its own, within its 2 s check, that
// its state is gone and exits, and a cleanup that came later (seen under
// -race on a loaded machine) would find nothing to end.
func TestCleanupEndsShimWithoutState(t *testing.T) {
	e := newEnv(t, true)
	e.mustRun("run", "-d", e.bundle, "lost", "true")
	e.mustRun("wait", "lost")
	info := e.state("lost")
	shimFD := pidfd(t, info.ShimPid)
	if err := unix.PidfdSendSignal(shimFD, unix.SIGSTOP, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(e.root, e.ns, "lost")); err != nil {
		t.Fatal(err)
	}
	r := e.mustRun("cleanup")
	if !strings.Contains(r.stdout, "removed lost (shim without state") {
		t.Errorf("cleanup said %q", r.stdout)
	}
	if !exited(shimFD, 10*time.Second) {
		t.Error("the shim without state still runs")
	}
	// What the lost state would have let minimgr clean up.
	_ = exec.Command("runc", "--root", filepath.Join("/run/containerd/runc", e.ns), "delete", "--force", "lost").Run()
	_ = syscall.Kill(info.ShimPid, 0)
}

// TestAttachOutputOnly: attach to a container without stdin (run -d), or
// with a stdin FIFO that its shim does not read (run -d -i through
// containerd's runc shim, which reads none with minimgr's logger), follows
// its output from now on; the detach keys on our stdin leave it running.
func TestAttachOutputOnly(t *testing.T) {
	for _, sc := range bothShims() {
		for _, flags := range [][]string{{"-d"}, {"-d", "-i"}} {
			t.Run(sc.name+strings.Join(flags, ""), func(t *testing.T) {
				e := newEnv(t, true)
				e.useShim(sc.shim)
				run := append(append([]string{"run"}, flags...), e.bundle, "ao", "sh", "-c", "i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.1; done")
				e.mustRun(run...)
				defer e.run(nil, "delete", "-f", "ao")
				ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
				defer cancel()
				att := e.command(ctx, "attach", "ao")
				in, err := att.StdinPipe()
				if err != nil {
					t.Fatal(err)
				}
				out, err := att.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := att.Start(); err != nil {
					t.Fatal(err)
				}
				if l := readLine(t, bufio.NewReader(out), 20*time.Second); !strings.HasPrefix(l, "tick") {
					t.Fatalf("attach said %q", l)
				}
				if _, err := in.Write([]byte{0x10, 0x11}); err != nil {
					t.Fatal(err)
				}
				if err := att.Wait(); err != nil {
					t.Errorf("attach after the detach keys: %v", err)
				}
				if got := e.list()["ao"]; got.Status != minimgr.StatusRunning {
					t.Errorf("after detach: %+v", got)
				}
			})
		}
	}
}
