package sandbox

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"
)

// Pod is what the holder and the pod's files are made from: the parts of
// CRI's PodSandboxConfig this package uses.
type Pod struct {
	Hostname     string
	DNSServers   []string
	DNSSearches  []string
	DNSOptions   []string
	HasDNS       bool // a DNS config was given; else the host's resolv.conf is used
	Sysctls      map[string]string
	HostNetwork  bool
	HostIPC      bool
	HostPID      bool
	CgroupParent string
	// OwnUserNS: the pod asked for a user namespace of its own
	// (hostUsers: false), which the holder does not make.
	OwnUserNS bool
}

// podConfigName is the protobuf name of CRI's PodSandboxConfig, which
// CreateSandboxRequest.options carries.
const podConfigName = "runtime.v1.PodSandboxConfig"

// decodePod reads the pod's config from CreateSandbox's options; no options
// give a pod with the defaults (own namespaces, host's DNS). netnsPath ""
// means the host's network, as CRI sends it for such pods.
func decodePod(options *anypb.Any, netnsPath string) (Pod, error) {
	var p Pod
	if options != nil && len(options.GetValue()) > 0 {
		url := options.GetTypeUrl()
		if url != podConfigName && !strings.HasSuffix(url, "/"+podConfigName) {
			return p, fmt.Errorf("sandbox options of type %q, want %s: %w", url, podConfigName, errdefs.ErrInvalidArgument)
		}
		if err := decodePodConfig(options.GetValue(), &p); err != nil {
			return p, fmt.Errorf("decode %s: %v: %w", podConfigName, err, errdefs.ErrInvalidArgument)
		}
	}
	if p.OwnUserNS {
		// CRI makes such a pod's network namespace inside a new user
		// namespace and has every container join the holder's user
		// namespace, which is the host's here: runc would refuse each
		// container (setns into its own user namespace: EINVAL).
		return p, fmt.Errorf("a pod with a user namespace of its own (hostUsers: false) is not supported without a pause container: %w", errdefs.ErrNotImplemented)
	}
	p.HostNetwork = netnsPath == ""
	if p.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return p, fmt.Errorf("host name: %w", err)
		}
		p.Hostname = h
	}
	for k := range p.Sysctls {
		if err := p.checkSysctl(k); err != nil {
			return p, err
		}
	}
	return p, nil
}

// IPC sysctls, set in the IPC namespace of the writer.
var ipcSysctls = map[string]bool{
	"kernel.msgmax": true, "kernel.msgmnb": true, "kernel.msgmni": true, "kernel.sem": true,
	"kernel.shmall": true, "kernel.shmmax": true, "kernel.shmmni": true, "kernel.shm_rmid_forced": true,
}

// checkSysctl accepts only a sysctl of a namespace the holder has of its
// own, as runc does for a container: one written in the host's namespace
// would change the host.
func (p Pod) checkSysctl(k string) error {
	name := strings.ReplaceAll(k, "/", ".")
	if k == "" || strings.Contains(k, "..") || strings.ContainsAny(k, " \n") {
		return fmt.Errorf("sysctl %q: %w", k, errdefs.ErrInvalidArgument)
	}
	var own bool
	switch {
	case ipcSysctls[name] || strings.HasPrefix(name, "fs.mqueue."):
		own = !p.HostIPC
	case strings.HasPrefix(name, "net."):
		own = !p.HostNetwork
	case name == "kernel.hostname" || name == "kernel.domainname":
		own = !p.HostNetwork // the UTS namespace is the host's with its network
	default:
		return fmt.Errorf("sysctl %q is not in a namespace of the pod: %w", k, errdefs.ErrInvalidArgument)
	}
	if !own {
		return fmt.Errorf("sysctl %q of a pod that uses the host's namespace: %w", k, errdefs.ErrInvalidArgument)
	}
	return nil
}

// resolvConf renders the pod's DNS config as resolv.conf, as the pause
// container's setup does.
func (p Pod) resolvConf() []byte {
	var b strings.Builder
	if len(p.DNSSearches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(p.DNSSearches, " "))
	}
	for _, s := range p.DNSServers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(p.DNSOptions) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(p.DNSOptions, " "))
	}
	return []byte(b.String())
}
