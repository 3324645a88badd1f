package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

// The pauseless CRI setup: a runtime handler served by the shim's Sandbox
// API (sandboxer "shim"), and a sandbox image that exists nowhere, so that
// any use of a pause container fails.
const (
	pauselessHandler = "mine-pauseless"
	pauselessPause   = "localhost/mine-e2e/no-pause-here:1"
	// pauselessImage is busybox with shmtool (test/e2e/shmtool).
	pauselessImage = "localhost/mine-e2e/busybox-shm:1"
	// holderArgv0 is how the shim names its pod namespace holder.
	holderArgv0 = "mine-sandbox-holder"
)

// pauselessCgroups is the cgroup under which the pods of a run go (their
// cgroup parents), removed at the end as the kubelet would.
var pauselessCgroups = fmt.Sprintf("/mine-e2e-pods-%d", os.Getpid())

// removeCgroupTree removes the cgroup rel and its children in every
// hierarchy; they must hold no process any more.
func removeCgroupTree(t *testing.T, rel string) {
	roots, err := filepath.Glob("/sys/fs/cgroup/*" + rel)
	if err != nil {
		t.Error(err)
	}
	if _, err := os.Stat("/sys/fs/cgroup" + rel); err == nil {
		roots = append(roots, "/sys/fs/cgroup"+rel)
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !os.IsNotExist(err) {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// pauselessTOML configures the CRI plugin of a private containerd for
// pods without a pause container, with a CNI bridge network of its own
// (or none, when the CNI plugins are missing: reason says why). bridge is
// the name of the bridge the CNI plugin will create.
func pauselessTOML(dir string) (toml, bridge, reason string, err error) {
	toml = fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = %q\n", pauselessPause)
	toml += fmt.Sprintf("\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.%s]\n"+
		"  runtime_type = %q\n  sandboxer = \"shim\"\n  disable_pause_image_pull = true\n", pauselessHandler, runtimeMine)
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(criCNIBinDir, p)); err != nil {
			return toml, "", fmt.Sprintf("no CNI plugin %s: %v", p, err), nil
		}
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", "", err
	}
	bridge = "minp" + hex.EncodeToString(b[:])
	confDir := filepath.Join(dir, "cni", "conf")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return "", "", "", err
	}
	conf, err := json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "mine-e2e-pauseless",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": bridge,
			"isGateway": false, "ipMasq": false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": fmt.Sprintf("10.%d.%d.0/24", 150+b[0]%40, b[1])}}},
				"dataDir": filepath.Join(dir, "cni", "ipam"),
			},
		}},
	})
	if err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-pauseless.conflist"), conf, 0o644); err != nil {
		return "", "", "", err
	}
	toml += fmt.Sprintf("\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [%q]\n  conf_dir = %q\n", criCNIBinDir, confDir)
	return toml, bridge, "", nil
}

// pauselessEnv starts a private containerd configured by pauselessTOML,
// imports busybox and the shmtool image into the CRI namespace (and no
// pause image), and dials its CRI services.
func pauselessEnv(t *testing.T, h *harness) (*criEnv, string) {
	t.Helper()
	p := &harness{
		runtime: h.runtime, snapshotter: h.snapshotter, containerd: h.containerd, ctrPath: h.ctrPath,
		runcShim: h.runcShim, shim: h.shim, shimExes: h.shimExes, imageTar: h.imageTar,
		dir: filepath.Join(h.dir, "pl"), imported: map[string]bool{},
	}
	if err := os.Mkdir(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml, bridge, noNet, err := pauselessTOML(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	if bridge != "" {
		// Runs last: after containerd and its pods are gone.
		t.Cleanup(func() { deleteLink(t, bridge) })
	}
	cfg := daemonConfig{Dir: p.dir, Snapshotter: h.snapshotter, Runtimes: h.d.cfg.Runtimes, PathDirs: h.d.cfg.PathDirs, ExtraTOML: toml}
	t.Cleanup(func() {
		if t.Failed() && p.d != nil {
			t.Logf("containerd log (%s), last lines:\n%s", p.d.cfg.logPath(), p.d.logTail(80))
		}
		if err := p.teardown(); err != nil {
			t.Errorf("teardown of the private containerd: %v", err)
		}
		removeCgroupTree(t, pauselessCgroups)
	})
	if p.d, err = startDaemon(h.containerd, cfg); err != nil {
		t.Fatal(err)
	}
	p.connect(t)
	p.ensureImage(t, criNamespace)

	tool := filepath.Join(h.dir, "shmtool")
	if _, err := os.Stat(tool); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shimBuildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", tool, "github.com/mineshim/mine/test/e2e/shmtool")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build shmtool: %v: %s", err, lastLines(string(out), 10))
		}
	}
	toolBin, err := os.ReadFile(tool)
	if err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(p.dir, "busybox-shm.tar")
	if _, err := imagebuild.WriteFile(tar, imagebuild.Options{
		Ref: pauselessImage, Files: []imagebuild.File{{Path: "shmtool", Mode: 0o755, Data: toolBin}},
	}); err != nil {
		t.Fatal(err)
	}
	if out, code, err := p.runCtr(context.Background(), "-n", criNamespace, "images", "import", "--snapshotter", p.snapshotter, tar); err != nil || code != 0 {
		t.Fatalf("import %s (exit %d, %v): %s", pauselessImage, code, err, out)
	}

	conn, err := grpc.NewClient("unix://"+p.d.cfg.address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e := &criEnv{h: p, rt: cri.NewRuntimeServiceClient(conn), img: cri.NewImageServiceClient(conn), handler: pauselessHandler}
	for _, ref := range []string{pauselessImage, imageRef} {
		e.poll(t, "CRI sees image "+ref, func() (bool, string) {
			st, err := e.img.ImageStatus(e.ctx(t), &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
			if err != nil {
				return false, err.Error()
			}
			return st.GetImage() != nil, "image unknown"
		})
	}
	st, err := e.img.ImageStatus(e.ctx(t), &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: pauselessPause}})
	if err != nil || st.GetImage() != nil {
		t.Fatalf("the sandbox image %s must not exist: %v %v", pauselessPause, st.GetImage(), err)
	}
	return e, noNet
}

