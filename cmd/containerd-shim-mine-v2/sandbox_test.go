package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	sandboxAPI "github.com/containerd/containerd/api/runtime/sandbox/v1"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandboxCallTimeout bounds one Sandbox API call of the tests.
const sandboxCallTimeout = 20 * time.Second

// sandboxWaitBound is how soon WaitSandbox must return after StopSandbox.
const sandboxWaitBound = 15 * time.Second

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, mounts and cgroups")
	}
}

// newNetns makes a network namespace pinned by a bind mount in dir, as CRI
// makes a pod's, and returns its path and inode. A short-lived child makes
// it (this process's threads keep theirs). A cleanup unmounts it.
func newNetns(t *testing.T, dir string) (string, uint64) {
	t.Helper()
	path := filepath.Join(dir, "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	child.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
	if err := child.Start(); err != nil {
		t.Fatalf("child in a new netns: %v", err)
	}
	err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", child.Process.Pid), path, "", unix.MS_BIND, "")
	_ = child.Process.Kill()
	_ = child.Wait()
	if err != nil {
		t.Fatalf("pin netns: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return path, st.Ino
}

// netnsHolders returns the pids of the processes in the network namespace
// of inode ino.
func netnsHolders(t *testing.T, ino uint64) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

func nsInode(t *testing.T, pid int, ns string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), &st); err != nil {
		t.Fatalf("ns %s of %d: %v", ns, pid, err)
	}
	return st.Ino
}

// shimUnderTest is a shim daemon launched through `start`, as containerd
// launches a sandbox's shim, and its ttrpc connection.
type shimUnderTest struct {
	bundle string
	conn   *ttrpc.Client
	sb     sandboxAPI.TTRPCSandboxService
	task   taskAPI.TTRPCTaskService
	pid    int
}

// startSandboxShim runs `start` for sandbox id with a bundle without
// config.json and BootstrapParams on stdin, and dials the address it gives.
func startSandboxShim(t *testing.T, id string) *shimUnderTest {
	t.Helper()
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	const ns = "mine-sandbox-test"
	// Socket paths are limited to ~106 bytes: a short directory.
	sockDir, err := os.MkdirTemp("", "mss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	params := &bootapi.BootstrapParams{
		InstanceID: id, Namespace: ns, LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG,
		ContainerdGrpcAddress: filepath.Join(dir, "containerd.sock"),
		SocketDir:             proto.String(sockDir),
	}
	in, err := proto.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-namespace", ns, "-address", params.ContainerdGrpcAddress, "-id", id, "start")
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), envTestAsShim+"=1", "TTRPC_ADDRESS=")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("start: %v: %s", err, out)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &res); err != nil {
		t.Fatalf("start answered %q: %v", out, err)
	}
	if res.Version != 3 || res.Protocol != "ttrpc" {
		t.Fatalf("start answered %+v", &res)
	}
	path, ok := strings.CutPrefix(res.Address, "unix://")
	if !ok {
		t.Fatalf("address %q", res.Address)
	}
	c, err := net.DialTimeout("unix", path, sandboxCallTimeout)
	if err != nil {
		t.Fatal(err)
	}
	s := &shimUnderTest{bundle: bundle, conn: ttrpc.NewClient(c)}
	s.sb = sandboxAPI.NewTTRPCSandboxClient(s.conn)
	s.task = taskAPI.NewTTRPCTaskClient(s.conn)
	cr, err := s.task.Connect(callCtx(t), &taskAPI.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	s.pid = int(cr.ShimPid)
	t.Cleanup(func() {
		s.conn.Close()
		if unix.Kill(s.pid, 0) == nil {
			_ = unix.Kill(s.pid, unix.SIGKILL)
		}
		del := exec.Command(self, "-namespace", ns, "-address", params.ContainerdGrpcAddress, "-id", id, "-bundle", bundle, "delete")
		del.Env = append(os.Environ(), envTestAsShim+"=1")
		if out, err := del.CombinedOutput(); err != nil {
			t.Errorf("delete: %v: %s", err, out)
		}
	})
	return s
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), sandboxCallTimeout)
	t.Cleanup(cancel)
	return ctx
}

func podOptions(t *testing.T, c *cri.PodSandboxConfig) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "runtime.v1.PodSandboxConfig", Value: b}
}

func wantErrClass(t *testing.T, what string, err error, is func(error) bool, class string) {
	t.Helper()
	if err == nil || !is(errgrpc.ToNative(err)) {
		t.Fatalf("%s: %v, want %s", what, err, class)
	}
}

// mounted reports whether path is a mount point of this mount namespace.
func mounted(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// waitGone waits until pid has exited, through a pidfd.
func waitGone(t *testing.T, pid int, bound time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd of %d: %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(bound.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll pidfd of %d: %v", pid, err)
		}
		if n == 0 {
			t.Fatalf("process %d still runs after %v", pid, bound)
		}
		return
	}
}

