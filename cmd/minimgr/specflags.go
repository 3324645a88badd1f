package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/pflag"
)

// specFlags change the config a container runs with, without editing the
// bundle's config.json.
type specFlags struct {
	env, envFiles       []string
	workdir, user, host string
	volumes, mounts     []string
	readOnly            bool
	memory, cpus        string
	pidsLimit           int64
	network             string
	privileged          bool
	capAdd, capDrop     []string
	stopSignal          string
}

func registerSpecFlags(fs *pflag.FlagSet) *specFlags {
	s := &specFlags{}
	fs.StringArrayVarP(&s.env, "env", "e", nil, "set an environment variable (NAME=VALUE, or NAME to take ours)")
	fs.StringArrayVar(&s.envFiles, "env-file", nil, "read environment variables from a file (NAME=VALUE lines)")
	fs.StringVarP(&s.workdir, "workdir", "w", "", "working directory of the process")
	fs.StringVarP(&s.user, "user", "u", "", "UID[:GID] of the process")
	fs.StringVar(&s.host, "hostname", "", "hostname of the container")
	fs.StringArrayVarP(&s.volumes, "volume", "v", nil, "bind mount HOST:CONTAINER[:ro]")
	fs.StringArrayVar(&s.mounts, "mount", nil, "mount: type=bind,source=S,target=T[,readonly] or type=tmpfs,target=T[,tmpfs-size=N]")
	fs.BoolVar(&s.readOnly, "read-only", false, "mount the rootfs read-only")
	fs.StringVarP(&s.memory, "memory", "m", "", "memory limit (e.g. 64m)")
	fs.StringVar(&s.cpus, "cpus", "", "CPU limit (e.g. 0.5)")
	fs.Int64Var(&s.pidsLimit, "pids-limit", 0, "limit of processes (0: the config's)")
	fs.StringVar(&s.network, "net", "", "network: none (own namespace) or host")
	fs.BoolVar(&s.privileged, "privileged", false, "all capabilities, no masked or read-only paths, the host's devices")
	fs.StringArrayVar(&s.capAdd, "cap-add", nil, "add a capability (e.g. NET_ADMIN, or ALL)")
	fs.StringArrayVar(&s.capDrop, "cap-drop", nil, "drop a capability (or ALL)")
	fs.StringVar(&s.stopSignal, "stop-signal", "", "signal that stop sends first (default SIGTERM)")
	return s
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// apply edits the spec as the flags say.
func (s *specFlags) apply(spec *specs.Spec) error {
	p := spec.Process
	for _, f := range s.envFiles {
		vars, err := readEnvFile(f)
		if err != nil {
			return err
		}
		p.Env = setEnv(p.Env, vars...)
	}
	for _, e := range s.env {
		if !strings.Contains(e, "=") {
			v, ok := os.LookupEnv(e)
			if !ok {
				continue
			}
			e += "=" + v
		}
		p.Env = setEnv(p.Env, e)
	}
	if s.workdir != "" {
		if !filepath.IsAbs(s.workdir) {
			return invalid("--workdir %q: not absolute", s.workdir)
		}
		p.Cwd = s.workdir
	}
	if s.user != "" {
		u, g, hasG := strings.Cut(s.user, ":")
		uid, err := strconv.ParseUint(u, 10, 32)
		if err != nil {
			return invalid("--user %q: a numeric UID[:GID]", s.user)
		}
		p.User.UID = uint32(uid)
		if hasG {
			gid, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return invalid("--user %q: a numeric UID[:GID]", s.user)
			}
			p.User.GID = uint32(gid)
		}
	}
	if s.host != "" {
		spec.Hostname = s.host
	}
	for _, v := range s.volumes {
		m, err := parseVolume(v)
		if err != nil {
			return err
		}
		spec.Mounts = append(spec.Mounts, m)
	}
	for _, v := range s.mounts {
		m, err := parseMount(v)
		if err != nil {
			return err
		}
		spec.Mounts = append(spec.Mounts, m)
	}
	if s.readOnly {
		spec.Root.Readonly = true
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	lx := spec.Linux
	res, err := resources(s.memory, s.cpus, s.pidsLimit)
	if err != nil {
		return err
	}
	if res != nil {
		if lx.Resources == nil {
			lx.Resources = &specs.LinuxResources{}
		}
		if res.Memory != nil {
			lx.Resources.Memory = res.Memory
		}
		if res.CPU != nil {
			lx.Resources.CPU = res.CPU
		}
		if res.Pids != nil {
			lx.Resources.Pids = res.Pids
		}
	}
	switch s.network {
	case "", "none":
		if s.network == "none" && !hasNamespace(lx.Namespaces, specs.NetworkNamespace) {
			lx.Namespaces = append(lx.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
		}
	case "host":
		var ns []specs.LinuxNamespace
		for _, n := range lx.Namespaces {
			if n.Type != specs.NetworkNamespace {
				ns = append(ns, n)
			}
		}
		lx.Namespaces = ns
		// The host's name resolution.
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
			if _, err := os.Stat(f); err == nil {
				spec.Mounts = append(spec.Mounts, specs.Mount{Destination: f, Type: "bind", Source: f, Options: []string{"rbind", "ro"}})
			}
		}
	default:
		return invalid("--net %q: none or host", s.network)
	}
	if s.privileged {
		if p.Capabilities == nil {
			p.Capabilities = &specs.LinuxCapabilities{}
		}
		setCaps(p.Capabilities, allCaps())
		lx.MaskedPaths, lx.ReadonlyPaths = nil, nil
		if lx.Resources != nil {
			lx.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
		}
		for i, m := range spec.Mounts {
			if m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup" {
				spec.Mounts[i].Options = without(m.Options, "ro")
			}
		}
		p.NoNewPrivileges = false
	}
	if len(s.capAdd) > 0 || len(s.capDrop) > 0 {
		if p.Capabilities == nil {
			p.Capabilities = &specs.LinuxCapabilities{}
		}
		caps := p.Capabilities.Bounding
		for _, c := range s.capDrop {
			c, err := capName(c)
			if err != nil {
				return err
			}
			if c == "ALL" {
				caps = nil
				continue
			}
			caps = without(caps, c)
		}
		for _, c := range s.capAdd {
			c, err := capName(c)
			if err != nil {
				return err
			}
			if c == "ALL" {
				caps = allCaps()
				continue
			}
			if !contains(caps, c) {
				caps = append(caps, c)
			}
		}
		setCaps(p.Capabilities, caps)
	}
	return nil
}

