package compat

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

const criNamespace = "k8s.io"

// TestCRIPod runs one host-network pod with two containers through each
// release's CRI plugin with the runtime handler "mine", configured as
// docs/kubernetes.md shows. containerd 1.6, 1.7 and 2.2 start the shim once per
// container; the shim must group the pod's containers into the sandbox's
// shim (one shim for the pod, the parent of every container).
func TestCRIPod(t *testing.T) {
	if setup.skip != "" {
		t.Skip(setup.skip)
	}
	pauseBin := filepath.Join(setup.dir, "pause")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", pauseBin, "github.com/mineshim/mine/test/e2e/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build the pause program (%v): %s", err, out)
	}
	data, err := os.ReadFile(pauseBin)
	if err != nil {
		t.Fatal(err)
	}
	pauseTar := filepath.Join(setup.dir, "pause.tar")
	if _, err := imagebuild.WriteFile(pauseTar, imagebuild.Options{
		Ref: pauseImage, Files: []imagebuild.File{{Path: "pause", Mode: 0o755, Data: data}}, Cmd: []string{"/pause"},
	}); err != nil {
		t.Fatal(err)
	}

	for _, r := range releases {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, r)
			for _, tar := range []string{pauseTar, setup.imageTar} {
				if out, code := e.runCtr(t, "-n", criNamespace, "images", "import", "--snapshotter", e.snapshotter, tar); code != 0 {
					t.Fatalf("ctr images import %s: exit %d: %s", tar, code, out)
				}
			}
			conn, err := grpc.NewClient("unix://"+e.d.cfg.address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			rt, img := cri.NewRuntimeServiceClient(conn), cri.NewImageServiceClient(conn)
			call := func() context.Context {
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				t.Cleanup(cancel)
				return ctx
			}
			for _, ref := range []string{pauseImage, imageRef} {
				poll(t, "CRI sees image "+ref, func() (bool, string) {
					st, err := img.ImageStatus(call(), &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
					if err != nil {
						return false, err.Error()
					}
					return st.GetImage() != nil, "unknown"
				})
			}

			ns := &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD}
			podCfg := &cri.PodSandboxConfig{
				Metadata:     &cri.PodSandboxMetadata{Name: "compat", Uid: newID(t, "uid"), Namespace: "mine-compat"},
				LogDirectory: filepath.Join(e.d.cfg.Dir, "pods"),
				Linux:        &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: ns}},
			}
			pod, err := rt.RunPodSandbox(call(), &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "mine"})
			if err != nil {
				t.Fatalf("RunPodSandbox with handler mine: %v", err)
			}
			podID := pod.GetPodSandboxId()
			removed := false
			t.Cleanup(func() {
				if !removed {
					rt.StopPodSandbox(call(), &cri.StopPodSandboxRequest{PodSandboxId: podID})
					rt.RemovePodSandbox(call(), &cri.RemovePodSandboxRequest{PodSandboxId: podID})
				}
			})

			var ids []string
			for _, name := range []string{"one", "two"} {
				c, err := rt.CreateContainer(call(), &cri.CreateContainerRequest{PodSandboxId: podID, SandboxConfig: podCfg, Config: &cri.ContainerConfig{
					Metadata: &cri.ContainerMetadata{Name: name},
					Image:    &cri.ImageSpec{Image: imageRef},
					Command:  []string{"sleep", "3600"},
					LogPath:  name + ".log",
					Linux:    &cri.LinuxContainerConfig{SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: ns}},
				}})
				if err != nil {
					t.Fatalf("CreateContainer %s: %v", name, err)
				}
				if _, err := rt.StartContainer(call(), &cri.StartContainerRequest{ContainerId: c.GetContainerId()}); err != nil {
					t.Fatalf("StartContainer %s: %v", name, err)
				}
				ids = append(ids, c.GetContainerId())
			}

			resp, err := rt.ExecSync(call(), &cri.ExecSyncRequest{ContainerId: ids[1], Cmd: []string{"sh", "-c", "echo exec-ok; exit 2"}, Timeout: 10})
			if err != nil || string(resp.GetStdout()) != "exec-ok\n" || resp.GetExitCode() != 2 {
				t.Errorf("ExecSync: stdout %q, exit %d, err %v; want \"exec-ok\\n\", 2", resp.GetStdout(), resp.GetExitCode(), err)
			}

			// One shim for the pod, whatever the number of containers,
			// and it is the parent of each container's init.
			shims := criShims(t, e)
			if len(shims) != 1 || shims[podID] == 0 {
				t.Errorf("shims of the CRI namespace: %v; want one, with -id %s (the pod)", shims, podID)
			}
			for _, id := range ids {
				st, err := rt.ContainerStatus(call(), &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
				if err != nil {
					t.Fatal(err)
				}
				var info struct {
					Pid int `json:"pid"`
				}
				json.Unmarshal([]byte(st.GetInfo()["info"]), &info)
				if ppid, err := parentPID(info.Pid); err != nil || ppid != shims[podID] || st.GetStatus().GetState() != cri.ContainerState_CONTAINER_RUNNING {
					t.Errorf("container %s: %s, pid %d with parent %d (%v); want running under the pod's shim %d",
						st.GetStatus().GetMetadata().GetName(), st.GetStatus().GetState(), info.Pid, ppid, err, shims[podID])
				}
			}

			if _, err := rt.StopPodSandbox(call(), &cri.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
				t.Errorf("StopPodSandbox: %v", err)
			}
			if _, err := rt.RemovePodSandbox(call(), &cri.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
				t.Fatalf("RemovePodSandbox: %v", err)
			}
			removed = true
			poll(t, "no shim left after RemovePodSandbox", func() (bool, string) {
				shims := criShims(t, e)
				return len(shims) == 0, fmt.Sprint(shims)
			})
		})
	}
}

// criShims returns the shims of the CRI namespace by -id.
func criShims(t *testing.T, e *env) map[string]int {
	t.Helper()
	procs, err := e.shims()
	if err != nil {
		t.Fatal(err)
	}
	shims := map[string]int{}
	for _, p := range procs {
		if ns, _ := p.flag("namespace"); ns == criNamespace {
			id, _ := p.flag("id")
			shims[id] = p.pid
		}
	}
	return shims
}

// poll calls f until it reports done, or fails t after cleanupTimeout.
func poll(t *testing.T, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(cleanupTimeout)
	for {
		done, state := f()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, cleanupTimeout, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.Atoi(f[1])
}
