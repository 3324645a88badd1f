package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/mineshim/mine/test/e2e/imagebuild"
	"github.com/mineshim/mine/test/internal/testenv"
)

// PodVariant is one way of running a Kubernetes pod through CRI: a runtime
// handler of the pods' containerd.
type PodVariant string

// The three compared: mine serving the Sandbox API (no pause container),
// mine with a pause container, and containerd's runc shim with a pause
// container.
const (
	PodPauseless PodVariant = "mine-pauseless"
	PodMinePause PodVariant = "mine"
	PodRuncPause PodVariant = "runc"
)

// PodVariants lists the variants in the order of the table.
var PodVariants = []PodVariant{PodPauseless, PodMinePause, PodRuncPause}

// Label is the variant's name in tables and JSON.
func (v PodVariant) Label() string {
	switch v {
	case PodPauseless:
		return "mine, no pause"
	case PodMinePause:
		return "mine + pause"
	}
	return "runc-v2 + pause"
}

const (
	// podPauseImage is the pause image of the pods' containerd: the
	// static pause program of the e2e tests in an image of its own.
	podPauseImage = "localhost/mine-bench/pause:1"
	podPausePkg   = "github.com/mineshim/mine/test/e2e/pause"
	// podNamespace is CRI's containerd namespace.
	podNamespace = "k8s.io"
	// holderArgv0 is how mine names a pod's namespace holder.
	holderArgv0 = "mine-sandbox-holder"
)

// PodResult compares pods of the three variants.
type PodResult struct {
	// Start is RunPodSandbox + CreateContainer + StartContainer of a pod
	// with one container (ms), by variant label.
	Start map[string]Summary `json:"start_ms"`
	// Pss and Rss are the memory per pod (KiB) of every process the pod
	// costs besides its container: the shim, and the pause container or
	// the namespace holder, read after the pods have been idle.
	Pss map[string]Summary `json:"pss_kib"`
	Rss map[string]Summary `json:"rss_kib"`
	// Ratios of the medians, pauseless mine / runc-v2 with pause.
	StartRatio float64 `json:"start_ratio"`
	PssRatio   float64 `json:"pss_ratio"`
	Pods       int     `json:"pods_for_memory"`
	Network    string  `json:"network"`
}

// podEnv is a second private containerd, with CRI, the three handlers, the
// busybox and pause images and host-network pods (CNI would add the same
// cost to every variant).
type podEnv struct {
	e    *Env
	d    *daemon
	conn *grpc.ClientConn
	rt   cri.RuntimeServiceClient
	seq  int
}

// podsExtraTOML adds the pauseless handler to the pods' containerd: the
// shim serves the Sandbox API, and no pause image is pulled.
func podsExtraTOML() string {
	return fmt.Sprintf("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.%s]\n"+
		"  runtime_type = %q\n  sandboxer = \"shim\"\n  disable_pause_image_pull = true\n", PodPauseless, string(Mine))
}

