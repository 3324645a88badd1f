package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNoGRPCStack checks that the shim links no gRPC transport: it speaks
// only ttrpc, and containerd's api/runtime/task/v3 and runtime/sandbox/v1
// packages (which also hold gRPC stubs) would pull in google.golang.org/grpc,
// net/http and crypto/tls (docs/BENCHMARKS.md). gRPC's status and codes
// packages stay: ttrpc and errdefs carry errors in them.
func TestNoGRPCStack(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go in PATH to list the shim's dependencies")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 10 {
		t.Fatalf("go list -deps gave %d packages: %q", len(lines), out)
	}
	for _, l := range lines {
		f := strings.Fields(l)
		pkg, imports := f[0], f[1:]
		switch pkg {
		case "github.com/containerd/containerd/api/runtime/task/v3",
			"github.com/containerd/containerd/api/runtime/sandbox/v1",
			"google.golang.org/grpc", "net/http", "crypto/tls":
			t.Errorf("the shim links %s", pkg)
		}
		if strings.HasPrefix(pkg, "google.golang.org/grpc") {
			continue
		}
		for _, imp := range imports {
			if imp == "google.golang.org/grpc" {
				t.Errorf("%s brings in %s", pkg, imp)
			}
		}
	}
}

// TestNoEBPFOrDBus checks that the shim links neither cilium/ebpf nor the
// systemd D-Bus client: the cgroups/v3 managers bring them, and the shim
// reads and joins cgroups with pkg/cgroup instead (docs/BENCHMARKS.md).
func TestNoEBPFOrDBus(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go in PATH to list the shim's dependencies")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 10 {
		t.Fatalf("go list -deps gave %d packages: %q", len(pkgs), out)
	}
	for _, p := range pkgs {
		for _, banned := range []string{"github.com/cilium/ebpf", "github.com/godbus/dbus", "github.com/coreos/go-systemd"} {
			if p == banned || strings.HasPrefix(p, banned+"/") {
				t.Errorf("the shim links %s", p)
			}
		}
	}
}
