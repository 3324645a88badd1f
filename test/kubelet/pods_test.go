package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/internal/testenv"
)

// The parts of the Kubernetes API objects the tests read and write, as the
// kubelet encodes them in JSON.
type (
	pod struct {
		APIVersion string    `json:"apiVersion"`
		Kind       string    `json:"kind"`
		Metadata   metadata  `json:"metadata"`
		Spec       podSpec   `json:"spec"`
		Status     podStatus `json:"status,omitempty"`
	}
	metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace,omitempty"`
		UID       string `json:"uid,omitempty"`
	}
	podSpec struct {
		HostNetwork                   bool        `json:"hostNetwork"`
		RestartPolicy                 string      `json:"restartPolicy,omitempty"`
		TerminationGracePeriodSeconds *int64      `json:"terminationGracePeriodSeconds,omitempty"`
		Containers                    []container `json:"containers"`
	}
	container struct {
		Name            string     `json:"name"`
		Image           string     `json:"image"`
		ImagePullPolicy string     `json:"imagePullPolicy"`
		Command         []string   `json:"command"`
		Resources       *resources `json:"resources,omitempty"`
		LivenessProbe   *probe     `json:"livenessProbe,omitempty"`
	}
	resources struct {
		Limits map[string]string `json:"limits,omitempty"`
	}
	probe struct {
		Exec             *execAction `json:"exec"`
		PeriodSeconds    int         `json:"periodSeconds"`
		FailureThreshold int         `json:"failureThreshold"`
		TimeoutSeconds   int         `json:"timeoutSeconds"`
	}
	execAction struct {
		Command []string `json:"command"`
	}
	podStatus struct {
		Phase             string            `json:"phase,omitempty"`
		ContainerStatuses []containerStatus `json:"containerStatuses,omitempty"`
	}
	containerStatus struct {
		Name         string         `json:"name"`
		RestartCount int            `json:"restartCount"`
		ContainerID  string         `json:"containerID"`
		State        containerState `json:"state"`
		LastState    containerState `json:"lastState"`
	}
	containerState struct {
		Running    *struct{}   `json:"running,omitempty"`
		Waiting    *waiting    `json:"waiting,omitempty"`
		Terminated *terminated `json:"terminated,omitempty"`
	}
	waiting struct {
		Reason string `json:"reason"`
	}
	terminated struct {
		ExitCode    int    `json:"exitCode"`
		Reason      string `json:"reason"`
		ContainerID string `json:"containerID"`
	}
)

func (s containerState) String() string {
	switch {
	case s.Running != nil:
		return "running"
	case s.Waiting != nil:
		return "waiting (" + s.Waiting.Reason + ")"
	case s.Terminated != nil:
		return fmt.Sprintf("terminated (exit %d, %s)", s.Terminated.ExitCode, s.Terminated.Reason)
	}
	return "none"
}

func (p *pod) container(name string) (containerStatus, bool) {
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == name {
			return c, true
		}
	}
	return containerStatus{}, false
}

func (p *pod) describe() string {
	var parts []string
	for _, c := range p.Status.ContainerStatuses {
		parts = append(parts, fmt.Sprintf("%s: %s, restarts %d, last %s", c.Name, c.State, c.RestartCount, c.LastState))
	}
	return fmt.Sprintf("phase %q; %s", p.Status.Phase, strings.Join(parts, "; "))
}

// busybox is a container of the busybox image running sh -c script.
func busybox(name, script string) container {
	return container{Name: name, Image: busyboxImage, ImagePullPolicy: "Never", Command: []string{"sh", "-c", script}}
}

// sleeper is a shell script that runs until SIGTERM.
const sleeper = `trap "exit 0" TERM; while true; do sleep 1; done`