func setCaps(c *specs.LinuxCapabilities, caps []string) {
	c.Bounding = append([]string(nil), caps...)
	c.Effective = append([]string(nil), caps...)
	c.Permitted = append([]string(nil), caps...)
}

// allCaps are the capabilities of minimgr's own bounding set: all a
// container can be given from here (a sandbox may lack some).
func allCaps() []string {
	var bnd uint64 = 1<<uint(len(capNames)) - 1
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
					bnd = n
				}
			}
		}
	}
	var out []string
	for i, c := range capNames {
		if bnd&(1<<uint(i)) != 0 {
			out = append(out, c)
		}
	}
	return out
}

// capNames by number (linux/capability.h).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

func capName(c string) (string, error) {
	c = strings.ToUpper(c)
	if c == "ALL" {
		return c, nil
	}
	if !strings.HasPrefix(c, "CAP_") {
		c = "CAP_" + c
	}
	if !contains(capNames, c) {
		return "", invalid("capability %q", c)
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func without(list []string, s string) []string {
	var out []string
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func hasNamespace(ns []specs.LinuxNamespace, t specs.LinuxNamespaceType) bool {
	for _, n := range ns {
		if n.Type == t {
			return true
		}
	}
	return false
}

// setEnv sets NAME=VALUE entries, replacing those of the same name.
func setEnv(env []string, vars ...string) []string {
	for _, v := range vars {
		name, _, _ := strings.Cut(v, "=")
		replaced := false
		for i, e := range env {
			if n, _, _ := strings.Cut(e, "="); n == name {
				env[i], replaced = v, true
			}
		}
		if !replaced {
			env = append(env, v)
		}
	}
	return env
}

func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, invalid("--env-file: %v", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !strings.Contains(l, "=") {
			v, ok := os.LookupEnv(l)
			if !ok {
				continue
			}
			l += "=" + v
		}
		out = append(out, l)
	}
	return out, sc.Err()
}

// parseVolume reads HOST:CONTAINER[:ro|rw].
func parseVolume(v string) (specs.Mount, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !filepath.IsAbs(parts[1]) {
		return specs.Mount{}, invalid("--volume %q: HOST:CONTAINER[:ro]", v)
	}
	src, err := filepath.Abs(parts[0])
	if err != nil {
		return specs.Mount{}, invalid("--volume %q: %v", v, err)
	}
	if _, err := os.Stat(src); err != nil {
		return specs.Mount{}, invalid("--volume %q: %v", v, err)
	}
	opts := []string{"rbind"}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			opts = append(opts, "ro")
		case "rw":
		default:
			return specs.Mount{}, invalid("--volume %q: mode %q is ro or rw", v, parts[2])
		}
	}
	return specs.Mount{Destination: parts[1], Type: "bind", Source: src, Options: opts}, nil
}