// runPauselessPod runs a pod with the pauseless handler.
func (e *criEnv) runPauselessPod(t *testing.T, name string, ns *cri.NamespaceOption, dns *cri.DNSConfig) *criPod {
	t.Helper()
	p := &criPod{logDir: filepath.Join(e.h.dir, "pods", name)}
	if err := os.MkdirAll(p.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.config = &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: newID(t), Namespace: "mine-e2e"},
		Hostname:     name,
		LogDirectory: p.logDir,
		DnsConfig:    dns,
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent:    pauselessCgroups + "/" + name,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
	if ns.Network == cri.NamespaceMode_NODE {
		p.config.Hostname = ""
	}
	resp, err := e.rt.RunPodSandbox(e.ctx(t), &cri.RunPodSandboxRequest{Config: p.config, RuntimeHandler: e.handler})
	if err != nil {
		t.Fatalf("RunPodSandbox %s with handler %s: %v", name, e.handler, err)
	}
	p.id = resp.GetPodSandboxId()
	t.Cleanup(func() {
		if !p.removed {
			e.removePod(t, p)
		}
	})
	return p
}

// execSync runs cmd in container id and fails t unless it exits 0; it
// returns the trimmed stdout.
func (e *criEnv) execSync(t *testing.T, id string, cmd ...string) string {
	t.Helper()
	out, err := e.tryExecSync(t, id, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *criEnv) tryExecSync(t *testing.T, id string, cmd ...string) (string, error) {
	t.Helper()
	resp, err := e.rt.ExecSync(e.ctx(t), &cri.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 10})
	if err != nil {
		return "", fmt.Errorf("ExecSync %q in %s: %w", cmd, id, err)
	}
	if resp.GetExitCode() != 0 {
		return "", fmt.Errorf("ExecSync %q in %s: exit %d, stdout %q, stderr %q", cmd, id, resp.GetExitCode(), resp.GetStdout(), resp.GetStderr())
	}
	return strings.TrimSpace(string(resp.GetStdout())), nil
}

func (e *criEnv) podState(t *testing.T, p *criPod) cri.PodSandboxState {
	t.Helper()
	resp, err := e.rt.PodSandboxStatus(e.ctx(t), &cri.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", p.id, err)
	}
	return resp.GetStatus().GetState()
}

// procStat returns the parent pid and argv[0] of pid.
func procParent(pid int) (int, string) {
	ppid, err := parentPID(pid)
	if err != nil {
		return 0, ""
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return ppid, argv0
}

// holderOf returns the pid of the namespace holder the shim shimPid runs.
func holderOf(t *testing.T, shimPid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if ppid, argv0 := procParent(pid); ppid == shimPid && argv0 == holderArgv0 {
			if found != 0 {
				t.Fatalf("shim %d runs two holders: %d and %d", shimPid, found, pid)
			}
			found = pid
		}
	}
	if found == 0 {
		t.Fatalf("shim %d runs no holder", shimPid)
	}
	return found
}

func nsIno(t *testing.T, pid int, ns string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), &st); err != nil {
		t.Fatalf("namespace %s of %d: %v", ns, pid, err)
	}
	return st.Ino
}

