package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/ttrpc"
)

// groupAnnotation puts containers into one shim (containerd's runc shim
// and the mine shim both honour it).
const groupAnnotation = "io.containerd.runc.v2.group"

// The shim's socket is where containerd's own rule (pkg/shim SocketAddress)
// puts it, for a container and for a group of containers, and a ttrpc client
// dialing that address gets Connect answered: tools find a shim this way.
// containerd's runc shim is held to the same assertions.
func TestSocketAtContainerdAddress(t *testing.T) {
	h := requireHarness(t)
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			t.Run("container", func(t *testing.T) {
				id := newID(t)
				c := h.startHost(t, rt, id, discardIO(), oci.WithProcessArgs(sleeper...))
				want := h.socketAddress(t, c.ns, id)
				pid := h.checkShimSocket(t, c.ns, id, want)
				t.Logf("shim pid %d serves %s at %s", pid, id, want)
				c.delete(t)
			})
			t.Run("group", func(t *testing.T) {
				group := newID(t)
				var shimPIDs []uint32
				for i, id := range []string{group + "-a", group + "-b"} {
					c := h.startHost(t, rt, id, discardIO(), oci.WithProcessArgs(sleeper...),
						oci.WithAnnotations(map[string]string{groupAnnotation: group}))
					defer c.delete(t)
					want := h.socketAddress(t, c.ns, group)
					shimPIDs = append(shimPIDs, h.checkShimSocket(t, c.ns, id, want))
					if i > 0 && shimPIDs[i] != shimPIDs[0] {
						t.Errorf("the containers of group %s are served by shims %v, want one shim", group, shimPIDs)
					}
				}
			})
		})
	}
}

// socketAddress is containerd's address of the shim of id (a container or
// a group) of this harness's containerd in ns. The private containerd
// configures no socket_dir: its shims use the default, which
// shim.SocketAddress assumes.
func (h *harness) socketAddress(t *testing.T, ns, id string) string {
	t.Helper()
	addr, err := shim.SocketAddress(namespaces.WithNamespace(context.Background(), ns), h.d.cfg.address(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// checkShimSocket checks that the bundle of container id records want as
// its shim's address, that a unix socket is there, and that Connect for id
// is answered on it. It returns the shim's pid.
func (h *harness) checkShimSocket(t *testing.T, ns, id, want string) uint32 {
	t.Helper()
	path, ok := strings.CutPrefix(want, "unix://")
	if !ok {
		t.Fatalf("containerd's address %q is not unix://", want)
	}
	if got, err := shimSocket(h.bundleDir(ns, id)); err != nil {
		t.Errorf("shim address of %s: %v", id, err)
	} else if got != path {
		t.Errorf("shim of %s serves at %s, containerd's rule says %s", id, got, path)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no socket at containerd's address for %s: %v", id, err)
	}
	if st.Mode().Type() != os.ModeSocket {
		t.Fatalf("%s is %v, not a socket", path, st.Mode())
	}
	if dir := filepath.Dir(path); dir != "/run/containerd/s" {
		t.Errorf("socket directory %s, want containerd's default /run/containerd/s", dir)
	}

	conn, err := net.DialTimeout("unix", path, opTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := v3.NewTTRPCTaskClient(c).Connect(ctx, &v3.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("Connect %s on %s: %v", id, path, err)
	}
	if resp.GetShimPid() == 0 || resp.GetTaskPid() == 0 {
		t.Errorf("Connect %s: shim pid %d, task pid %d; want both set", id, resp.GetShimPid(), resp.GetTaskPid())
	}
	return resp.GetShimPid()
}
