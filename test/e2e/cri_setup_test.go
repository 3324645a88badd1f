package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// What the private containerd's CRI plugin is configured with (see criTOML),
// and what the CRI tests need to know about it.
const (
	// criNamespace is the containerd namespace of the CRI plugin.
	criNamespace = "k8s.io"
	// criPauseImage is the sandbox image. The name points to no registry:
	// the CRI tests import the image before the first pod, and a pull
	// (which would mean the import was not seen) fails at once.
	criPauseImage = "localhost/mine-e2e/pause:1"
	// criCNIBinDir is where Debian's containernetworking-plugins installs
	// the CNI plugins.
	criCNIBinDir = "/usr/lib/cni"
)

// criNet describes the pod network of the CRI tests, set by criTOML.
var criNet struct {
	// bridge is the Linux bridge the CNI bridge plugin creates for the
	// pods; "" when pods use the host network (see hostReason).
	bridge string
	// subnet holds the pod IPs.
	subnet string
	// hostReason says why pods use the host network instead.
	hostReason string
}

// criTOML configures the CRI plugin of the harness's containerd: the locally
// built pause image as sandbox image, and a CNI bridge network of its own for
// the pods (bridge plugin, host-local IPAM with its state under dir, no
// gateway on the host, no masquerading: pod traffic stays on the bridge).
// Without the CNI plugins the CRI tests run host-network pods, and the
// network part is left out. containerd reads the CNI config only when it
// starts, so it is written before.
func criTOML(dir string) (string, error) {
	toml := fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = %q\n", criPauseImage)
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(criCNIBinDir, p)); err != nil {
			criNet.hostReason = fmt.Sprintf("no CNI plugin %s (Debian package containernetworking-plugins): %v", p, err)
			return toml, nil
		}
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	// Interface names have at most 15 bytes.
	criNet.bridge = "mine" + hex.EncodeToString(b[:])
	// No route to it is added on the host (no gateway), so it cannot
	// clash with the host's networks.
	criNet.subnet = fmt.Sprintf("10.%d.%d.0/24", 200+b[0]%50, b[1])
	confDir := filepath.Join(dir, "cni", "conf")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return "", err
	}
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "mine-e2e",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      criNet.bridge,
			"isGateway":   false,
			"ipMasq":      false,
			"hairpinMode": false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": criNet.subnet}}},
				"dataDir": filepath.Join(dir, "cni", "ipam"),
			},
		}},
	}, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-mine-e2e.conflist"), conf, 0o644); err != nil {
		return "", err
	}
	toml += fmt.Sprintf("\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [%q]\n  conf_dir = %q\n",
		criCNIBinDir, confDir)
	return toml, nil
}
