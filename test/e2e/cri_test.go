package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

const (
	// criStopImage is the busybox image whose config has StopSignal
	// SIGUSR1.
	criStopImage = "localhost/mine-e2e/busybox-usr1:1"

	// criCallTimeout bounds one CRI call.
	criCallTimeout = 30 * time.Second
	// criWaitTimeout bounds the polls for a state the CRI API has no
	// blocking call for (a container exited, a log line written).
	criWaitTimeout = 20 * time.Second
	// criPollInterval is the period of those polls.
	criPollInterval = 20 * time.Millisecond
)

// criEnv is what the CRI tests drive: the CRI services of the harness's
// containerd and the runtime handler under test.
type criEnv struct {
	h       *harness
	rt      cri.RuntimeServiceClient
	img     cri.ImageServiceClient
	handler string // CRI runtime handler of h.runtime
}

// setupCRI builds and imports the images, dials the CRI socket and waits
// until the CRI plugin knows the images. A cleanup removes the pods' bridge.
func setupCRI(t *testing.T, h *harness) *criEnv {
	t.Helper()
	e := &criEnv{h: h}
	switch h.runtime {
	case runtimeMine:
		e.handler = "mine"
	case runtimeRunc:
		e.handler = "runc"
	default:
		t.Skipf("no CRI runtime handler is configured for %s", h.runtime)
	}
	if criNet.bridge != "" {
		t.Cleanup(func() { deleteLink(t, criNet.bridge) })
	}

	pause := filepath.Join(h.dir, "pause")
	if _, err := os.Stat(pause); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shimBuildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", pause, "github.com/mineshim/mine/test/e2e/pause")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("cannot build the pause program (%v): %s", err, lastLines(string(out), 10))
		}
	}
	pauseBin, err := os.ReadFile(pause)
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]imagebuild.Options{
		criPauseImage: {
			Ref:   criPauseImage,
			Files: []imagebuild.File{{Path: "pause", Mode: 0o755, Data: pauseBin}},
			Cmd:   []string{"/pause"},
		},
		criStopImage: {Ref: criStopImage, StopSignal: "SIGUSR1"},
	}
	for _, ref := range sortedKeys(images) {
		tar := filepath.Join(h.dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
		if _, err := imagebuild.WriteFile(tar, images[ref]); err != nil {
			t.Fatalf("build image %s: %v", ref, err)
		}
		out, code, err := h.runCtr(context.Background(), "-n", criNamespace, "images", "import", "--snapshotter", h.snapshotter, tar)
		if err != nil || code != 0 {
			t.Fatalf("import %s into %s (exit %d, %v): %s", ref, criNamespace, code, err, out)
		}
	}
	h.ensureImage(t, criNamespace)

	conn, err := grpc.NewClient("unix://"+h.d.cfg.address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial CRI: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	e.rt = cri.NewRuntimeServiceClient(conn)
	e.img = cri.NewImageServiceClient(conn)

	v, err := e.rt.Version(e.ctx(t), &cri.VersionRequest{})
	if err != nil {
		t.Fatalf("CRI Version: %v", err)
	}
	t.Logf("CRI: %s %s (CRI %s), handler %s, pod network: %s", v.GetRuntimeName(), v.GetRuntimeVersion(),
		v.GetRuntimeApiVersion(), e.handler, podNetwork())

	// The CRI plugin learns of imported images from containerd's events.
	for _, ref := range []string{criPauseImage, criStopImage, imageRef} {
		e.poll(t, "CRI sees image "+ref, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), criCallTimeout)
			defer cancel()
			st, err := e.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
			if err != nil {
				return false, err.Error()
			}
			return st.GetImage() != nil, "image unknown"
		})
	}
	return e
}

func podNetwork() string {
	if criNet.bridge == "" {
		return "host (" + criNet.hostReason + ")"
	}
	return "CNI bridge " + criNet.bridge + " " + criNet.subnet
}

// ctx returns a context for one CRI call.
func (e *criEnv) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), criCallTimeout)
	t.Cleanup(cancel)
	return ctx
}