// openPods starts the pods' containerd beside e's and imports the images.
func (e *Env) openPods(ctx context.Context) (_ *podEnv, err error) {
	dir := filepath.Join(e.dir, "pods")
	p := &podEnv{e: e}
	pause := filepath.Join(e.dir, "pause")
	bctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	build := exec.CommandContext(bctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", pause, podPausePkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build %s: %w\n%s", podPausePkg, err, out)
	}
	pauseBin, err := os.ReadFile(pause)
	if err != nil {
		return nil, err
	}
	c, err := testenv.StartContainerd(e.containerd, testenv.Config{
		Dir:          dir,
		RootDir:      filepath.Join(e.rootDir, "pods"),
		Snapshotter:  e.snapshotter,
		Runtimes:     map[string]string{string(PodRuncPause): string(RuncV2), string(PodMinePause): string(Mine)},
		SandboxImage: podPauseImage,
		PathDirs:     []string{e.binDir, filepath.Dir(e.containerd)},
		LogLevel:     "info",
		ExtraTOML:    podsExtraTOML(),
	})
	if err != nil {
		return nil, fmt.Errorf("pods' containerd: %w", err)
	}
	p.d = &daemon{c}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close(), fmt.Errorf("pods' containerd log:\n%s", p.d.logTail(30)))
		}
	}()
	for ref, opts := range map[string]imagebuild.Options{
		imageRef:      {Ref: imageRef},
		podPauseImage: {Ref: podPauseImage, Files: []imagebuild.File{{Path: "pause", Mode: 0o755, Data: pauseBin}}, Cmd: []string{"/pause"}},
	} {
		tar := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
		if _, err := imagebuild.WriteFile(tar, opts); err != nil {
			return p, err
		}
		ictx, cancel := context.WithTimeout(ctx, ctrTimeout)
		imp := exec.CommandContext(ictx, e.ctr, "--address", p.d.socket(), "-n", podNamespace, "images", "import", "--snapshotter", e.snapshotter, tar)
		imp.Env = ctrEnv()
		out, err := imp.CombinedOutput()
		cancel()
		if err != nil {
			return p, fmt.Errorf("import %s: %w: %s", ref, err, out)
		}
	}
	if p.conn, err = grpc.NewClient("unix://"+p.d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return p, err
	}
	p.rt = cri.NewRuntimeServiceClient(p.conn)
	// CRI learns of imported images from containerd's events.
	img := cri.NewImageServiceClient(p.conn)
	deadline := time.Now().Add(opTimeout)
	for _, ref := range []string{imageRef, podPauseImage} {
		for {
			cctx, cancel := e.opCtx(ctx)
			st, err := img.ImageStatus(cctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
			cancel()
			if err == nil && st.GetImage() != nil {
				break
			}
			if time.Now().After(deadline) {
				return p, fmt.Errorf("CRI does not see image %s: %v", ref, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, nil
}

func (p *podEnv) close() error {
	var errs []error
	if p.conn != nil {
		errs = append(errs, p.conn.Close())
	}
	if p.d != nil {
		errs = append(errs, p.d.stop())
	}
	return errors.Join(errs...)
}

// pod is a running pod with one container.
type pod struct {
	id, container string
}

// runPod runs a host-network pod of variant v with one `sleep` container.
func (p *podEnv) runPod(ctx context.Context, v PodVariant) (pod, error) {
	p.seq++
	name := fmt.Sprintf("p%d-%s", p.seq, p.e.tag)
	config := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: name, Uid: name, Namespace: "mine-bench"},
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{
			Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD,
		}}},
	}
	var out pod
	cctx, cancel := p.e.opCtx(ctx)
	defer cancel()
	r, err := p.rt.RunPodSandbox(cctx, &cri.RunPodSandboxRequest{Config: config, RuntimeHandler: string(v)})
	if err != nil {
		return out, fmt.Errorf("RunPodSandbox (%s): %w", v, err)
	}
	out.id = r.GetPodSandboxId()
	c, err := p.rt.CreateContainer(cctx, &cri.CreateContainerRequest{PodSandboxId: out.id, SandboxConfig: config, Config: &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "c"}, Image: &cri.ImageSpec{Image: imageRef}, Command: []string{"sleep", "3600"},
		Linux: &cri.LinuxContainerConfig{SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: config.Linux.SecurityContext.NamespaceOptions}},
	}})
	if err != nil {
		return out, fmt.Errorf("CreateContainer (%s): %w", v, err)
	}
	out.container = c.GetContainerId()
	if _, err := p.rt.StartContainer(cctx, &cri.StartContainerRequest{ContainerId: out.container}); err != nil {
		return out, fmt.Errorf("StartContainer (%s): %w", v, err)
	}
	return out, nil
}

func (p *podEnv) removePod(ctx context.Context, x pod) error {
	cctx, cancel := p.e.opCtx(ctx)
	defer cancel()
	if _, err := p.rt.StopPodSandbox(cctx, &cri.StopPodSandboxRequest{PodSandboxId: x.id}); err != nil {
		return err
	}
	_, err := p.rt.RemovePodSandbox(cctx, &cri.RemovePodSandboxRequest{PodSandboxId: x.id})
	return err
}

