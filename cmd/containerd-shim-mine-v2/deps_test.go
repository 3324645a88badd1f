package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNoGRPCStack checks that the shim links no gRPC transport: the shim
// speaks only ttrpc, and containerd's api/runtime/task/v3 package (which
// also holds the gRPC stubs) would pull in google.golang.org/grpc, net/http
// and crypto/tls, half of the binary (docs/BENCHMARKS.md).
func TestNoGRPCStack(t *testing.T) {
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
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps gave %d packages: %q", len(deps), out)
	}
	for _, d := range deps {
		switch d {
		case "google.golang.org/grpc", "net/http", "crypto/tls", "github.com/containerd/containerd/api/runtime/task/v3":
			t.Errorf("the shim links %s", d)
		}
	}
}
