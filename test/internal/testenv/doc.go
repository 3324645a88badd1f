// Package testenv is the one place where the project's tests start the
// programs they drive: a private containerd of any release (1.6 to 2.4), a
// standalone kubelet, and the shim and pause binaries built from this
// repository.
//
// A private containerd keeps its root, state, temp, sockets, config and log
// under one directory (Config.Dir) and runs with only stdin (/dev/null),
// stdout and stderr (its log) open: descriptors the test binary inherited
// would otherwise leak into every shim, where fd-leak checks see them. Its
// config is version 2 for containerd 1.6 and 1.7 and version 3 for 2.x
// (2.4 migrates it in memory), with the CRI runtimes "runc"
// (io.containerd.runc.v2) and "mine" (io.containerd.mine.v2),
// restrict_oom_score_adj (these machines cannot lower oom_score_adj) and the
// pause image the tests import.
//
// A kubelet started here runs standalone: no API server, static pods from
// a manifest directory, its root and pod-log directories and its pod cgroup
// root private to the test. See docs/kubernetes.md.
//
// Who owns what: the caller owns the directories it passes in and removes
// them; Stop of a Containerd or Kubelet waits for the process to exit (bounded)
// and never touches processes it did not start. KillLeftoverShims kills only
// shims whose -address names the caller's containerd.
//
// Needs root, and the binaries (containerd from hack/install-deps.sh, the
// kubelet from hack/install-kubelet.sh, runc from Debian).
package testenv