// inNetns returns the processes in the network namespace of inode ino.
func inNetns(ino uint64) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
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

// mountsOf returns the mount points of this mount namespace whose path
// holds s.
func mountsOf(t *testing.T, s string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.Contains(f[4], s) {
			out = append(out, f[4])
		}
	}
	return out
}

// TestCRIPauseless runs pods through containerd's CRI with the handler
// "mine-pauseless" (sandboxer "shim"): no pause image exists, the shim's
// Sandbox API holds each pod's namespaces.
func TestCRIPauseless(t *testing.T) {
	h := requireHarness(t)
	if h.runtime != runtimeMine {
		t.Skipf("the Sandbox API is served by %s only; %s has none", runtimeMine, h.runtime)
	}
	e, noNet := pauselessEnv(t, h)
	podNet := cri.NamespaceMode_POD
	if noNet != "" {
		t.Logf("pods use the host network: %s", noNet)
		podNet = cri.NamespaceMode_NODE
	}
	dns := &cri.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: []string{"mine-e2e.svc.cluster.local", "svc.cluster.local"}, Options: []string{"ndots:5"}}
	wantResolv := "search mine-e2e.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"

	duo := e.runPauselessPod(t, "duo", &cri.NamespaceOption{Network: podNet, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD}, dns)
	srv := e.startContainer(t, duo, "srv", pauselessImage, nil, "sh", "-c", "while :; do echo pong | nc -l -p 7000; done")
	cli := e.startContainer(t, duo, "cli", pauselessImage, nil, "sleep", "3600")
	shims := e.podShims(t)
	holder := holderOf(t, shims[duo.id])

	t.Run("two containers share the pod", func(t *testing.T) {
		if st := e.podState(t, duo); st != cri.PodSandboxState_SANDBOX_READY {
			t.Fatalf("pod state %s", st)
		}
		if len(shims) != 1 {
			t.Errorf("shims %v, want one, the pod's", shims)
		}
		list, err := e.rt.ListContainers(e.ctx(t), &cri.ListContainersRequest{Filter: &cri.ContainerFilter{PodSandboxId: duo.id}})
		if err != nil || len(list.GetContainers()) != 2 {
			t.Fatalf("containers of the pod: %v (%v), want srv and cli only", list.GetContainers(), err)
		}
		for _, id := range []string{srv, cli} {
			_, pid := e.status(t, id)
			for _, ns := range []string{"net", "ipc", "uts"} {
				if nsIno(t, pid, ns) != nsIno(t, holder, ns) {
					t.Errorf("container %s is not in the pod's %s namespace", id, ns)
				}
			}
			if got := e.execSync(t, id, "hostname"); got != "duo" {
				t.Errorf("hostname in %s: %q, want duo", id, got)
			}
			if got := e.execSync(t, id, "cat", "/etc/hostname"); got != "duo" {
				t.Errorf("/etc/hostname in %s: %q, want duo", id, got)
			}
			if got := e.execSync(t, id, "cat", "/etc/resolv.conf"); got != wantResolv {
				t.Errorf("/etc/resolv.conf in %s: %q, want %q", id, got, wantResolv)
			}
		}
		e.poll(t, "cli reaches srv on 127.0.0.1:7000", func() (bool, string) {
			out, err := e.tryExecSync(t, cli, "nc", "-w", "3", "127.0.0.1", "7000")
			if err != nil {
				return false, err.Error()
			}
			return out == "pong", out
		})
		e.execSync(t, srv, "/shmtool", "write", "4242", "hello over sysv")
		if got := e.execSync(t, cli, "/shmtool", "read", "4242"); got != "hello over sysv" {
			t.Errorf("SysV segment read in cli: %q", got)
		}
		e.execSync(t, srv, "sh", "-c", "echo shared > /dev/shm/f")
		if got := e.execSync(t, cli, "cat", "/dev/shm/f"); got != "shared" {
			t.Errorf("/dev/shm/f in cli: %q", got)
		}
	})

	t.Run("shareProcessNamespace", func(t *testing.T) {
		pp := e.runPauselessPod(t, "pidshare", &cri.NamespaceOption{Network: podNet, Pid: cri.NamespaceMode_POD, Ipc: cri.NamespaceMode_POD}, dns)
		a := e.startContainer(t, pp, "a", pauselessImage, nil, "sleep", "3600")
		b := e.startContainer(t, pp, "b", pauselessImage, nil, "sleep", "3601")
		e.poll(t, "b sees a's process", func() (bool, string) {
			out, err := e.tryExecSync(t, b, "ps", "-o", "args")
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(out, "sleep 3600"), out
		})
		if _, err := e.rt.StopContainer(e.ctx(t), &cri.StopContainerRequest{ContainerId: a, Timeout: 0}); err != nil {
			t.Fatalf("StopContainer a: %v", err)
		}
		if st, _ := e.status(t, b); st.GetState() != cri.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("b after a's init was killed: %s", st.GetState())
		}
		if out := e.execSync(t, b, "ps", "-o", "args"); strings.Contains(out, "sleep 3600") || !strings.Contains(out, "sleep 3601") {
			t.Errorf("processes after a's init was killed:\n%s", out)
		}
		if st := e.podState(t, pp); st != cri.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod state %s", st)
		}
	})

	t.Run("hostNetwork", func(t *testing.T) {
		hp := e.runPauselessPod(t, "hostnet", &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD}, nil)
		c := e.startContainer(t, hp, "c", pauselessImage, nil, "sleep", "3600")
		_, pid := e.status(t, c)
		if nsIno(t, pid, "net") != nsIno(t, os.Getpid(), "net") || nsIno(t, pid, "uts") != nsIno(t, os.Getpid(), "uts") {
			t.Errorf("host-network container has a network or UTS namespace of its own")
		}
		host, err := os.Hostname()
		if err != nil {
			t.Fatal(err)
		}
		if got := e.execSync(t, c, "hostname"); got != host {
			t.Errorf("hostname %q, want the host's %q", got, host)
		}
	})

	t.Run("OOMKilled member, pod stays ready", func(t *testing.T) {
		oom := e.startContainer(t, duo, "oom", pauselessImage, &cri.LinuxContainerResources{MemoryLimitInBytes: 16 << 20},
			"sh", "-c", `x=$(head -c 200000000 /dev/zero | tr "\0" a)`)
		st := e.waitExited(t, oom)
		if st.GetExitCode() != 137 || st.GetReason() != "OOMKilled" {
			t.Errorf("exit code %d, reason %q; want 137, OOMKilled", st.GetExitCode(), st.GetReason())
		}
		if st := e.podState(t, duo); st != cri.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod state after a member's OOM kill: %s", st)
		}
		if got := e.execSync(t, cli, "echo", "alive"); got != "alive" {
			t.Errorf("cli after the OOM kill: %q", got)
		}
	})

	t.Run("containerd killed and restarted", func(t *testing.T) {
		if err := e.h.d.crash(); err != nil {
			t.Fatal(err)
		}
		if err := e.h.d.restart(); err != nil {
			t.Fatal(err)
		}
		e.h.connect(t)
		e.poll(t, "pod duo ready after the restart", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), criCallTimeout)
			defer cancel()
			resp, err := e.rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: duo.id})
			if err != nil {
				return false, err.Error()
			}
			return resp.GetStatus().GetState() == cri.PodSandboxState_SANDBOX_READY, resp.GetStatus().GetState().String()
		})
		if got := e.execSync(t, cli, "hostname"); got != "duo" {
			t.Errorf("hostname after the restart: %q", got)
		}
		if nsIno(t, holder, "net") == 0 || holderOf(t, shims[duo.id]) != holder {
			t.Errorf("the holder changed across the restart")
		}
	})

	t.Run("stop and remove leave nothing", func(t *testing.T) {
		netIno := nsIno(t, holder, "net")
		shim := shims[duo.id]
		holderCgroup := pauselessCgroups + "/duo/" + duo.id
		if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", holder)); err != nil || !strings.Contains(string(cg), holderCgroup) {
			t.Errorf("holder's cgroups %q (%v), want %s", cg, err, holderCgroup)
		}
		e.removePod(t, duo)
		deadline := time.Now().Add(cleanupTimeout)
		for {
			var left []string
			if unix.Kill(holder, 0) == nil {
				left = append(left, fmt.Sprintf("holder %d", holder))
			}
			if unix.Kill(shim, 0) == nil {
				left = append(left, fmt.Sprintf("shim %d", shim))
			}
			if pids := inNetns(netIno); podNet == cri.NamespaceMode_POD && len(pids) > 0 {
				left = append(left, fmt.Sprintf("processes in the pod netns %v", pids))
			}
			if m := mountsOf(t, duo.id); len(m) > 0 {
				left = append(left, fmt.Sprintf("mounts %v", m))
			}
			if _, ok := e.podShims(t)[duo.id]; ok {
				left = append(left, "a shim with the pod's id")
			}
			if m, _ := filepath.Glob("/sys/fs/cgroup/*" + holderCgroup); len(m) > 0 {
				left = append(left, fmt.Sprintf("the holder's cgroups %v", m))
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v after removing the pod, left: %s", cleanupTimeout, strings.Join(left, "; "))
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, id := range []string{srv, cli} {
			e.h.assertNoTraces(t, criNamespace, id, "")
		}
	})
}
