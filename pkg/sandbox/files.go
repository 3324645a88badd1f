package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Files of the pod kept in the sandbox bundle, bind-mounted into members.
const (
	hostnameFile = "hostname"
	hostsFile    = "hosts"
	resolvFile   = "resolv.conf"
	shmDir       = "shm"
)

// shmSize is the size of the pod's /dev/shm, as CRI gives a pause pod's.
const shmSize = 64 << 20

// Host files a pod without its own DNS config or hosts takes over.
var (
	hostHosts  = "/etc/hosts"
	hostResolv = "/etc/resolv.conf"
)

// writePodFiles writes the pod's hostname, hosts and resolv.conf into dir
// and mounts the pod's /dev/shm tmpfs there unless the pod uses the host's
// IPC namespace.
func writePodFiles(dir string, p Pod) error {
	if err := os.WriteFile(filepath.Join(dir, hostnameFile), []byte(p.Hostname+"\n"), 0o644); err != nil {
		return err
	}
	hosts, err := os.ReadFile(hostHosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, hostsFile), hosts, 0o644); err != nil {
		return err
	}
	resolv := p.resolvConf()
	if !p.HasDNS {
		if resolv, err = os.ReadFile(hostResolv); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, resolvFile), resolv, 0o644); err != nil {
		return err
	}
	if p.HostIPC {
		return nil
	}
	shm := filepath.Join(dir, shmDir)
	if err := os.MkdirAll(shm, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV,
		fmt.Sprintf("mode=1777,size=%d", shmSize)); err != nil {
		return fmt.Errorf("mount pod shm: %w", err)
	}
	return nil
}

// Cleanup unmounts what the sandbox mounted in bundle. It is idempotent, for
// ShutdownSandbox and for `shim delete` after a dead shim.
func Cleanup(bundle string) error {
	shm := filepath.Join(bundle, shmDir)
	for {
		err := unix.Unmount(shm, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not (or no longer) a mount point
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", shm, err)
		}
	}
}

// memberMounts edits the OCI spec of a member container in memberBundle:
// the pod's hostname, hosts and resolv.conf files are bind-mounted unless
// the spec mounts something there already, and the member's private
// /dev/shm tmpfs becomes the pod's when it shares the pod's IPC namespace
// (ipcPath, the holder's).
func memberMounts(memberBundle, podDir, ipcPath string) error {
	path := filepath.Join(memberBundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var mounts []specs.Mount
	if raw, ok := doc["mounts"]; ok {
		if err := json.Unmarshal(raw, &mounts); err != nil {
			return fmt.Errorf("%s: mounts: %w", path, err)
		}
	}
	var root struct {
		Readonly bool `json:"readonly"`
	}
	if raw, ok := doc["root"]; ok {
		_ = json.Unmarshal(raw, &root)
	}
	var linux struct {
		Namespaces []specs.LinuxNamespace `json:"namespaces"`
	}
	if raw, ok := doc["linux"]; ok {
		_ = json.Unmarshal(raw, &linux)
	}
	has := func(dst string) int {
		return slices.IndexFunc(mounts, func(m specs.Mount) bool { return filepath.Clean(m.Destination) == dst })
	}
	opts := []string{"rbind", "rprivate", "rw"}
	if root.Readonly {
		opts = []string{"rbind", "rprivate", "ro"}
	}
	for _, f := range []struct{ name, dst string }{
		{hostnameFile, "/etc/hostname"}, {hostsFile, "/etc/hosts"}, {resolvFile, "/etc/resolv.conf"},
	} {
		if has(f.dst) >= 0 {
			continue
		}
		mounts = append(mounts, specs.Mount{Destination: f.dst, Type: "bind", Source: filepath.Join(podDir, f.name), Options: opts})
	}
	sharesIPC := ipcPath != "" && slices.ContainsFunc(linux.Namespaces, func(n specs.LinuxNamespace) bool {
		return n.Type == specs.IPCNamespace && n.Path == ipcPath
	})
	if sharesIPC {
		shm := specs.Mount{Destination: "/dev/shm", Type: "bind", Source: filepath.Join(podDir, shmDir),
			Options: []string{"rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"}}
		if i := has("/dev/shm"); i < 0 {
			mounts = append(mounts, shm)
		} else if mounts[i].Type == "tmpfs" {
			mounts[i] = shm // the default private tmpfs
		}
	}
	raw, err := json.Marshal(mounts)
	if err != nil {
		return err
	}
	doc["mounts"] = raw
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
