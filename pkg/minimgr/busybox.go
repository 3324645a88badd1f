package minimgr

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// BusyboxPath is where Debian's busybox-static installs busybox.
const BusyboxPath = "/bin/busybox"

// ErrNoBusybox is wrapped when no static busybox is installed.
var ErrNoBusybox = fmt.Errorf("%s: a static busybox is needed (apt-get install busybox-static): %w", BusyboxPath, errdefs.ErrNotFound)

// CheckBusybox verifies that BusyboxPath is a statically linked binary.
func CheckBusybox() error {
	f, err := elf.Open(BusyboxPath)
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoBusybox
	}
	if err != nil {
		return fmt.Errorf("%s: %v: %w", BusyboxPath, err, ErrNoBusybox)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: %w", BusyboxPath, ErrNoBusybox)
		}
	}
	return nil
}

// InitBusyboxBundle makes an OCI bundle in dir (created if missing, and
// refused when it already holds a config.json or a rootfs): rootfs/ with
// the static busybox and its applet links in /bin, /etc/passwd, /etc/group
// and the usual empty directories, and a config.json from BusyboxSpec.
func InitBusyboxBundle(dir string) error {
	if err := CheckBusybox(); err != nil {
		return err
	}
	for _, name := range []string{configFile, "rootfs"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("bundle %s: %s exists: %w", dir, name, errdefs.ErrAlreadyExists)
		}
	}
	applets, err := busyboxApplets()
	if err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"dev", 0o755}, {"sys", 0o555},
		{"root", 0o700}, {"tmp", 0o1777},
	} {
		p := filepath.Join(rootfs, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil { // umask
			return err
		}
	}
	if err := copyFile(BusyboxPath, filepath.Join(rootfs, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" || strings.ContainsRune(a, '/') {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			return fmt.Errorf("applet %s: %w", a, err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return writeSpec(dir, BusyboxSpec())
}

// busyboxApplets lists the applets of BusyboxPath (`busybox --list`).
func busyboxApplets() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", BusyboxPath, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a := strings.TrimSpace(sc.Text()); a != "" {
			applets = append(applets, a)
		}
	}
	return applets, sc.Err()
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BusyboxSpec is the config.json of InitBusyboxBundle, what `runc spec`
// writes: a non-interactive sh as root with the default capabilities,
// namespaces, mounts, masked and read-only paths; the rootfs is writable
// (minimgr's --read-only makes it read-only).
func BusyboxSpec() *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal: false,
			User:     specs.User{UID: 0, GID: 0},
			Args:     []string{"sh"},
			Env:      []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/root"},
			Cwd:      "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: false},
		Hostname: "minimgr",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
				"/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
}
