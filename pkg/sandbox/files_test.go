package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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
