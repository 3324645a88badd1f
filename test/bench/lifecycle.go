package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// rawCgroup is the cgroups path of the raw runc runs (containerd's would be
// /NAMESPACE/ID).
const rawCgroup = "/" + Namespace + "-raw/run"

// CtrRun runs `ctr run --rm IMAGE id true` with runtime rt and returns its
// wall time: the whole lifecycle as a user sees it (snapshot, container,
// shim start, runc create and start, exit, delete, shim shutdown).
func (e *Env) CtrRun(ctx context.Context, rt Runtime, id string) (time.Duration, error) {
	args := []string{"--address", e.d.socket(), "-n", Namespace, "run", "--rm", "--runtime", string(rt)}
	if e.snapshotter != "overlayfs" {
		args = append(args, "--snapshotter", e.snapshotter)
	}
	args = append(args, imageRef, id, "true")
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctr, args...)
	cmd.Env = ctrEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	begin := time.Now()
	err := cmd.Run()
	d := time.Since(begin)
	if err != nil {
		return 0, fmt.Errorf("ctr run %s (%s): %w: %s", id, rt.Short(), err, out.String())
	}
	return d, nil
}

// rawBundle writes, once, a bundle for `runc run` of the image without any
// shim or containerd: the spec ctr would generate for `ctr run IMAGE ID
// true` (containerd's default spec, default devices, the image config),
// over the unpacked rootfs.
func (e *Env) rawBundle(ctx context.Context) (string, error) {
	bundle := filepath.Join(e.dir, "raw-bundle")
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err == nil {
		return bundle, nil
	}
	spec, err := oci.GenerateSpec(e.nsCtx(ctx), e.client, &containers.Container{ID: "raw"},
		// The rootfs first: the image config reads /etc/passwd there.
		oci.WithRootFSPath(e.rootfs),
		oci.WithDefaultUnixDevices,
		oci.WithImageConfig(e.image),
		oci.WithProcessArgs("true"),
	)
	if err != nil {
		return "", fmt.Errorf("generate the raw bundle's spec: %w", err)
	}
	spec.Linux.CgroupsPath = rawCgroup
	data, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return "", err
	}
	return bundle, os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600)
}

// RawRunc runs `runc run` of the raw bundle in the foreground and returns its
// wall time: the floor under any shim (runc create, start, wait, delete in
// one process, no containerd, no snapshot).
func (e *Env) RawRunc(ctx context.Context, id string) (time.Duration, error) {
	bundle, err := e.rawBundle(ctx)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.runc, "--root", filepath.Join(e.dir, "raw-runc"), "run", "--bundle", bundle, id)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	begin := time.Now()
	err = cmd.Run()
	d := time.Since(begin)
	if err != nil {
		return 0, fmt.Errorf("runc run %s: %w: %s", id, err, out.String())
	}
	return d, nil
}

// LifecycleResult is the lifecycle latency of both shims and the raw runc
// floor, and each shim's overhead above the floor.
type LifecycleResult struct {
	// Shims is the wall time of `ctr run --rm IMAGE ID true`.
	Shims Comparison `json:"ctr_run_rm"`
	// Raw is the wall time of `runc run` of the same image's bundle.
	Raw        Summary   `json:"raw_runc"`
	RawSamples []float64 `json:"raw_runc_samples"`
	// Overhead is each ctr run minus the raw runc run of the same round.
	Overhead Comparison `json:"overhead_above_raw_runc"`
}

// lifecycleSamples accumulates rounds of the lifecycle measurement.
type lifecycleSamples struct {
	shims, overhead Pair
	raw             []float64
}

// round runs one of each (mine, runc-v2, raw runc), rotating the order with
// i, and adds the samples.
func (s *lifecycleSamples) round(ctx context.Context, e *Env, i int, tag string) error {
	steps := []string{"mine", "runc", "raw"}
	rot := i % len(steps)
	steps = append(steps[rot:], steps[:rot]...)
	got := map[string]time.Duration{}
	for _, step := range steps {
		var d time.Duration
		var err error
		id := fmt.Sprintf("lc-%s-%s-%s-%d", step, e.tag, tag, i)
		switch step {
		case "mine":
			d, err = e.CtrRun(ctx, Mine, id)
		case "runc":
			d, err = e.CtrRun(ctx, RuncV2, id)
		case "raw":
			d, err = e.RawRunc(ctx, id)
		}
		if err != nil {
			return err
		}
		got[step] = d
	}
	s.raw = append(s.raw, ms(got["raw"]))
	s.shims.add(Mine, ms(got["mine"]))
	s.shims.add(RuncV2, ms(got["runc"]))
	s.overhead.add(Mine, ms(got["mine"]-got["raw"]))
	s.overhead.add(RuncV2, ms(got["runc"]-got["raw"]))
	return nil
}

func (s *lifecycleSamples) result() *LifecycleResult {
	return &LifecycleResult{
		Shims:      s.shims.Compare("ms"),
		Raw:        Summarize(s.raw),
		RawSamples: s.raw,
		Overhead:   s.overhead.Compare("ms"),
	}
}

// Lifecycle measures n rounds, after warm rounds that are not counted (the
// first runs page in containerd's and the shims' code).
func (e *Env) Lifecycle(ctx context.Context, n, warm int) (*LifecycleResult, error) {
	var s, discard lifecycleSamples
	for i := range warm {
		if err := discard.round(ctx, e, i, "warm"); err != nil {
			return nil, err
		}
	}
	for i := range n {
		if err := s.round(ctx, e, i, "m"); err != nil {
			return nil, err
		}
	}
	return s.result(), nil
}