// podMem returns the memory of the processes pod x costs besides its
// container: its shim (the process whose -id is the pod's) and the shim's
// children that are not the container's init: the pause container or the
// holder.
func (p *podEnv) podMem(ctx context.Context, x pod) (Mem, error) {
	var total Mem
	cctx, cancel := p.e.opCtx(ctx)
	defer cancel()
	st, err := p.rt.ContainerStatus(cctx, &cri.ContainerStatusRequest{ContainerId: x.container, Verbose: true})
	if err != nil {
		return total, err
	}
	var containerPid int
	if raw := st.GetInfo()["info"]; raw != "" {
		var info struct {
			Pid int `json:"pid"`
		}
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			return total, err
		}
		containerPid = info.Pid
	}
	procs, err := procTable()
	if err != nil {
		return total, err
	}
	shim := 0
	for pid, pr := range procs {
		if strings.HasPrefix(filepath.Base(pr.argv0), "containerd-shim") && pr.flags["-id"] == x.id && pr.flags["-address"] == p.d.socket() {
			shim = pid
		}
	}
	if shim == 0 {
		return total, fmt.Errorf("no shim with -id %s", x.id)
	}
	pids := []int{shim}
	for pid, pr := range procs {
		if pr.ppid == shim && pid != containerPid {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 2 {
		return total, fmt.Errorf("pod %s: shim %d and %d other children, want one (pause or holder)", x.id, shim, len(pids)-1)
	}
	for _, pid := range pids {
		m, err := readMem(pid)
		if err != nil {
			return total, err
		}
		total.add(m)
		total.Threads += m.Threads
	}
	return total, nil
}

type procInfo struct {
	ppid  int
	argv0 string
	flags map[string]string
}

// procTable reads the parent and command line of every process.
func procTable() (map[int]procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]procInfo{}
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		info := procInfo{ppid: ppid, argv0: argv[0], flags: map[string]string{}}
		for i := 0; i+1 < len(argv); i++ {
			if strings.HasPrefix(argv[i], "-") {
				info.flags[argv[i]] = argv[i+1]
			}
		}
		out[pid] = info
	}
	return out, nil
}

// Pods measures pod start (rounds interleaved over the variants, after one
// uncounted round) and then the memory of n idle pods of each variant.
func (e *Env) Pods(ctx context.Context, rounds, n int, settle time.Duration) (_ *PodResult, err error) {
	p, err := e.openPods(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, p.close()) }()
	res := &PodResult{Start: map[string]Summary{}, Pss: map[string]Summary{}, Rss: map[string]Summary{}, Pods: n, Network: "host"}
	starts := map[PodVariant][]float64{}
	for i := -1; i < rounds; i++ {
		for j := range PodVariants {
			v := PodVariants[(j+max(i, 0))%len(PodVariants)]
			t0 := time.Now()
			x, err := p.runPod(ctx, v)
			took := time.Since(t0)
			if x.id != "" {
				if rerr := p.removePod(ctx, x); rerr != nil && err == nil {
					err = rerr
				}
			}
			if err != nil {
				return res, err
			}
			if i >= 0 {
				starts[v] = append(starts[v], ms(took))
			}
		}
	}
	pss, rss := map[PodVariant][]float64{}, map[PodVariant][]float64{}
	for _, v := range PodVariants {
		var pods []pod
		for range n {
			x, err := p.runPod(ctx, v)
			if x.id != "" {
				pods = append(pods, x)
			}
			if err != nil {
				return res, err
			}
		}
		e.logf("pods: %d %s pods idle for %v", n, v.Label(), settle)
		select {
		case <-time.After(settle):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		unix.Sync()
		for _, x := range pods {
			m, err := p.podMem(ctx, x)
			if err != nil {
				return res, err
			}
			pss[v] = append(pss[v], m.Pss)
			rss[v] = append(rss[v], m.Rss)
		}
		for _, x := range pods {
			if err := p.removePod(ctx, x); err != nil {
				return res, err
			}
		}
	}
	for _, v := range PodVariants {
		res.Start[v.Label()] = Summarize(starts[v])
		res.Pss[v.Label()] = Summarize(pss[v])
		res.Rss[v.Label()] = Summarize(rss[v])
	}
	res.StartRatio = Ratio(res.Start[PodPauseless.Label()].Median, res.Start[PodRuncPause.Label()].Median)
	res.PssRatio = Ratio(res.Pss[PodPauseless.Label()].Median, res.Pss[PodRuncPause.Label()].Median)
	return res, nil
}
