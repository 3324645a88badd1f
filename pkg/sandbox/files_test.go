package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestMemberMounts(t *testing.T) {
	const ipc = "/proc/42/ns/ipc"
	for _, tc := range []struct {
		name      string
		spec      specs.Spec
		wantDst   map[string]string // destination -> source, "" for not the pod's
		wantCount int
	}{
		{
			name: "shares the pod's ipc",
			spec: specs.Spec{
				Mounts: []specs.Mount{{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"}, {Destination: "/proc", Type: "proc"}},
				Linux:  &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: ipc}}},
			},
			wantDst: map[string]string{
				"/etc/hostname": "pod/hostname", "/etc/hosts": "pod/hosts",
				"/etc/resolv.conf": "pod/resolv.conf", "/dev/shm": "pod/shm",
			},
			wantCount: 5,
		},
		{
			name: "host ipc keeps its shm, a given hosts file is kept",
			spec: specs.Spec{
				Mounts: []specs.Mount{{Destination: "/dev/shm", Type: "bind", Source: "/dev/shm"}, {Destination: "/etc/hosts", Type: "bind", Source: "/kubelet/hosts"}},
				Linux:  &specs.Linux{},
			},
			wantDst: map[string]string{
				"/etc/hostname": "pod/hostname", "/etc/hosts": "", "/etc/resolv.conf": "pod/resolv.conf", "/dev/shm": "",
			},
			wantCount: 4,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			data, err := json.Marshal(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := memberMounts(dir, "pod", ipc); err != nil {
				t.Fatal(err)
			}
			data, err = os.ReadFile(filepath.Join(dir, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			var got specs.Spec
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			if len(got.Mounts) != tc.wantCount {
				t.Fatalf("mounts %+v, want %d", got.Mounts, tc.wantCount)
			}
			for dst, src := range tc.wantDst {
				found := false
				for _, m := range got.Mounts {
					if m.Destination != dst {
						continue
					}
					found = true
					isPod := filepath.Dir(m.Source) == "pod"
					if (src == "") == isPod || (src != "" && m.Source != src) {
						t.Fatalf("mount at %s from %s, want %q", dst, m.Source, src)
					}
				}
				if !found {
					t.Fatalf("no mount at %s", dst)
				}
			}
		})
	}
}

func TestDecodePod(t *testing.T) {
	p, err := decodePod(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if !p.HostNetwork || p.Hostname == "" {
		t.Fatalf("pod without options: %+v", p)
	}
	p = Pod{DNSServers: []string{"1.1.1.1", "8.8.8.8"}, DNSSearches: []string{"a", "b"}, DNSOptions: []string{"ndots:2"}}
	if got, want := string(p.resolvConf()), "search a b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:2\n"; got != want {
		t.Fatalf("resolv.conf %q, want %q", got, want)
	}
}

// TestDecodePodConfig checks the hand-read fields against CRI's own
// encoding of a PodSandboxConfig.
func TestDecodePodConfig(t *testing.T) {
	full := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "n", Uid: "u", Namespace: "ns", Attempt: 3},
		Hostname:     "pod-host",
		LogDirectory: "/var/log/pods/x",
		DnsConfig:    &cri.DNSConfig{Servers: []string{"10.0.0.10", "10.0.0.11"}, Searches: []string{"a.svc", "svc"}, Options: []string{"ndots:5", "edns0"}},
		PortMappings: []*cri.PortMapping{{ContainerPort: 80, HostPort: 8080}},
		Labels:       map[string]string{"app": "x"},
		Annotations:  map[string]string{"a": "b"},
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/besteffort/podx",
			Sysctls:      map[string]string{"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
			SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_POD, Pid: cri.NamespaceMode_NODE, Ipc: cri.NamespaceMode_POD},
				Privileged:       true,
				RunAsUser:        &cri.Int64Value{Value: 1000},
			},
			Overhead: &cri.LinuxContainerResources{MemoryLimitInBytes: 1 << 20},
		},
	}
	for _, tc := range []struct {
		name string
		cfg  *cri.PodSandboxConfig
		want Pod
	}{
		{name: "every field", cfg: full, want: Pod{
			Hostname: "pod-host", HasDNS: true,
			DNSServers: []string{"10.0.0.10", "10.0.0.11"}, DNSSearches: []string{"a.svc", "svc"}, DNSOptions: []string{"ndots:5", "edns0"},
			Sysctls:      map[string]string{"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
			CgroupParent: "/kubepods/besteffort/podx", HostPID: true,
		}},
		{name: "host ipc", cfg: &cri.PodSandboxConfig{Hostname: "h", Linux: &cri.LinuxPodSandboxConfig{
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{Ipc: cri.NamespaceMode_NODE}},
		}}, want: Pod{Hostname: "h", HostIPC: true}},
		{name: "pod namespaces, no DNS", cfg: &cri.PodSandboxConfig{Hostname: "h", Linux: &cri.LinuxPodSandboxConfig{
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{Pid: cri.NamespaceMode_CONTAINER}},
		}}, want: Pod{Hostname: "h"}},
		{name: "empty DNS config still counts", cfg: &cri.PodSandboxConfig{Hostname: "h", DnsConfig: &cri.DNSConfig{}}, want: Pod{Hostname: "h", HasDNS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodePod(&anypb.Any{TypeUrl: podConfigName, Value: b}, "/var/run/netns/x")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decoded %+v\nwant    %+v", got, tc.want)
			}
		})
	}
	if _, err := decodePod(&anypb.Any{TypeUrl: podConfigName, Value: []byte{0x12, 0x7f}}, ""); err == nil {
		t.Fatal("a truncated config decoded without error")
	}
	if _, err := decodePod(&anypb.Any{TypeUrl: "other.Type", Value: []byte{0x12, 0x00}}, ""); err == nil {
		t.Fatal("options of another type decoded without error")
	}
}