// staticPod writes the manifest of a pod named podPrefix+name and returns
// the name the kubelet gives it (NAME-NODE). A cleanup removes the
// manifest and waits until the pod's sandbox is no longer ready.
func staticPod(t *testing.T, name string, spec podSpec) string {
	t.Helper()
	spec.HostNetwork = true
	p := pod{APIVersion: "v1", Kind: "Pod", Metadata: metadata{Name: podPrefix + name, Namespace: "default"}, Spec: spec}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	dir := env.kube.Config.ManifestDir()
	path := filepath.Join(dir, p.Metadata.Name+".json")
	// The kubelet skips dot files: write one, then rename it into place.
	tmp := filepath.Join(dir, "."+p.Metadata.Name+".json")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	full := p.Metadata.Name + "-" + nodeName
	t.Cleanup(func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
		if err := poll(podTimeout, func() (bool, string) {
			sb, err := sandboxes(full, true)
			if err != nil {
				return false, err.Error()
			}
			return len(sb) == 0, fmt.Sprintf("%d ready sandboxes", len(sb))
		}); err != nil {
			t.Errorf("pod %s after its manifest was removed: %v", full, err)
		}
	})
	return full
}

// getPod returns the kubelet's view of the pod named name.
func getPod(name string) (*pod, error) {
	var list struct {
		Items []pod `json:"items"`
	}
	if err := env.kube.Get("/pods", &list); err != nil {
		return nil, err
	}
	for i := range list.Items {
		if list.Items[i].Metadata.Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, fmt.Errorf("the kubelet has no pod %s", name)
}

// waitPod polls the kubelet's view of pod name until cond holds, and
// returns that view.
func waitPod(t *testing.T, name, what string, cond func(p *pod) bool) *pod {
	t.Helper()
	var last *pod
	err := poll(podTimeout, func() (bool, string) {
		p, err := getPod(name)
		if err != nil {
			return false, err.Error()
		}
		last = p
		return cond(p), p.describe()
	})
	if err != nil {
		t.Fatalf("pod %s: %s: %v", name, what, err)
	}
	return last
}

// running reports whether every named container is running.
func running(names ...string) func(p *pod) bool {
	return func(p *pod) bool {
		for _, n := range names {
			c, ok := p.container(n)
			if !ok || c.State.Running == nil {
				return false
			}
		}
		return true
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return c
}

// sandboxes returns the CRI pod sandboxes of the pod named name (ready
// ones only when ready is set).
func sandboxes(name string, ready bool) ([]*cri.PodSandbox, error) {
	c, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	f := &cri.PodSandboxFilter{LabelSelector: map[string]string{"io.kubernetes.pod.name": name}}
	if ready {
		f.State = &cri.PodSandboxStateValue{State: cri.PodSandboxState_SANDBOX_READY}
	}
	resp, err := env.rt.ListPodSandbox(c, &cri.ListPodSandboxRequest{Filter: f})
	if err != nil {
		return nil, err
	}
	return resp.GetItems(), nil
}

// sandboxOf returns the ID of the one ready sandbox of pod name.
func sandboxOf(t *testing.T, name string) string {
	t.Helper()
	sb, err := sandboxes(name, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(sb) != 1 {
		t.Fatalf("pod %s: want one ready sandbox, have %d", name, len(sb))
	}
	return sb[0].GetId()
}

// criID strips the runtime prefix of a Kubernetes container ID
// (containerd://ID).
func criID(id string) string {
	_, after, ok := strings.Cut(id, "://")
	if !ok {
		return id
	}
	return after
}

// podShim returns the pid of the one shim process serving sandbox sb, and
// fails t unless it is the mine shim.
func podShim(t *testing.T, sb string) int {
	t.Helper()
	procs, err := testenv.ShimProcesses(env.ctrd.Address(), []string{env.shim})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range procs {
		if id, _ := p.Flag("id"); id == sb {
			pids = append(pids, p.Pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("want one shim process for sandbox %s, have %v", sb, pids)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if exe != env.shim {
		t.Fatalf("the shim of sandbox %s runs %s, want the mine shim %s", sb, exe, env.shim)
	}
	return pids[0]
}
