package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"google.golang.org/protobuf/proto"
)

const childEnv = "MINE_CGROUP_TEST_CHILD"

// TestMain runs the child of the real tests when asked: it waits for a
// line on stdin (it has been moved into its cgroup), touches 8 MiB, says
// "ready" and waits for stdin to close.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		in := bufio.NewReader(os.Stdin)
		if _, err := in.ReadString('\n'); err != nil {
			os.Exit(2)
		}
		mem := make([]byte, 8<<20)
		for i := range mem {
			mem[i] = byte(i)
		}
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, in)
		runtime.KeepAlive(mem)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startInCgroup starts the child, moves it into the cgroup at path with
// Join, lets it allocate, and returns its pid. Cleanup stops it and removes
// the cgroup with Remove, and checks that it is gone.
func startInCgroup(t *testing.T, path string, setup func()) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
		if err := Remove(path); err != nil {
			t.Errorf("Remove(%s): %v", path, err)
		}
		for _, d := range cgroupDirs(t, path) {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after Remove: %v", d, err)
			}
		}
	})
	if err := Join(path, cmd.Process.Pid); err != nil {
		t.Fatalf("Join(%s): %v", path, err)
	}
	if setup != nil {
		setup()
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

// cgroupDirs lists the directories of the cgroup at path: one per v1
// hierarchy, or the v2 one.
func cgroupDirs(t *testing.T, path string) []string {
	t.Helper()
	if Unified() {
		return []string{filepath.Join(unifiedRoot, path)}
	}
	var r fileReader
	mounts, err := v1Mounts(&r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		out = append(out, joinDir(m.point, path))
	}
	return out
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
}

func write(t *testing.T, dir, name, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// TestCompareV1Real reads a real cgroup, with a process that allocated 8
// MiB under limits, with the reader and with cgroup1's manager, by pid and
// by path, while the process is frozen and again once it has gone.
func TestCompareV1Real(t *testing.T) {
	needRoot(t)
	if Unified() {
		t.Skip("the host has cgroup v2 only (TestCompareV2Real)")
	}
	path := fmt.Sprintf("/mine-cgroup-test-%d", os.Getpid())
	var r fileReader
	mounts, err := v1Mounts(&r)
	if err != nil {
		t.Fatal(err)
	}
	dirOf := func(c string) string {
		for _, m := range mounts {
			if m.has(c) {
				return joinDir(m.point, path)
			}
		}
		t.Skipf("no %s hierarchy", c)
		return ""
	}
	memDir, pidsDir, cpuDir, freezerDir := dirOf("memory"), dirOf("pids"), dirOf("cpu"), dirOf("freezer")
	pid := startInCgroup(t, path, func() {
		write(t, memDir, "memory.limit_in_bytes", "268435456")
		if _, err := os.Stat(filepath.Join(memDir, "memory.memsw.limit_in_bytes")); err == nil {
			write(t, memDir, "memory.memsw.limit_in_bytes", "536870912")
		}
		write(t, pidsDir, "pids.max", "50")
		write(t, cpuDir, "cpu.cfs_quota_us", "50000")
	})
	write(t, freezerDir, "freezer.state", "FROZEN")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(freezerDir, "freezer.state"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(b)) == "FROZEN" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("freezer.state stays %q", b)
		}
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(func() { write(t, freezerDir, "freezer.state", "THAWED") })

	byPid, err := ForPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	byPath, err := ForPath(path)
	if err != nil {
		t.Fatal(err)
	}
	manager := func(p cgroup1.Path) func() (proto.Message, error) {
		return func() (proto.Message, error) {
			cg, err := cgroup1.Load(p)
			if err != nil {
				return nil, err
			}
			return cg.Stat(cgroup1.IgnoreNotExist)
		}
	}
	m := sameMetrics(t, byPid.Read, manager(cgroup1.PidPath(pid))).(*v1.Metrics)
	sameMetrics(t, byPath.Read, manager(cgroup1.StaticPath(path)))
	sameWire(t, m) // what Stats answers with, as proto.Marshal would encode it

	// The comparison holds only if the fields are read at all.
	if got := m.GetMemory().GetUsage().GetLimit(); got != 256<<20 {
		t.Errorf("memory limit %d, want %d", got, 256<<20)
	}
	if got := m.GetMemory().GetUsage().GetUsage(); got < 8<<20 {
		t.Errorf("memory usage %d, want at least 8 MiB", got)
	}
	if m.GetMemory().GetTotalRSS() == 0 || m.GetMemory().GetPgFault() == 0 {
		t.Errorf("memory.stat not read: %v", m.GetMemory())
	}
	if m.GetMemoryOomControl() == nil {
		t.Error("no memory.oom_control")
	}
	if p := m.GetPids(); p.GetLimit() != 50 || p.GetCurrent() == 0 {
		t.Errorf("pids %v, want a limit of 50 and at least one", p)
	}
	if u := m.GetCPU().GetUsage(); u.GetTotal() == 0 || len(u.GetPerCPU()) == 0 {
		t.Errorf("cpu usage %v", u)
	}
	if m.GetBlkio() == nil {
		t.Error("no blkio")
	}

	// Once the process has gone the cgroup stays, and still reads the same.
	write(t, freezerDir, "freezer.state", "THAWED")
	if err := killCgroup(memDir); err != nil {
		t.Fatal(err)
	}
	sameMetrics(t, byPid.Read, manager(cgroup1.StaticPath(path)))
}

// killCgroup kills the processes in dir and waits until it is empty.
func killCgroup(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			var pid int
			if _, err := fmt.Sscan(p, &pid); err == nil {
				if proc, err := os.FindProcess(pid); err == nil {
					_ = proc.Kill()
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s keeps processes %v", dir, pids)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCompareV2Real is TestCompareV1Real on a cgroup v2 host (the VM of
// make test-cgroupv2).
func TestCompareV2Real(t *testing.T) {
	needRoot(t)
	if !Unified() {
		t.Skip("the host is not cgroup v2 only (make test-cgroupv2 runs this in a VM)")
	}
	path := fmt.Sprintf("/mine-cgroup-test-%d", os.Getpid())
	dir := filepath.Join(unifiedRoot, path)
	ctrl, err := os.ReadFile(filepath.Join(unifiedRoot, "cgroup.subtree_control"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"memory", "pids", "cpu"} {
		if !strings.Contains(string(ctrl), c) {
			t.Skipf("controller %s not enabled at the root: %q", c, ctrl)
		}
	}
	pid := startInCgroup(t, path, func() {
		write(t, dir, "memory.max", "268435456")
		write(t, dir, "pids.max", "50")
		write(t, dir, "cpu.max", "50000 100000")
	})
	write(t, dir, "cgroup.freeze", "1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "frozen 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup.events stays %q", b)
		}
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(func() { _ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0) })

	byPid, err := ForPid(pid)
	if err != nil {
		t.Fatal(err)
	}
	byPath, err := ForPath(path)
	if err != nil {
		t.Fatal(err)
	}
	manager := func() (proto.Message, error) {
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, err
		}
		return m.Stat()
	}
	m := sameMetrics(t, byPid.Read, manager).(*v2.Metrics)
	sameMetrics(t, byPath.Read, manager)
	sameWire(t, m)
	if got := m.GetMemory().GetUsageLimit(); got != 256<<20 {
		t.Errorf("memory.max %d, want %d", got, 256<<20)
	}
	if m.GetMemory().GetUsage() < 8<<20 || m.GetMemory().GetAnon() == 0 {
		t.Errorf("memory %v", m.GetMemory())
	}
	if p := m.GetPids(); p.GetLimit() != 50 || p.GetCurrent() == 0 {
		t.Errorf("pids %v, want a limit of 50 and at least one", p)
	}
	if m.GetCPU().GetUsageUsec() == 0 {
		t.Errorf("cpu %v", m.GetCPU())
	}

	write(t, dir, "cgroup.freeze", "0")
	if err := killCgroup(dir); err != nil {
		t.Fatal(err)
	}
	sameMetrics(t, byPid.Read, manager)
}

// TestConcurrentReads reads the test process's own cgroup from several
// goroutines at once through one Stats (run with -race).
func TestConcurrentReads(t *testing.T) {
	s, err := ForPid(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup here: %v", err)
	}
	start := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			<-start
			for range 20 {
				if _, err := s.Read(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	close(start)
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestStatsKeepsNoSetupBuffer checks that resolving a cgroup leaves no
// buffer behind: /proc/self/mountinfo, read to find the v1 hierarchies,
// grows with the mounts of the host, and the buffer of a Stats lives as
// long as its container.
func TestStatsKeepsNoSetupBuffer(t *testing.T) {
	s, err := ForPid(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c := cap(s.r.buf); c != 0 {
		t.Fatalf("after ForPid the Stats holds a %d-byte buffer, want none before its first reading", c)
	}
	if !Unified() {
		if s, err = ForPath("/"); err != nil {
			t.Fatal(err)
		}
		if c := cap(s.r.buf); c != 0 {
			t.Fatalf("after ForPath the Stats holds a %d-byte buffer, want none before its first reading", c)
		}
	}
}

// TestForProcCgroupAfterExit: the cgroup that a /proc/<pid>/cgroup read
// while the process lived names is found and read once the process has
// exited and been reaped, as Stats must after a container's exit; Exists
// tells when the cgroup has been removed.
func TestForProcCgroupAfterExit(t *testing.T) {
	needRoot(t)
	path := fmt.Sprintf("/mine-cgroup-exit-test-%d", os.Getpid())
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err := Remove(path); err != nil {
			t.Errorf("Remove(%s): %v", path, err)
		}
	})
	if err := Join(path, cmd.Process.Pid); err != nil {
		t.Fatalf("Join(%s): %v", path, err)
	}
	b, err := ProcCgroup(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait() // reaped: its pid says nothing any more
	s, err := ForProcCgroup(b)
	if err != nil {
		t.Fatalf("ForProcCgroup(%q) after the exit: %v", b, err)
	}
	if !s.Exists() {
		t.Fatal("Exists: false for a cgroup still there")
	}
	if _, err := s.Read(); err != nil {
		t.Fatalf("read after the exit: %v", err)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if s.Exists() {
		t.Error("Exists: true after the cgroup was removed")
	}
}