// TestDecodePodUserNamespace: a pod with a user namespace of its own
// (hostUsers: false) is refused at create, not implemented: CRI would have
// its every container join the holder's user namespace, the host's, which
// runc refuses. The host's user namespace, asked for or left unsaid, is
// fine.
func TestDecodePodUserNamespace(t *testing.T) {
	decode := func(ns *cri.NamespaceOption) error {
		t.Helper()
		b, err := proto.Marshal(&cri.PodSandboxConfig{Hostname: "h", Linux: &cri.LinuxPodSandboxConfig{
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = decodePod(&anypb.Any{TypeUrl: podConfigName, Value: b}, "/var/run/netns/x")
		return err
	}
	own := &cri.NamespaceOption{UsernsOptions: &cri.UserNamespace{
		Mode: cri.NamespaceMode_POD,
		Uids: []*cri.IDMapping{{HostId: 65536, ContainerId: 0, Length: 65536}},
		Gids: []*cri.IDMapping{{HostId: 65536, ContainerId: 0, Length: 65536}},
	}}
	if err := decode(own); !errdefs.IsNotImplemented(err) {
		t.Errorf("pod with its own user namespace: %v, want not implemented", err)
	}
	if err := decode(&cri.NamespaceOption{UsernsOptions: &cri.UserNamespace{Mode: cri.NamespaceMode_NODE}}); err != nil {
		t.Errorf("pod in the host's user namespace: %v", err)
	}
	if err := decode(&cri.NamespaceOption{}); err != nil {
		t.Errorf("pod saying nothing of user namespaces: %v", err)
	}
}

func TestCheckSysctl(t *testing.T) {
	for _, tc := range []struct {
		name, key string
		pod       Pod
		ok        bool
	}{
		{name: "net in the pod's netns", key: "net.ipv4.ip_forward", ok: true},
		{name: "net in the host's netns", key: "net.ipv4.ip_forward", pod: Pod{HostNetwork: true}},
		{name: "slashes", key: "net/ipv4/ip_forward", ok: true},
		{name: "ipc of the pod", key: "kernel.shm_rmid_forced", ok: true},
		{name: "ipc of the host", key: "kernel.shm_rmid_forced", pod: Pod{HostIPC: true}},
		{name: "mqueue of the host", key: "fs.mqueue.msg_max", pod: Pod{HostIPC: true}},
		{name: "hostname of the pod", key: "kernel.domainname", ok: true},
		{name: "not namespaced", key: "vm.swappiness"},
		{name: "escape", key: "net/../../../etc/x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.pod.checkSysctl(tc.key); (err == nil) != tc.ok {
				t.Fatalf("checkSysctl(%q) of %+v: %v, want ok %v", tc.key, tc.pod, err, tc.ok)
			}
		})
	}
}
