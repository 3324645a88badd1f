// Package kubelet tests the mine shim under a real kubelet, through
// containerd's CRI plugin, the way a Kubernetes node runs it.
//
// TestMain starts, through package testenv, a private containerd v2.4.2
// whose CRI default runtime is the mine shim (runtime_type
// io.containerd.mine.v2: RuntimeClass would need an API server), and a
// standalone kubelet (no API server; static pods from a manifest directory;
// cgroupfs driver; failCgroupV1 false on this cgroup v1 host; swap allowed;
// no disk eviction or image GC; its root, pod-log directory and pod cgroup
// root private to the test). The busybox image (package imagebuild) and a
// pause image (package pause) are imported into containerd's k8s.io
// namespace: nothing is pulled.
//
// The tests write static pod manifests and watch the pods through the
// kubelet's read-only API (/pods, /stats/summary) and through CRI (the
// k8s.io/cri-api client): a pod of two containers whose output reaches the
// kubelet's log files; a liveness exec probe that starts failing and makes
// the kubelet restart the container, with hundreds of ExecSync calls through
// the shim and no descriptor or goroutine left behind; a container restarted
// per restartPolicy; an OOM kill reported as OOMKilled; a removed manifest
// that stops the pod within its grace period and leaves no shim, mount or
// cgroup; CPU and memory statistics.
//
// Needs root, runc, a static busybox, containerd v2.4.2
// (hack/install-deps.sh) and the kubelet (hack/install-kubelet.sh);
// without one of them every test skips and says which. The kubelet sets
// some kernel tunables when it starts; they are put back when it stops.
// It also uses /var/lib/kubelet/device-plugins and /var/log/containers
// whatever its flags; they are removed again when the kubelet started here
// made them, so these tests must not run on a node with a kubelet of its own.
package kubelet