// parseMount reads docker's --mount: type=bind|tmpfs,source=,target=,readonly.
func parseMount(v string) (specs.Mount, error) {
	kv := map[string]string{}
	var ro bool
	for _, f := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(f, "=")
		switch {
		case k == "readonly" || k == "ro":
			ro = !ok || val == "true" || val == "1"
		case !ok:
			return specs.Mount{}, invalid("--mount %q: %q is not KEY=VALUE", v, f)
		default:
			kv[k] = val
		}
	}
	target := kv["target"]
	if target == "" {
		target = kv["destination"]
	}
	if target == "" {
		target = kv["dst"]
	}
	if !filepath.IsAbs(target) {
		return specs.Mount{}, invalid("--mount %q: needs an absolute target", v)
	}
	switch kv["type"] {
	case "bind", "":
		src := kv["source"]
		if src == "" {
			src = kv["src"]
		}
		if src == "" {
			return specs.Mount{}, invalid("--mount %q: a bind mount needs a source", v)
		}
		m, err := parseVolume(src + ":" + target)
		if err != nil {
			return m, err
		}
		if ro {
			m.Options = append(m.Options, "ro")
		}
		return m, nil
	case "tmpfs":
		opts := []string{"nosuid", "nodev"}
		if s := kv["tmpfs-size"]; s != "" {
			n, err := units.RAMInBytes(s)
			if err != nil {
				return specs.Mount{}, invalid("--mount %q: tmpfs-size: %v", v, err)
			}
			opts = append(opts, "size="+strconv.FormatInt(n, 10))
		}
		if m := kv["tmpfs-mode"]; m != "" {
			opts = append(opts, "mode="+m)
		}
		if ro {
			opts = append(opts, "ro")
		}
		return specs.Mount{Destination: target, Type: "tmpfs", Source: "tmpfs", Options: opts}, nil
	}
	return specs.Mount{}, invalid("--mount %q: type %q: bind or tmpfs", v, kv["type"])
}

// resources turns --memory, --cpus and --pids-limit into cgroup limits.
func resources(memory, cpus string, pids int64) (*specs.LinuxResources, error) {
	var r specs.LinuxResources
	set := false
	if memory != "" {
		n, err := units.RAMInBytes(memory)
		if err != nil || n <= 0 {
			return nil, invalid("--memory %q", memory)
		}
		r.Memory = &specs.LinuxMemory{Limit: &n}
		set = true
	}
	if cpus != "" {
		f, err := strconv.ParseFloat(cpus, 64)
		if err != nil || f <= 0 || math.IsInf(f, 0) {
			return nil, invalid("--cpus %q", cpus)
		}
		period := uint64(100000)
		quota := int64(f * float64(period))
		r.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
		set = true
	}
	if pids != 0 {
		r.Pids = &specs.LinuxPids{Limit: &pids}
		set = true
	}
	if !set {
		return nil, nil
	}
	return &r, nil
}
