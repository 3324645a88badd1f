package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// KubeletConfig describes a standalone kubelet: no API server, static pods
// only.
type KubeletConfig struct {
	// Dir holds the kubelet's root directory, its static pod manifests,
	// its pod logs, its config and its log.
	Dir string
	// RuntimeEndpoint is the CRI socket (containerd's gRPC socket).
	RuntimeEndpoint string
	// CgroupDriver is "cgroupfs" (the default) or "systemd".
	CgroupDriver string
	// CgroupRoot is the cgroup the kubelet puts its pod cgroups under
	// (kubepods/...); empty means a fresh /mine-kubelet-<pid>, so that
	// pod cgroups never mix with those of a kubelet of the host.
	CgroupRoot string
	// NodeName is the node's name; static pods are named NAME-NodeName.
	NodeName string
}

// ManifestDir is the kubelet's staticPodPath.
func (c KubeletConfig) ManifestDir() string { return filepath.Join(c.Dir, "manifests") }

// RootDir is the kubelet's --root-dir.
func (c KubeletConfig) RootDir() string { return filepath.Join(c.Dir, "root") }

// PodLogsDir is where the kubelet keeps container logs (podLogsDir):
// PodLogsDir/NAMESPACE_NAME_UID/CONTAINER/RESTARTS.log.
func (c KubeletConfig) PodLogsDir() string { return filepath.Join(c.Dir, "pods") }

// LogPath is the kubelet's own log (its stdout and stderr).
func (c KubeletConfig) LogPath() string { return filepath.Join(c.Dir, "kubelet.log") }

// ContainerLogLinks is where the kubelet links container logs whatever its
// podLogsDir (a fixed path in the kubelet). Tests remove the links of their
// pods (RemoveContainerLogLinks).
const ContainerLogLinks = "/var/log/containers"

// kubeletFixedDirs are paths the kubelet uses whatever its flags (the
// device plugin directory and the container log links). StartKubelet notes
// which of them do not exist yet, and Stop removes those again. The tests
// must not run beside a kubelet of the host, which uses them too.
var kubeletFixedDirs = []string{"/var/lib/kubelet", ContainerLogLinks}

// kernelTunables are the sysctls the kubelet sets when it starts
// (protectKernelDefaults false); StopKubelet puts back what they were.
var kernelTunables = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Kubelet is a running standalone kubelet.
type Kubelet struct {
	Config       KubeletConfig
	ReadOnlyPort int
	cmd          *exec.Cmd
	proc         *daemon
	sysctls      map[string]string // what kernelTunables were before
	madeDirs     []string          // kubeletFixedDirs that did not exist before
	cgroupDirs   []string          // CgroupRoot in each hierarchy, made here
}

// cgroupHierarchies returns the mounted cgroup hierarchies: every v1
// controller directory and the v2 mount (/sys/fs/cgroup itself on a
// cgroup v2 host).
func cgroupHierarchies() ([]string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &st); err != nil {
		return nil, err
	}
	const cgroup2Magic = 0x63677270
	if st.Type == cgroup2Magic {
		return []string{"/sys/fs/cgroup"}, nil
	}
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && e.Type()&os.ModeSymlink == 0 {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return dirs, nil
}

// freePort asks the kernel for a free TCP port on loopback.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// config is the KubeletConfiguration, as JSON (which is YAML).
func (k *Kubelet) config(port, healthz int) ([]byte, error) {
	c := k.Config
	return json.MarshalIndent(map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"staticPodPath":            c.ManifestDir(),
		"fileCheckFrequency":       "1s",
		"podLogsDir":               c.PodLogsDir(),
		"volumePluginDir":          filepath.Join(c.Dir, "volume-plugins"),
		"address":                  "127.0.0.1",
		"port":                     port,
		"readOnlyPort":             k.ReadOnlyPort,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              healthz,
		"containerRuntimeEndpoint": "unix://" + c.RuntimeEndpoint,
		"cgroupDriver":             c.CgroupDriver,
		"cgroupRoot":               c.CgroupRoot,
		"cgroupsPerQOS":            true,
		// This host mounts cgroup v1 (hybrid): recent kubelets refuse it
		// unless told otherwise.
		"failCgroupV1": false,
		"failSwapOn":   false,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": true},
			"webhook":   map[string]any{"enabled": false},
		},
		"authorization": map[string]any{"mode": "AlwaysAllow"},
		// The machine is shared and its disk may be fuller than the
		// kubelet's defaults allow: no eviction on disk, no image GC
		// (the images are imported, there is no registry to pull from).
		"evictionHard":                  map[string]string{"memory.available": "1Mi"},
		"imageGCHighThresholdPercent":   100,
		"imageGCLowThresholdPercent":    99,
		"resolvConf":                    "",
		"registerNode":                  false,
		"localStorageCapacityIsolation": false,
		"makeIPTablesUtilChains":        false,
		"serializeImagePulls":           false,
	}, "", "  ")
}