// poll calls f until it reports done, or fails t after criWaitTimeout with
// the last state f described.
func (e *criEnv) poll(t *testing.T, what string, f func() (done bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(criWaitTimeout)
	tick := time.NewTicker(criPollInterval)
	defer tick.Stop()
	for {
		done, state := f()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, criWaitTimeout, state)
		}
		<-tick.C
	}
}

// criPod is a pod sandbox of a test.
type criPod struct {
	id      string
	config  *cri.PodSandboxConfig
	logDir  string
	removed bool
}

// runPod runs a pod sandbox with the handler under test. A cleanup stops
// and removes it unless the test did.
func (e *criEnv) runPod(t *testing.T, name string) *criPod {
	t.Helper()
	p := &criPod{logDir: filepath.Join(e.h.dir, "pods", name)}
	if err := os.MkdirAll(p.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	uid := newID(t)
	p.config = &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "mine-e2e"},
		Hostname:     name,
		LogDirectory: p.logDir,
		// The kubelet's defaults: a PID namespace per container.
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{
			Network: cri.NamespaceMode_POD, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD,
		}}},
	}
	if criNet.bridge == "" {
		p.config.Linux.SecurityContext.NamespaceOptions.Network = cri.NamespaceMode_NODE
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

// removePod stops and removes a pod sandbox with its containers.
func (e *criEnv) removePod(t *testing.T, p *criPod) {
	t.Helper()
	if _, err := e.rt.StopPodSandbox(e.ctx(t), &cri.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Errorf("StopPodSandbox %s: %v", p.id, err)
	}
	if _, err := e.rt.RemovePodSandbox(e.ctx(t), &cri.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Errorf("RemovePodSandbox %s: %v", p.id, err)
		return
	}
	p.removed = true
}

// startContainer creates and starts a container in pod p. Its output goes
// to LogDirectory/name.log.
func (e *criEnv) startContainer(t *testing.T, p *criPod, name, image string, res *cri.LinuxContainerResources, cmd ...string) string {
	t.Helper()
	cfg := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: name},
		Image:    &cri.ImageSpec{Image: image},
		Command:  cmd,
		LogPath:  name + ".log",
		Linux: &cri.LinuxContainerConfig{
			Resources:       res,
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: p.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := e.rt.CreateContainer(e.ctx(t), &cri.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.config})
	if err != nil {
		t.Fatalf("CreateContainer %s in pod %s: %v", name, p.config.GetMetadata().GetName(), err)
	}
	id := resp.GetContainerId()
	if _, err := e.rt.StartContainer(e.ctx(t), &cri.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", name, err)
	}
	return id
}

// status returns the status of a container, and its pid from the verbose
// info (0 when it has none).
func (e *criEnv) status(t *testing.T, id string) (*cri.ContainerStatus, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), criCallTimeout)
	defer cancel()
	resp, err := e.rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if raw := resp.GetInfo()["info"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			t.Fatalf("ContainerStatus %s: verbose info: %v", id, err)
		}
	}
	return resp.GetStatus(), info.Pid
}

// waitExited polls until the container has exited and returns its status.
func (e *criEnv) waitExited(t *testing.T, id string) *cri.ContainerStatus {
	t.Helper()
	var st *cri.ContainerStatus
	e.poll(t, "container "+id+" exited", func() (bool, string) {
		st, _ = e.status(t, id)
		return st.GetState() == cri.ContainerState_CONTAINER_EXITED, st.GetState().String()
	})
	return st
}

// waitLog polls until the container's log holds line.
func (e *criEnv) waitLog(t *testing.T, p *criPod, name, line string) {
	t.Helper()
	path := filepath.Join(p.logDir, name+".log")
	e.poll(t, fmt.Sprintf("%q in %s", line, path), func() (bool, string) {
		data, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		// CRI log lines: TIMESTAMP STREAM TAG CONTENT.
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[3] == line {
				return true, ""
			}
		}
		return false, fmt.Sprintf("log:\n%s", data)
	})
}

