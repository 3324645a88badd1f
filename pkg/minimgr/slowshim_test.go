package minimgr

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// slowShimScript runs the shim; after `start` it stops the daemon that
// start launched (the process whose working directory is the bundle) and
// lets it go on only after a pause, as a loaded machine may schedule a new
// daemon late.
const slowShimScript = `#!/bin/sh
last=
for a in "$@"; do last=$a; done
if [ "$last" != start ]; then exec %[1]q "$@"; fi
%[1]q "$@" || exit
for p in /proc/[0-9]*; do
	if [ "$(readlink $p/exe)" = %[1]q ] && [ "$(readlink $p/cwd)" = "$PWD" ]; then
		kill -STOP ${p#/proc/}
		(sleep %[2]d; kill -CONT ${p#/proc/}) </dev/null >/dev/null 2>&1 &
		echo ${p#/proc/} >"$PWD/stopped-daemon"
	fi
done
`

// TestCreateWaitsForNewShim: a daemon that serves only seconds after its
// start returned, as on a loaded machine, is waited for; it is not taken
// for a dead shim.
func TestCreateWaitsForNewShim(t *testing.T) {
	m, bundle := newTestManager(t)
	const pause = 4 * time.Second
	wrapper := filepath.Join(t.TempDir(), ShimBinary)
	script := fmt.Sprintf(slowShimScript, shimBin, int(pause.Seconds()))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	m.cfg.RuntimeBinary = wrapper

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	begin := time.Now()
	c, err := m.Create(ctx, CreateOpts{Bundle: bundle, ID: "slow", Args: []string{"true"}})
	if err != nil {
		t.Fatalf("create with a daemon that serves after %s: %v", pause, err)
	}
	defer c.Close()
	if _, err := os.Stat(filepath.Join(c.StateDir(), "stopped-daemon")); err != nil {
		t.Fatalf("the daemon was never stopped: %v", err)
	}
	if took := time.Since(begin); took < pause {
		t.Fatalf("create took %s, less than the daemon's pause %s", took, pause)
	}
	if _, err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if exit, err := c.Wait(ctx); err != nil || exit.Status != 0 {
		t.Fatalf("wait: %+v %v", exit, err)
	}
	if _, err := c.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
}
