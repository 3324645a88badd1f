package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// TestContainerdReleases starts a private containerd of each release with
// the config this package writes for it, and checks that the release loaded
// its CRI plugins with that config, the runtimes "mine" and "runc" included.
func TestContainerdReleases(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containerd")
	}
	for _, r := range Releases {
		t.Run("containerd-"+r.Line, func(t *testing.T) {
			bin, skip := r.BinDir()
			if skip != "" {
				t.Skip(skip)
			}
			dir, err := os.MkdirTemp("/run", "mine-t-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := RemoveDir(dir); err != nil {
					t.Error(err)
				}
			})
			cfg := Config{Dir: dir, Version: r.ConfigVersion(), Snapshotter: "native", SandboxImage: "localhost/pause:1"}
			if !strings.HasPrefix(cfg.TOML(), "version = "+map[int]string{2: "2", 3: "3"}[r.ConfigVersion()]+"\n") {
				t.Fatalf("config does not start with its version:\n%s", cfg.TOML())
			}
			d, err := StartContainerd(filepath.Join(bin, "containerd"), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := d.Stop(); err != nil {
					t.Error(err)
				}
			})
			c, err := client.New(d.Address(), client.WithTimeout(10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := c.IntrospectionService().Plugins(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cri := map[string]bool{}
			for _, p := range resp.GetPlugins() {
				id := p.GetType() + "." + p.GetID()
				if !strings.Contains(id, "cri") {
					continue
				}
				if p.GetInitErr() != nil {
					t.Errorf("plugin %s failed with the generated config: %s\nconfig:\n%s", id, p.GetInitErr().GetMessage(), cfg.TOML())
				}
				cri[id] = true
			}
			if len(cri) == 0 {
				t.Fatalf("no CRI plugin loaded; log:\n%s", d.LogTail(30))
			}
			log, err := os.ReadFile(cfg.LogPath())
			if err != nil {
				t.Fatal(err)
			}
			for _, rt := range []string{RuntimeMine, RuntimeRunc} {
				if !strings.Contains(string(log), rt) {
					t.Errorf("containerd's log never mentions the runtime %s of its config", rt)
				}
			}
		})
	}
}