// podShims returns the shim processes of the CRI namespace, by their -id.
func (e *criEnv) podShims(t *testing.T) map[string]int {
	t.Helper()
	procs, err := shimProcesses(e.h.d.cfg.address(), e.h.shimExes)
	if err != nil {
		t.Fatal(err)
	}
	shims := map[string]int{}
	for _, p := range procs {
		if ns, _ := p.flag("namespace"); ns != criNamespace {
			continue
		}
		id, _ := p.flag("id")
		if other, dup := shims[id]; dup {
			t.Errorf("two shims with -id %s: pids %d and %d", id, other, p.pid)
		}
		shims[id] = p.pid
	}
	return shims
}

// TestCRI drives the shim through containerd's CRI plugin the way the
// kubelet does: two pods with the runtime handler "mine", three and two
// containers in them, exec, stats, stop with the image's stop signal and
// with a timeout, an OOM kill, and pod removal.
func TestCRI(t *testing.T) {
	h := requireHarness(t)
	e := setupCRI(t, h)

	web := e.runPod(t, "web")
	batch := e.runPod(t, "batch")
	pods := []*criPod{web, batch}

	webMain := e.startContainer(t, web, "main", imageRef, nil, "sh", "-c", "echo hello from $(hostname); exec sleep 3600")
	webStop := e.startContainer(t, web, "usr1", criStopImage, nil,
		"sh", "-c", `trap 'echo got USR1; exit 42' USR1; echo ready; sleep 3600 & wait`)
	webSleep := e.startContainer(t, web, "sleep", imageRef, nil, "sleep", "3600")
	batchExec := e.startContainer(t, batch, "exec", imageRef, nil, "sleep", "3600")
	batchOOM := e.startContainer(t, batch, "oom", imageRef, &cri.LinuxContainerResources{MemoryLimitInBytes: 16 << 20},
		"sh", "-c", `x=$(head -c 200000000 /dev/zero | tr "\0" a)`)
	containers := map[*criPod][]string{web: {webMain, webStop, webSleep}, batch: {batchExec, batchOOM}}

	t.Run("pods ready", func(t *testing.T) {
		for _, p := range pods {
			resp, err := e.rt.PodSandboxStatus(e.ctx(t), &cri.PodSandboxStatusRequest{PodSandboxId: p.id})
			if err != nil {
				t.Fatalf("PodSandboxStatus %s: %v", p.id, err)
			}
			st := resp.GetStatus()
			if st.GetState() != cri.PodSandboxState_SANDBOX_READY || st.GetRuntimeHandler() != e.handler {
				t.Errorf("pod %s: state %s, handler %q; want ready, %q", p.config.Metadata.Name, st.GetState(), st.GetRuntimeHandler(), e.handler)
			}
			if criNet.bridge != "" {
				_, subnet, _ := net.ParseCIDR(criNet.subnet)
				if ip := net.ParseIP(st.GetNetwork().GetIp()); ip == nil || !subnet.Contains(ip) {
					t.Errorf("pod %s: IP %q, want one in %s", p.config.Metadata.Name, st.GetNetwork().GetIp(), criNet.subnet)
				}
			}
		}
		e.waitLog(t, web, "main", "hello from web")
	})

	t.Run("one shim per pod", func(t *testing.T) {
		shims := e.podShims(t)
		if len(shims) != len(pods) {
			t.Errorf("%d shims for %d pods with 3 and 2 containers: %v", len(shims), len(pods), shims)
		}
		for _, p := range pods {
			shim, ok := shims[p.id]
			if !ok {
				t.Errorf("no shim with -id %s (the sandbox of pod %s); shims: %v", p.id, p.config.Metadata.Name, shims)
				continue
			}
			// The shim is the subreaper of its containers: each
			// running container's init is its child.
			for _, id := range containers[p] {
				st, pid := e.status(t, id)
				if st.GetState() != cri.ContainerState_CONTAINER_RUNNING {
					continue // the OOM container may be gone already
				}
				ppid, err := parentPID(pid)
				if errors.Is(err, os.ErrNotExist) && pollUntil(5*time.Second, func() bool {
					st, _ := e.status(t, id)
					return st.GetState() != cri.ContainerState_CONTAINER_RUNNING
				}) {
					continue // it ended between the status and the read
				}
				if err != nil || ppid != shim {
					t.Errorf("container %s of pod %s: pid %d has parent %d (%v), want its pod's shim %d",
						st.GetMetadata().GetName(), p.config.Metadata.Name, pid, ppid, err, shim)
				}
			}
		}
	})

	t.Run("ExecSync", func(t *testing.T) {
		resp, err := e.rt.ExecSync(e.ctx(t), &cri.ExecSyncRequest{
			ContainerId: batchExec,
			Cmd:         []string{"sh", "-c", "echo out; hostname; echo err >&2; exit 3"},
			Timeout:     10,
		})
		if err != nil {
			t.Fatalf("ExecSync: %v", err)
		}
		if string(resp.GetStdout()) != "out\nbatch\n" || string(resp.GetStderr()) != "err\n" || resp.GetExitCode() != 3 {
			t.Errorf("ExecSync: stdout %q, stderr %q, exit %d; want \"out\\nbatch\\n\", \"err\\n\", 3",
				resp.GetStdout(), resp.GetStderr(), resp.GetExitCode())
		}
	})

	t.Run("ExecSync timeout kills the exec", func(t *testing.T) {
		start := time.Now()
		resp, err := e.rt.ExecSync(e.ctx(t), &cri.ExecSyncRequest{ContainerId: batchExec, Cmd: []string{"sleep", "100"}, Timeout: 1})
		elapsed := time.Since(start)
		if err == nil {
			t.Errorf("ExecSync of sleep 100 with timeout 1 s returned exit %d after %v, want a timeout error", resp.GetExitCode(), elapsed)
		} else if !strings.Contains(err.Error(), "timeout") {
			t.Errorf("ExecSync of sleep 100 with timeout 1 s: %v, want a timeout error", err)
		}
		if elapsed > 10*time.Second {
			t.Errorf("ExecSync with timeout 1 s returned after %v", elapsed)
		}
		ps, err := e.rt.ExecSync(e.ctx(t), &cri.ExecSyncRequest{ContainerId: batchExec, Cmd: []string{"ps", "-o", "pid,args"}, Timeout: 10})
		if err != nil || ps.GetExitCode() != 0 {
			t.Fatalf("ExecSync ps: %v, exit %d, stderr %q", err, ps.GetExitCode(), ps.GetStderr())
		}
		for _, l := range strings.Split(string(ps.GetStdout()), "\n") {
			if strings.HasSuffix(strings.TrimSpace(l), "sleep 100") {
				t.Errorf("the timed out exec is still running:\n%s", ps.GetStdout())
			}
		}
	})

	t.Run("ContainerStats", func(t *testing.T) {
		resp, err := e.rt.ContainerStats(e.ctx(t), &cri.ContainerStatsRequest{ContainerId: batchExec})
		if err != nil {
			t.Fatalf("ContainerStats: %v", err)
		}
		st := resp.GetStats()
		if st.GetMemory().GetUsageBytes().GetValue() == 0 || st.GetMemory().GetWorkingSetBytes().GetValue() == 0 {
			t.Errorf("memory usage %d, working set %d; want both > 0 (stats %v)",
				st.GetMemory().GetUsageBytes().GetValue(), st.GetMemory().GetWorkingSetBytes().GetValue(), st)
		}
		if st.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
			t.Errorf("cpu usage 0 ns, want > 0 (stats %v)", st)
		}
		if st.GetAttributes().GetId() != batchExec {
			t.Errorf("stats of %q, want %s", st.GetAttributes().GetId(), batchExec)
		}
	})

	t.Run("StopContainer sends the image's stop signal", func(t *testing.T) {
		e.waitLog(t, web, "usr1", "ready")
		start := time.Now()
		if _, err := e.rt.StopContainer(e.ctx(t), &cri.StopContainerRequest{ContainerId: webStop, Timeout: 10}); err != nil {
			t.Fatalf("StopContainer: %v", err)
		}
		elapsed := time.Since(start)
		st, _ := e.status(t, webStop)
		// 42 is the exit code of the USR1 trap. SIGTERM, which the shell
		// as PID 1 ignores, would have ended in SIGKILL after 10 s: 137.
		if st.GetState() != cri.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 42 {
			t.Errorf("after StopContainer: state %s, exit code %d, reason %q; want exited, 42 (the SIGUSR1 trap)",
				st.GetState(), st.GetExitCode(), st.GetReason())
		}
		// The kill after the timeout would take 10 s at least.
		if elapsed > 9*time.Second {
			t.Errorf("StopContainer took %v, want the trap to end it before the timeout", elapsed)
		}
		e.waitLog(t, web, "usr1", "got USR1")
	})

	t.Run("StopContainer kills after the timeout", func(t *testing.T) {
		start := time.Now()
		if _, err := e.rt.StopContainer(e.ctx(t), &cri.StopContainerRequest{ContainerId: webSleep, Timeout: 1}); err != nil {
			t.Fatalf("StopContainer: %v", err)
		}
		elapsed := time.Since(start)
		st, _ := e.status(t, webSleep)
		if st.GetState() != cri.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 137 {
			t.Errorf("after StopContainer: state %s, exit code %d, reason %q; want exited, 137",
				st.GetState(), st.GetExitCode(), st.GetReason())
		}
		if elapsed > 10*time.Second {
			t.Errorf("StopContainer with timeout 1 s took %v", elapsed)
		}
	})

	t.Run("OOMKilled", func(t *testing.T) {
		st := e.waitExited(t, batchOOM)
		if st.GetExitCode() != 137 || st.GetReason() != "OOMKilled" {
			t.Errorf("container over its 16 MiB limit: exit code %d, reason %q, message %q; want 137, OOMKilled",
				st.GetExitCode(), st.GetReason(), st.GetMessage())
		}
		// The pod's other container is not affected.
		if st, _ := e.status(t, batchExec); st.GetState() != cri.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container exec of the same pod: %s, want running", st.GetState())
		}
	})

	t.Run("RemovePodSandbox", func(t *testing.T) {
		sockets := map[string]string{}
		for _, p := range pods {
			socket, err := shimSocket(h.bundleDir(criNamespace, p.id))
			if err != nil {
				t.Fatalf("shim address of pod %s: %v", p.config.Metadata.Name, err)
			}
			sockets[p.id] = socket
		}
		for _, p := range pods {
			e.removePod(t, p)
		}
		list, err := e.rt.ListPodSandbox(e.ctx(t), &cri.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list.GetItems() {
			if slices.ContainsFunc(pods, func(p *criPod) bool { return p.id == s.GetId() }) {
				t.Errorf("pod %s still listed after RemovePodSandbox: %s", s.GetId(), s.GetState())
			}
		}
		cs, err := e.rt.ListContainers(e.ctx(t), &cri.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(cs.GetContainers()); n != 0 {
			t.Errorf("%d containers still listed after removing their pods", n)
		}
		for _, p := range pods {
			h.assertNoTraces(t, criNamespace, p.id, sockets[p.id])
			for _, id := range containers[p] {
				h.assertNoTraces(t, criNamespace, id, "")
			}
		}
		if shims := e.podShims(t); len(shims) != 0 {
			t.Errorf("shims left after removing every pod: %v", shims)
		}
	})
}

// parentPID returns the parent of process pid.
func parentPID(pid int) (int, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no pid")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("malformed /proc/%d/stat: %q", pid, s)
	}
	return strconv.Atoi(fields[1])
}

// deleteLink removes the network interface name (the pods' bridge, which the
// CNI bridge plugin leaves behind).
func deleteLink(t *testing.T, name string) {
	if _, err := net.InterfaceByName(name); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "link", "delete", name).CombinedOutput(); err != nil {
		t.Logf("delete the pods' bridge %s: %v: %s", name, err, out)
	}
}
