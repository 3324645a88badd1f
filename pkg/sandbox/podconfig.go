package sandbox

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"
)

// The few fields of CRI's PodSandboxConfig (k8s.io/cri-api, runtime.v1)
// the sandbox uses, read straight from the wire: importing the CRI API
// package would cost every shim, sandbox or not, its descriptors at start
// (200 KB of heap and 2.4 ms measured in its init). Field numbers from
// cri-api's api.proto; a test checks them against the real encoding.
const (
	fieldPodHostname = 2 // PodSandboxConfig.hostname
	fieldPodDNS      = 4 // PodSandboxConfig.dns_config
	fieldPodLinux    = 8 // PodSandboxConfig.linux

	fieldDNSServers  = 1 // DNSConfig.servers
	fieldDNSSearches = 2 // DNSConfig.searches
	fieldDNSOptions  = 3 // DNSConfig.options

	fieldLinuxCgroupParent = 1 // LinuxPodSandboxConfig.cgroup_parent
	fieldLinuxSecurity     = 2 // LinuxPodSandboxConfig.security_context
	fieldLinuxSysctls      = 3 // LinuxPodSandboxConfig.sysctls (map<string, string>)

	fieldSecurityNamespaces = 1 // LinuxSandboxSecurityContext.namespace_options

	fieldNSNetwork  = 1 // NamespaceOption.network
	fieldNSPid      = 2 // NamespaceOption.pid
	fieldNSIpc      = 3 // NamespaceOption.ipc
	fieldNSUserns   = 5 // NamespaceOption.userns_options (UserNamespace)
	fieldUsernsMode = 1 // UserNamespace.mode

	fieldMapKey   = 1
	fieldMapValue = 2

	// namespaceModeNode is NamespaceMode NODE: the host's namespace.
	namespaceModeNode = 2
)

var errWire = errors.New("malformed protobuf")

// eachField calls f for every field of the message b; f gets the field's
// bytes (length-delimited) or its varint.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, data []byte, v uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errWire
		}
		b = b[n:]
		var (
			data []byte
			v    uint64
		)
		switch typ {
		case protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errWire
		}
		b = b[n:]
		if err := f(num, typ, data, v); err != nil {
			return err
		}
	}
	return nil
}

// decodePodConfig fills p from an encoded PodSandboxConfig.
func decodePodConfig(b []byte, p *Pod) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldPodHostname:
			p.Hostname = string(data)
		case fieldPodDNS:
			p.HasDNS = true
			return decodeDNS(data, p)
		case fieldPodLinux:
			return decodeLinux(data, p)
		}
		return nil
	})
}

func decodeDNS(b []byte, p *Pod) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldDNSServers:
			p.DNSServers = append(p.DNSServers, string(data))
		case fieldDNSSearches:
			p.DNSSearches = append(p.DNSSearches, string(data))
		case fieldDNSOptions:
			p.DNSOptions = append(p.DNSOptions, string(data))
		}
		return nil
	})
}

func decodeLinux(b []byte, p *Pod) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldLinuxCgroupParent:
			p.CgroupParent = string(data)
		case fieldLinuxSecurity:
			return eachField(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
				if num == fieldSecurityNamespaces && typ == protowire.BytesType {
					return decodeNamespaces(data, p)
				}
				return nil
			})
		case fieldLinuxSysctls:
			var k, v string
			err := eachField(data, func(num protowire.Number, typ protowire.Type, data []byte, _ uint64) error {
				switch {
				case num == fieldMapKey && typ == protowire.BytesType:
					k = string(data)
				case num == fieldMapValue && typ == protowire.BytesType:
					v = string(data)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if p.Sysctls == nil {
				p.Sysctls = map[string]string{}
			}
			p.Sysctls[k] = v
		}
		return nil
	})
}

func decodeNamespaces(b []byte, p *Pod) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, data []byte, v uint64) error {
		if num == fieldNSUserns && typ == protowire.BytesType {
			// Present, its mode POD (0, the default) asks for a user
			// namespace of the pod's own; NODE is the host's.
			mode := uint64(0)
			err := eachField(data, func(num protowire.Number, typ protowire.Type, _ []byte, v uint64) error {
				if num == fieldUsernsMode && typ == protowire.VarintType {
					mode = v
				}
				return nil
			})
			p.OwnUserNS = mode != namespaceModeNode
			return err
		}
		if typ != protowire.VarintType {
			return nil
		}
		node := v == namespaceModeNode
		switch num {
		case fieldNSNetwork:
			// The network namespace comes as CreateSandbox's netns_path.
		case fieldNSPid:
			p.HostPID = node
		case fieldNSIpc:
			p.HostIPC = node
		}
		return nil
	})
}
