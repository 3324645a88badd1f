package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
	"github.com/mineshim/mine/test/internal/testenv"
)

const (
	criNamespace = "k8s.io"
	pauseImage   = "localhost/mine-kubelet/pause:1"
	busyboxImage = imagebuild.DefaultRef
	nodeName     = "mine-node"
	// podPrefix starts the name of every pod of these tests.
	podPrefix = "mine-"

	callTimeout = 30 * time.Second
	// podTimeout bounds the waits for a pod state: the kubelet syncs
	// pods every second or so, and the machine may be busy.
	podTimeout   = 2 * time.Minute
	pollInterval = 200 * time.Millisecond
)

// env is what the tests drive, set up by TestMain.
var env struct {
	skip string
	err  error
	dir  string
	shim string // resolved path of the mine shim binary
	ctrd *testenv.Containerd
	kube *testenv.Kubelet
	conn *grpc.ClientConn
	rt   cri.RuntimeServiceClient
	img  cri.ImageServiceClient
}

func TestMain(m *testing.M) {
	env.skip, env.err = setup()
	switch {
	case env.skip != "":
		fmt.Fprintf(os.Stderr, "kubelet: every test skips: %s\n", env.skip)
	case env.err != nil:
		fmt.Fprintf(os.Stderr, "kubelet: setup failed, every test fails: %v\n", env.err)
	}
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// requireEnv skips or fails t when setup did not succeed; on failure the
// tails of the kubelet's and containerd's logs are added to t's output.
func requireEnv(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
	if env.err != nil {
		t.Fatalf("setup failed: %v", env.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log, last lines:\n%s", env.kube.LogTail(40))
			t.Logf("containerd log, last lines:\n%s", env.ctrd.LogTail(30))
		}
	})
}

func setup() (skip string, err error) {
	if os.Geteuid() != 0 {
		return "needs root: runs containerd, runc and a kubelet", nil
	}
	kubelet, skip := testenv.KubeletBinary()
	if skip != "" {
		return skip, nil
	}
	binDir, skip := testenv.Latest().BinDir()
	if skip != "" {
		return skip, nil
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "runc not found in PATH (Debian package runc)", nil
	}
	if _, err := os.Stat(imagebuild.DefaultBusybox); err != nil {
		return "no busybox to build the test image from (Debian package busybox-static): " + err.Error(), nil
	}
	// Short: the shim sockets' paths are derived from it.
	if env.dir, err = os.MkdirTemp("/run", "mine-k-"); err != nil {
		return "", err
	}
	bin := filepath.Join(env.dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		return "", err
	}
	shim, skip, err := testenv.BuildShim(bin)
	if skip != "" || err != nil {
		return skip, err
	}
	if env.shim, err = filepath.EvalSymlinks(shim); err != nil {
		return "", err
	}
	pause, skip, err := testenv.BuildPause(bin)
	if skip != "" || err != nil {
		return skip, err
	}
	pauseOpts, err := testenv.PauseImage(pauseImage, pause)
	if err != nil {
		return "", err
	}
	snapshotter := "overlayfs"
	if err := testenv.OverlayWorks(env.dir); err != nil {
		snapshotter = "native"
	}
	cfg := testenv.Config{
		Dir:            filepath.Join(env.dir, "c"),
		Snapshotter:    snapshotter,
		DefaultRuntime: "mine",
		SandboxImage:   pauseImage,
		PathDirs:       []string{bin, binDir},
	}
	if env.ctrd, err = testenv.StartContainerd(filepath.Join(binDir, "containerd"), cfg); err != nil {
		return "", err
	}
	for _, o := range []imagebuild.Options{pauseOpts, {Ref: busyboxImage}} {
		tar := filepath.Join(env.dir, filepath.Base(o.Ref)+".tar")
		if _, err := imagebuild.WriteFile(tar, o); err != nil {
			return "", fmt.Errorf("build image %s: %w", o.Ref, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, filepath.Join(binDir, "ctr"), "--address", cfg.Address(),
			"-n", criNamespace, "images", "import", "--snapshotter", snapshotter, tar).CombinedOutput()
		cancel()
		if err != nil {
			return "", fmt.Errorf("import %s: %w: %s", o.Ref, err, out)
		}
	}
	if env.conn, err = grpc.NewClient("unix://"+cfg.Address(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return "", err
	}
	env.rt = cri.NewRuntimeServiceClient(env.conn)
	env.img = cri.NewImageServiceClient(env.conn)
	// The CRI plugin learns of imported images from containerd's events.
	for _, ref := range []string{pauseImage, busyboxImage} {
		err := poll(30*time.Second, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			st, err := env.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
			if err != nil {
				return false, err.Error()
			}
			return st.GetImage() != nil, "image unknown to CRI"
		})
		if err != nil {
			return "", fmt.Errorf("CRI sees %s: %w", ref, err)
		}
	}
	kcfg := testenv.KubeletConfig{
		Dir:             filepath.Join(env.dir, "k"),
		RuntimeEndpoint: cfg.Address(),
		NodeName:        nodeName,
	}
	if env.kube, err = testenv.StartKubelet(kubelet, kcfg); err != nil {
		return "", err
	}
	return "", nil
}

// teardown removes every manifest and waits for the kubelet to remove the
// pods, stops the kubelet, removes what is left through CRI, stops
// containerd, and reports leftover shims.
func teardown() error {
	var errs []error
	if env.kube != nil {
		entries, _ := os.ReadDir(env.kube.Config.ManifestDir())
		for _, e := range entries {
			errs = append(errs, os.Remove(filepath.Join(env.kube.Config.ManifestDir(), e.Name())))
		}
		errs = append(errs, poll(podTimeout, func() (bool, string) {
			n, err := runningSandboxes()
			if err != nil {
				return false, err.Error()
			}
			return n == 0, fmt.Sprintf("%d pod sandboxes still ready", n)
		}))
		errs = append(errs, env.kube.Stop())
	}
	if env.rt != nil {
		errs = append(errs, removeAllPods())
	}
	if env.conn != nil {
		errs = append(errs, env.conn.Close())
	}
	if env.ctrd != nil {
		errs = append(errs, env.ctrd.Stop())
		errs = append(errs, testenv.KillLeftoverShims(env.ctrd.Address(), []string{env.shim}))
	}
	errs = append(errs, testenv.RemoveContainerLogLinks(podPrefix))
	if env.dir != "" {
		errs = append(errs, testenv.RemoveDir(env.dir))
	}
	return errors.Join(errs...)
}

func runningSandboxes() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := env.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{
		State: &cri.PodSandboxStateValue{State: cri.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return 0, err
	}
	return len(resp.GetItems()), nil
}

// removeAllPods stops and removes every pod sandbox CRI still knows.
func removeAllPods() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := env.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	var errs []error
	for _, sb := range resp.GetItems() {
		if _, err := env.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, err)
		}
		if _, err := env.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// poll calls f every pollInterval until it reports done or timeout passes;
// the error then carries f's last state.
func poll(timeout time.Duration, f func() (done bool, state string)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, state := f()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done within %v: %s", timeout, state)
		}
		<-tick.C
	}
}
