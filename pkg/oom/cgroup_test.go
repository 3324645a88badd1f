//go:build linux

package oom

import (
	"os"
	"os/exec"
	"testing"

	"github.com/containerd/errdefs"
)

const hybridMountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestResolveCgroup(t *testing.T) {
	tests := []struct {
		name       string
		procCgroup string
		mountinfo  string
		want       CgroupPath
		wantErr    func(error) bool
	}{
		{
			name:       "hybrid picks the v1 memory hierarchy",
			procCgroup: "9:name=systemd:/\n4:memory:/kubepods/pod1/ctr\n1:cpu:/\n0::/system.slice/x\n",
			mountinfo:  hybridMountinfo,
			want:       CgroupPath{Version: 1, Dir: "/sys/fs/cgroup/memory/kubepods/pod1/ctr"},
		},
		{
			name:       "v1 co-mounted controllers",
			procCgroup: "3:cpu,memory:/a\n",
			mountinfo:  "35 31 0:32 / /cg/cpu,memory rw - cgroup cgroup rw,cpu,memory\n",
			want:       CgroupPath{Version: 1, Dir: "/cg/cpu,memory/a"},
		},
		{
			name:       "v1 root cgroup",
			procCgroup: "4:memory:/\n",
			mountinfo:  hybridMountinfo,
			want:       CgroupPath{Version: 1, Dir: "/sys/fs/cgroup/memory"},
		},
		{
			name:       "v2 only",
			procCgroup: "0::/system.slice/containerd.service/ctr\n",
			mountinfo:  "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
			want:       CgroupPath{Version: 2, Dir: "/sys/fs/cgroup/system.slice/containerd.service/ctr"},
		},
		{
			name:       "v2 mounted elsewhere with a space in the path",
			procCgroup: "0::/a b/c\n",
			mountinfo:  `30 23 0:26 / /run/my\040cgroup rw - cgroup2 none rw` + "\n",
			want:       CgroupPath{Version: 2, Dir: "/run/my cgroup/a b/c"},
		},
		{
			name:       "v2 path with a colon",
			procCgroup: "0::/a:b\n",
			mountinfo:  "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			want:       CgroupPath{Version: 2, Dir: "/sys/fs/cgroup/a:b"},
		},
		{
			name:       "bind mount of a subtree: longest root wins",
			procCgroup: "0::/kubepods/pod1/ctr\n",
			mountinfo: "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n" +
				"50 23 0:26 /kubepods /mnt/kp rw - cgroup2 cgroup2 rw\n" +
				"51 23 0:26 /kubepods2 /mnt/kp2 rw - cgroup2 cgroup2 rw\n",
			want: CgroupPath{Version: 2, Dir: "/mnt/kp/pod1/ctr"},
		},
		{
			name:       "v1 memory line without its mount",
			procCgroup: "4:memory:/a\n0::/a\n",
			mountinfo:  "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
			wantErr:    errdefs.IsNotFound,
		},
		{
			name:       "outside the cgroup namespace",
			procCgroup: "0::/../../other\n",
			mountinfo:  "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			wantErr:    errdefs.IsNotFound,
		},
		{
			name:       "no memory and no v2",
			procCgroup: "1:cpu:/\n",
			mountinfo:  hybridMountinfo,
			wantErr:    errdefs.IsNotFound,
		},
		{
			name:       "malformed proc cgroup",
			procCgroup: "garbage\n",
			mountinfo:  hybridMountinfo,
			wantErr:    errdefs.IsInvalidArgument,
		},
		{
			name:       "malformed mountinfo",
			procCgroup: "0::/\n",
			mountinfo:  "1 2 3\n",
			wantErr:    errdefs.IsInvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveCgroup([]byte(tt.procCgroup), []byte(tt.mountinfo))
			if tt.wantErr != nil {
				if !tt.wantErr(err) {
					t.Fatalf("err = %v, got %v", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestResolveCgroupSelf resolves the cgroup of processes of this host,
// whatever its hierarchies.
func TestResolveCgroupSelf(t *testing.T) {
	cg, err := ResolveCgroup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this process: %s", cg)
	if fi, err := os.Stat(cg.Dir); err != nil || !fi.IsDir() {
		t.Fatalf("%s: not a directory: %v", cg, err)
	}
	if cg.Version == 1 {
		// Only a hierarchy with the memory controller is picked for v1.
		if _, err := os.Stat(cg.Dir + "/" + oomControlFile); err != nil {
			t.Fatal(err)
		}
	}

	// A pid that has been reaped.
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveCgroup(cmd.Process.Pid); !errdefs.IsNotFound(err) {
		t.Fatalf("ResolveCgroup of a reaped pid: err = %v, want not found", err)
	}
	if _, err := ResolveCgroup(0); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("ResolveCgroup(0): err = %v, want invalid argument", err)
	}
}