// TestSandboxAPI drives the Sandbox API of a shim started as containerd
// starts a sandbox's shim, through the sequence containerd's CRI uses.
func TestSandboxAPI(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("sb%d", time.Now().UnixNano())
	s := startSandboxShim(t, id)
	netns, netIno := newNetns(t, t.TempDir())

	_, err := s.sb.StartSandbox(callCtx(t), &sandboxAPI.StartSandboxRequest{SandboxID: id})
	wantErrClass(t, "StartSandbox before CreateSandbox", err, errdefs.IsFailedPrecondition, "failed precondition")

	config := &cri.PodSandboxConfig{
		Metadata:  &cri.PodSandboxMetadata{Name: "p", Uid: "u", Namespace: "n"},
		Hostname:  "mine-pod",
		DnsConfig: &cri.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"svc.example"}, Options: []string{"ndots:5"}},
		Linux: &cri.LinuxPodSandboxConfig{
			Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"},
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{
				Network: cri.NamespaceMode_POD, Pid: cri.NamespaceMode_POD, Ipc: cri.NamespaceMode_POD,
			}},
		},
	}
	create := &sandboxAPI.CreateSandboxRequest{
		SandboxID: id, BundlePath: s.bundle, Options: podOptions(t, config), NetnsPath: netns,
	}
	if _, err := s.sb.CreateSandbox(callCtx(t), create); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	_, err = s.sb.CreateSandbox(callCtx(t), create)
	wantErrClass(t, "second CreateSandbox", err, errdefs.IsAlreadyExists, "already exists")

	st, err := s.sb.SandboxStatus(callCtx(t), &sandboxAPI.SandboxStatusRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("SandboxStatus: %v", err)
	}
	if st.State != "SANDBOX_NOTREADY" {
		t.Fatalf("state before start: %q", st.State)
	}

	started, err := s.sb.StartSandbox(callCtx(t), &sandboxAPI.StartSandboxRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("StartSandbox: %v", err)
	}
	pid := int(started.Pid)
	if pid <= 0 || started.CreatedAt == nil {
		t.Fatalf("StartSandbox answered %+v", started)
	}
	_, err = s.sb.StartSandbox(callCtx(t), &sandboxAPI.StartSandboxRequest{SandboxID: id})
	wantErrClass(t, "second StartSandbox", err, errdefs.IsFailedPrecondition, "failed precondition")

	// The holder sits in the pod's netns and in namespaces of its own.
	if got := nsInode(t, pid, "net"); got != netIno {
		t.Fatalf("holder netns inode %d, want the pod's %d", got, netIno)
	}
	for _, ns := range []string{"uts", "ipc", "pid"} {
		if nsInode(t, pid, ns) == nsInode(t, s.pid, ns) {
			t.Fatalf("holder shares the host's %s namespace", ns)
		}
	}
	if holders := netnsHolders(t, netIno); len(holders) != 1 || holders[0] != pid {
		t.Fatalf("processes in the pod netns: %v, want only the holder %d", holders, pid)
	}
	if nsenter, err := exec.LookPath("nsenter"); err == nil {
		out, err := exec.Command(nsenter, "-t", strconv.Itoa(pid), "-u", "-n", "-i", "sh", "-c",
			"hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced").CombinedOutput()
		if err != nil {
			t.Fatalf("nsenter: %v: %s", err, out)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != "mine-pod 80 1" {
			t.Fatalf("hostname and sysctls in the pod: %q, want mine-pod 80 1", got)
		}
	} else {
		t.Logf("hostname and sysctls not checked: %v", err)
	}
	for name, want := range map[string]string{
		"hostname":    "mine-pod\n",
		"resolv.conf": "search svc.example\nnameserver 10.0.0.10\noptions ndots:5\n",
	} {
		got, err := os.ReadFile(filepath.Join(s.bundle, name))
		if err != nil || string(got) != want {
			t.Fatalf("%s: %q (%v), want %q", name, got, err, want)
		}
	}
	shm := filepath.Join(s.bundle, "shm")
	if !mounted(t, shm) {
		t.Fatalf("pod /dev/shm %s is not mounted", shm)
	}

	st, err = s.sb.SandboxStatus(callCtx(t), &sandboxAPI.SandboxStatusRequest{SandboxID: id, Verbose: true})
	if err != nil {
		t.Fatalf("SandboxStatus: %v", err)
	}
	if st.State != "SANDBOX_READY" || st.SandboxID != id || int(st.Pid) != pid || st.CreatedAt == nil {
		t.Fatalf("status %+v", st)
	}
	var info struct {
		Pid       int    `json:"pid"`
		NetnsPath string `json:"netns_path"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || info.Pid != pid || info.NetnsPath != netns {
		t.Fatalf("status info %q (%v)", st.Info["info"], err)
	}
	pl, err := s.sb.Platform(callCtx(t), &sandboxAPI.PlatformRequest{SandboxID: id})
	if err != nil || pl.GetPlatform().GetOS() != "linux" {
		t.Fatalf("Platform: %v %v", pl, err)
	}
	if _, err := s.sb.PingSandbox(callCtx(t), &sandboxAPI.PingRequest{SandboxID: id}); err != nil {
		t.Fatalf("PingSandbox: %v", err)
	}
	_, err = s.sb.PingSandbox(callCtx(t), &sandboxAPI.PingRequest{SandboxID: "other"})
	wantErrClass(t, "PingSandbox of another id", err, errdefs.IsNotFound, "not found")
	m, err := s.sb.SandboxMetrics(callCtx(t), &sandboxAPI.SandboxMetricsRequest{SandboxID: id})
	if err != nil || m.GetMetrics().GetData() == nil {
		t.Fatalf("SandboxMetrics: %v %v", m, err)
	}

	// containerd sends Task.Shutdown after every member's Delete: the
	// sandbox's shim stays.
	if _, err := s.task.Shutdown(callCtx(t), &taskAPI.ShutdownRequest{ID: id}); err != nil {
		t.Fatalf("Task.Shutdown: %v", err)
	}
	if _, err := s.sb.PingSandbox(callCtx(t), &sandboxAPI.PingRequest{SandboxID: id}); err != nil {
		t.Fatalf("PingSandbox after Task.Shutdown: %v", err)
	}

	waited := make(chan error, 1)
	waitCtx, cancelWait := context.WithTimeout(context.Background(), time.Minute)
	defer cancelWait()
	go func() {
		_, err := s.sb.WaitSandbox(waitCtx, &sandboxAPI.WaitSandboxRequest{SandboxID: id})
		waited <- err
	}()
	select {
	case err := <-waited:
		t.Fatalf("WaitSandbox returned while the sandbox runs: %v", err)
	case <-time.After(100 * time.Millisecond):
	}

	stopAt := time.Now()
	if _, err := s.sb.StopSandbox(callCtx(t), &sandboxAPI.StopSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("StopSandbox: %v", err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WaitSandbox: %v", err)
		}
		t.Logf("WaitSandbox returned %v after StopSandbox was sent", time.Since(stopAt))
	case <-time.After(sandboxWaitBound):
		t.Fatalf("WaitSandbox did not return within %v of StopSandbox", sandboxWaitBound)
	}
	if _, err := s.sb.StopSandbox(callCtx(t), &sandboxAPI.StopSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("second StopSandbox: %v", err)
	}
	st, err = s.sb.SandboxStatus(callCtx(t), &sandboxAPI.SandboxStatusRequest{SandboxID: id})
	if err != nil || st.State != "SANDBOX_NOTREADY" || st.ExitedAt == nil {
		t.Fatalf("status after stop: %+v (%v)", st, err)
	}
	waitGone(t, pid, sandboxWaitBound)
	if holders := netnsHolders(t, netIno); len(holders) != 0 {
		t.Fatalf("processes still in the pod netns after stop: %v", holders)
	}

	if _, err := s.sb.ShutdownSandbox(callCtx(t), &sandboxAPI.ShutdownSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("ShutdownSandbox: %v", err)
	}
	if mounted(t, shm) {
		t.Fatalf("pod /dev/shm %s still mounted after ShutdownSandbox", shm)
	}
	// containerd hangs up after ShutdownSandbox; the shim then exits.
	s.conn.Close()
	waitGone(t, s.pid, sandboxWaitBound)
}

// TestSandboxHolderDeath: a holder that dies makes the sandbox NOTREADY and
// ends WaitSandbox, without StopSandbox; a host-network pod's holder stays
// in the host's network and UTS namespaces.
func TestSandboxHolderDeath(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("sb%d", time.Now().UnixNano())
	s := startSandboxShim(t, id)
	config := &cri.PodSandboxConfig{Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
		NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD},
	}}}
	if _, err := s.sb.CreateSandbox(callCtx(t), &sandboxAPI.CreateSandboxRequest{
		SandboxID: id, BundlePath: s.bundle, Options: podOptions(t, config),
	}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	started, err := s.sb.StartSandbox(callCtx(t), &sandboxAPI.StartSandboxRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("StartSandbox: %v", err)
	}
	pid := int(started.Pid)
	for _, ns := range []string{"net", "uts"} {
		if nsInode(t, pid, ns) != nsInode(t, s.pid, ns) {
			t.Fatalf("host-network holder has a %s namespace of its own", ns)
		}
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), sandboxWaitBound)
	defer cancel()
	resp, err := s.sb.WaitSandbox(ctx, &sandboxAPI.WaitSandboxRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("WaitSandbox after the holder's death: %v", err)
	}
	if resp.ExitStatus != 128+uint32(unix.SIGKILL) {
		t.Fatalf("exit status %d, want %d", resp.ExitStatus, 128+unix.SIGKILL)
	}
	st, err := s.sb.SandboxStatus(callCtx(t), &sandboxAPI.SandboxStatusRequest{SandboxID: id})
	if err != nil || st.State != "SANDBOX_NOTREADY" {
		t.Fatalf("status after the holder's death: %+v (%v)", st, err)
	}
	if _, err := s.sb.ShutdownSandbox(callCtx(t), &sandboxAPI.ShutdownSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("ShutdownSandbox: %v", err)
	}
	s.conn.Close()
	waitGone(t, s.pid, sandboxWaitBound)
	if _, err := os.Stat(filepath.Join(s.bundle, "shm")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestSandboxHostNamespaces: a pod with the host's network, IPC and PID
// namespaces gets a holder in all of the host's namespaces, and no /dev/shm
// of its own.
func TestSandboxHostNamespaces(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("sb%d", time.Now().UnixNano())
	s := startSandboxShim(t, id)
	config := &cri.PodSandboxConfig{Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
		NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_NODE, Ipc: cri.NamespaceMode_NODE},
	}}}
	if _, err := s.sb.CreateSandbox(callCtx(t), &sandboxAPI.CreateSandboxRequest{
		SandboxID: id, BundlePath: s.bundle, Options: podOptions(t, config),
	}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	started, err := s.sb.StartSandbox(callCtx(t), &sandboxAPI.StartSandboxRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("StartSandbox: %v", err)
	}
	for _, ns := range []string{"net", "uts", "ipc", "pid"} {
		if nsInode(t, int(started.Pid), ns) != nsInode(t, s.pid, ns) {
			t.Errorf("holder of a host-namespace pod has a %s namespace of its own", ns)
		}
	}
	if _, err := os.Stat(filepath.Join(s.bundle, "shm")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a host-IPC pod has a /dev/shm of its own (%v)", err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(s.bundle, "hostname")); err != nil || string(got) != host+"\n" {
		t.Errorf("hostname file %q (%v), want the host's %q", got, err, host)
	}
	if _, err := s.sb.StopSandbox(callCtx(t), &sandboxAPI.StopSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("StopSandbox: %v", err)
	}
	waitGone(t, int(started.Pid), sandboxWaitBound)
	if _, err := s.sb.ShutdownSandbox(callCtx(t), &sandboxAPI.ShutdownSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("ShutdownSandbox: %v", err)
	}
	s.conn.Close()
	waitGone(t, s.pid, sandboxWaitBound)
}

// TestSandboxNeverStartedAbandoned: CRI's RunPodSandbox failed between
// CreateSandbox and StartSandbox (the pause image's pull): it removed the
// pod's network namespace and never calls the shim again, neither
// StartSandbox nor ShutdownSandbox. The shim waits while the namespace is
// there (the pull may be slow), and exits, its sandbox's /dev/shm released,
// once it is gone.
func TestSandboxNeverStartedAbandoned(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("sbab%d", time.Now().UnixNano())
	s := startSandboxShim(t, id)
	netns, _ := newNetns(t, t.TempDir())
	if _, err := s.sb.CreateSandbox(callCtx(t), &sandboxAPI.CreateSandboxRequest{
		SandboxID: id, BundlePath: s.bundle, Options: podOptions(t, &cri.PodSandboxConfig{Hostname: "p"}), NetnsPath: netns,
	}); err != nil {
		t.Fatal(err)
	}
	s.conn.Close()
	fd, err := unix.PidfdOpen(s.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	exitedWithin := func(d time.Duration) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(d.Milliseconds()))
		return err == nil && n == 1
	}
	if exitedWithin(orphanTimeout + 2*idleCheckInterval) {
		t.Fatal("the shim exited while its created sandbox's network namespace was still there")
	}
	_ = unix.Unmount(netns, unix.MNT_DETACH)
	if err := os.Remove(netns); err != nil {
		t.Fatal(err)
	}
	if !exitedWithin(3 * idleCheckInterval) {
		t.Fatalf("the shim of a never-started sandbox still runs %v after its network namespace went", 3*idleCheckInterval)
	}
	if mounted(t, filepath.Join(s.bundle, "shm")) {
		t.Error("the sandbox's /dev/shm is still mounted after the shim exited")
	}
}