// StartKubelet starts the kubelet binary with cfg and waits until its
// healthz endpoint answers. The kubelet gets only stdio open.
func StartKubelet(binary string, cfg KubeletConfig) (_ *Kubelet, err error) {
	if cfg.CgroupDriver == "" {
		cfg.CgroupDriver = "cgroupfs"
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = fmt.Sprintf("/mine-kubelet-%d", os.Getpid())
	}
	if cfg.NodeName == "" {
		cfg.NodeName = "mine-node"
	}
	k := &Kubelet{Config: cfg, sysctls: map[string]string{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, k.cleanupHost())
		}
	}()
	for _, d := range []string{cfg.ManifestDir(), cfg.RootDir(), cfg.PodLogsDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range kubeletFixedDirs {
		if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
			k.madeDirs = append(k.madeDirs, d)
		}
	}
	for _, s := range kernelTunables {
		if v, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
			k.sysctls[s] = strings.TrimSpace(string(v))
		}
	}
	if cfg.CgroupDriver == "cgroupfs" {
		// The kubelet wants its cgroup root to exist in every hierarchy.
		hier, err := cgroupHierarchies()
		if err != nil {
			return nil, err
		}
		for _, h := range hier {
			d := filepath.Join(h, cfg.CgroupRoot)
			if err := os.Mkdir(d, 0o755); err != nil {
				if errors.Is(err, os.ErrExist) {
					continue
				}
				return nil, err
			}
			k.cgroupDirs = append(k.cgroupDirs, d)
			if filepath.Base(h) == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(h, f))
					if err == nil {
						err = os.WriteFile(filepath.Join(d, f), v, 0o644)
					}
					if err != nil {
						return nil, err
					}
				}
			}
		}
	}
	var port, healthz int
	for _, p := range []*int{&port, &healthz, &k.ReadOnlyPort} {
		if *p, err = freePort(); err != nil {
			return nil, err
		}
	}
	conf, err := k.config(port, healthz)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(cfg.Dir, "kubelet.yaml")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(cfg.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if err := CloseOnExecAll(); err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "--config", confPath, "--root-dir", cfg.RootDir(),
		"--cert-dir", filepath.Join(cfg.RootDir(), "pki"), "--hostname-override", cfg.NodeName, "--v", "2")
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = Env(nil)
	proc, err := startDaemon(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	k.cmd, k.proc = cmd, proc
	if err := k.waitHealthy(healthz, StartTimeout*3); err != nil {
		return nil, errors.Join(err, stopProcess("kubelet", cmd, k.proc.exited), fmt.Errorf("kubelet log tail:\n%s", k.LogTail(40)))
	}
	return k, nil
}

func (k *Kubelet) waitHealthy(port int, timeout time.Duration) error {
	c := http.Client{Timeout: time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", port)
	return k.proc.pollUntil("healthy at "+url, timeout, func() (bool, error) {
		resp, err := c.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// Get reads path (for example "/pods" or "/stats/summary") from the
// kubelet's read-only port into v.
func (k *Kubelet) Get(path string, v any) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", k.ReadOnlyPort, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, data)
	}
	return json.Unmarshal(data, v)
}

// LogTail returns the last n lines of the kubelet's log.
func (k *Kubelet) LogTail(n int) string { return fileTail(k.Config.LogPath(), n) }

// Pid is the kubelet's process id.
func (k *Kubelet) Pid() int { return k.cmd.Process.Pid }

// Stop stops the kubelet (SIGTERM, then SIGKILL), puts back the kernel
// tunables it changed, removes its cgroup root where empty and the fixed
// directories it made. Pods it
// started keep running in the container runtime: remove them first.
func (k *Kubelet) Stop() error {
	return errors.Join(stopProcess("kubelet", k.cmd, k.proc.exited), k.cleanupHost())
}

func (k *Kubelet) cleanupHost() error {
	var errs []error
	for s, v := range k.sysctls {
		cur, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err == nil && strings.TrimSpace(string(cur)) == v {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", s), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", s, v, err))
		}
	}
	for _, d := range k.cgroupDirs {
		if err := removeCgroupTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	k.cgroupDirs = nil
	for _, d := range k.madeDirs {
		errs = append(errs, os.RemoveAll(d))
	}
	k.madeDirs = nil
	return errors.Join(errs...)
}

// removeCgroupTree removes dir and the cgroups below it, deepest first. A
// cgroup that still has processes cannot be removed: that is an error.
func removeCgroupTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	slices.Reverse(dirs)
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(append(errs, err)...)
}

// CgroupsOf returns the cgroup directories, in every hierarchy, whose base
// name contains s (a pod UID or a container ID), below the kubelet's cgroup
// root.
func (k *Kubelet) CgroupsOf(s string) ([]string, error) {
	hier, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	// The cgroupfs driver names a pod's cgroup pod<UID>; the systemd one
	// kubepods-...-pod<UID with _ for ->.slice.
	alt := strings.ReplaceAll(s, "-", "_")
	var found []string
	for _, h := range hier {
		root := filepath.Join(h, k.Config.CgroupRoot)
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b := filepath.Base(p)
			if strings.Contains(b, s) || strings.Contains(b, alt) {
				found = append(found, p)
			}
			return nil
		})
	}
	return found, nil
}

// RemoveContainerLogLinks removes the links in ContainerLogLinks that the
// kubelet made for the pods whose name starts with prefix.
func RemoveContainerLogLinks(prefix string) error {
	entries, err := os.ReadDir(ContainerLogLinks)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		// POD_NAMESPACE_CONTAINER-ID.log
		if strings.HasPrefix(e.Name(), prefix) && e.Type()&os.ModeSymlink != 0 {
			errs = append(errs, os.Remove(filepath.Join(ContainerLogLinks, e.Name())))
		}
	}
	return errors.Join(errs...)
}
