//go:build linux

package cgv2

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	namespace = "mine-cgv2"
	// memoryLimit is the container's memory.max. Not lower: runc's own
	// init runs in the container's cgroup before the container's process
	// (a Go program, and with runc 1.1 a copy of the runc binary in a
	// memfd), and at 16 MiB it was itself OOM-killed during runc create
	// once in the systemd VM ("container init was OOM-killed").
	memoryLimit = 32 << 20
	// allocator is the container's shell command: a command substitution
	// keeps all it reads in the shell's memory, 200 MB here, far beyond
	// the limit. If the shell survives it says so and exits 0.
	allocator = `x=$(head -c 200000000 /dev/zero | tr "\0" a); echo "not killed, kept ${#x} bytes"`
	// oomExitStatus is what Wait reports for an init killed by SIGKILL.
	oomExitStatus = 128 + uint32(unix.SIGKILL)
	// testTimeout bounds the whole test. Generous: the test also runs in a
	// software-emulated VM, where everything is about ten times slower.
	testTimeout = 4 * time.Minute
	// exitTimeout bounds the wait for the shim's daemon to exit after
	// Shutdown.
	exitTimeout = 20 * time.Second
)

const (
	topicCreate = "/tasks/create"
	topicStart  = "/tasks/start"
	topicOOM    = "/tasks/oom"
	topicExit   = "/tasks/exit"
	topicDelete = "/tasks/delete"
)

func TestMain(m *testing.M) {
	// The shim's daemon outlives the `start` process that launched it. As
	// a subreaper, this process inherits it instead of init, and can tell
	// that Shutdown really ended it.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "become a child subreaper:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestShimOOM runs a container into its memory limit through the shim and
// checks what the shim reports: see the package documentation.
func TestShimOOM(t *testing.T) { shimOOM(t, "runc") }

// TestShimOOMCrun is TestShimOOM with the runtime option BinaryName=crun:
// the container runs under crun (which refuses cgroup v1 hybrid hosts, so
// this is where the shim's crun support is tested for real).
func TestShimOOMCrun(t *testing.T) { shimOOM(t, "crun") }

func shimOOM(t *testing.T, runtime string) {
	requireCgroupV2(t)
	if _, err := exec.LookPath(runtime); err != nil {
		t.Skipf("needs %s on PATH: %v", runtime, err)
	}
	requireStaticBusybox(t)
	shimBin := shimBinary(t)

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	id := runtime + "-oom-" + randomHex(t)
	dir := t.TempDir()
	bundle := filepath.Join(dir, id)
	cgroupPath := "/" + namespace + "/" + id
	cgroupDir := filepath.Join("/sys/fs/cgroup", cgroupPath)
	output := filepath.Join(dir, "output")
	writeBundle(t, bundle, cgroupPath)
	events := serveEvents(t, filepath.Join(dir, "events.sock"))

	// Cleanups run last-registered first: the shim removes the container,
	// then whatever it left is removed.
	t.Cleanup(func() { removeLeftovers(t, id, cgroupDir) })
	s := startShim(ctx, t, shimBin, bundle, events.address, id)
	t.Cleanup(func() {
		if t.Failed() {
			logFile(t, "container output", output)
			logFile(t, "shim log", filepath.Join(bundle, "log"))
			logFile(t, "runc log", filepath.Join(bundle, "log.json"))
		}
	})

	req := &taskAPI.CreateTaskRequest{
		ID:     id,
		Bundle: bundle,
		Stdout: "file://" + output,
		Stderr: "file://" + output,
	}
	if runtime != "runc" {
		var err error
		if req.Options, err = typeurl.MarshalAnyToProto(&runcoptions.Options{BinaryName: runtime}); err != nil {
			t.Fatal(err)
		}
	}
	created, err := s.task.Create(ctx, req)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	s.created = true
	// The runtime that holds the container is the one asked for.
	root := filepath.Join("/run/containerd/runc", namespace)
	if out, err := exec.CommandContext(ctx, runtime, "--root", root, "state", id).CombinedOutput(); err != nil {
		t.Fatalf("%s --root %s state %s: %v\n%s", runtime, root, id, err, out)
	}
	started, err := s.task.Start(ctx, &taskAPI.StartRequest{ID: id})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if started.Pid != created.Pid {
		t.Errorf("Start: pid %d, Create said %d", started.Pid, created.Pid)
	}
	began := time.Now()

	waited, err := s.task.Wait(ctx, &taskAPI.WaitRequest{ID: id})
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	t.Logf("init (pid %d, memory limit %d MiB) exited with status %d after %v",
		created.Pid, memoryLimit>>20, waited.ExitStatus, time.Since(began).Round(time.Millisecond))
	if waited.ExitStatus != oomExitStatus {
		t.Fatalf("Wait: exit status %d, want %d (killed by SIGKILL)", waited.ExitStatus, oomExitStatus)
	}
	if n := oomKills(t, cgroupDir); n < 1 {
		t.Fatalf("%s/memory.events: oom_kill %d, want at least 1: the kernel did not OOM-kill", cgroupDir, n)
	}

	got := events.waitFor(ctx, t, topicExit)
	checkEventsUpToExit(t, got, id, created.Pid)

	deleted, err := s.task.Delete(ctx, &taskAPI.DeleteRequest{ID: id})
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	s.created = false
	if deleted.ExitStatus != oomExitStatus || deleted.Pid != created.Pid {
		t.Errorf("Delete: pid %d status %d, want pid %d status %d", deleted.Pid, deleted.ExitStatus, created.Pid, oomExitStatus)
	}
	got = events.waitFor(ctx, t, topicDelete)
	var del eventstypes.TaskDelete
	decodeEvent(t, got[len(got)-1], &del)
	if del.ContainerID != id || del.ExitStatus != oomExitStatus {
		t.Errorf("%s: %+v, want container %s status %d", topicDelete, &del, id, oomExitStatus)
	}
	if _, err := os.Stat(cgroupDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s still there after Delete (stat: %v)", cgroupDir, err)
	}
	state := filepath.Join("/run/containerd/runc", namespace, id)
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runc state %s still there after Delete (stat: %v)", state, err)
	}

	s.shutdown(ctx, t)
}

// requireCgroupV2 skips the test unless this is a cgroup v2 (unified) host
// with the memory controller, and we are root.
func requireCgroupV2(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs runc and creates cgroups")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		t.Skipf("no cgroup hierarchy at /sys/fs/cgroup: %v", err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skip("needs cgroup v2: /sys/fs/cgroup is not a cgroup2 mount (cgroup v1 or hybrid host); " +
			"hack/cgv2/test.sh runs this test in a cgroup v2 VM")
	}
	controllers, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil {
		t.Skipf("cgroup v2: %v", err)
	}
	if !strings.Contains(" "+strings.TrimSpace(string(controllers))+" ", " memory ") {
		t.Skipf("the cgroup v2 root has no memory controller (controllers: %q)", strings.TrimSpace(string(controllers)))
	}
}

// requireStaticBusybox skips the test unless /bin/busybox is statically
// linked: it is the container's only binary.
func requireStaticBusybox(t *testing.T) {
	t.Helper()
	f, err := elf.Open("/bin/busybox")
	if err != nil {
		t.Skip("needs a static busybox at /bin/busybox (Debian busybox-static):", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Skip("/bin/busybox is dynamically linked; needs a static one (Debian busybox-static)")
		}
	}
}

// shimBinary returns $MINE_SHIM, or builds the shim.
func shimBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MINE_SHIM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("MINE_SHIM: %v", err)
		}
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs MINE_SHIM or a go command to build the shim:", err)
	}
	out := filepath.Join(t.TempDir(), "containerd-shim-mine-v2")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/mineshim/mine/cmd/containerd-shim-mine-v2")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the shim: %v\n%s", err, b)
	}
	return out
}

func randomHex(t *testing.T) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// writeBundle writes an OCI bundle at dir: a rootfs holding only busybox,
// and a config close to `runc spec` with the memory limit, in cgroup
// cgroupPath.
func writeBundle(t *testing.T, dir, cgroupPath string) {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "head", "tr", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}

	limit := int64(memoryLimit)
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	spec := specs.Spec{
		Version:  "1.0.2", // what every runtime here accepts (crun 1.8 refuses newer)
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "oom",
		Process: &specs.Process{
			Args: []string{"sh", "-c", allocator},
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupPath,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				// Swap equal to the limit: no swap, the limit is hard.
				Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.CgroupNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	b, err := json.MarshalIndent(&spec, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	// The shim appends its log to a regular file named log (containerd
	// gives a FIFO there); shown when the test fails.
	if err := os.WriteFile(filepath.Join(dir, "log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// eventsRecorder is containerd's ttrpc Events service as the shim sees it:
// it keeps every forwarded envelope in arrival order.
type eventsRecorder struct {
	address string

	mu      sync.Mutex
	got     []*apitypes.Envelope // guarded by mu
	arrived chan struct{}        // a token after each arrival
}

func (r *eventsRecorder) Forward(_ context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if req.Envelope == nil {
		return nil, errors.New("forward without envelope")
	}
	r.mu.Lock()
	r.got = append(r.got, req.Envelope)
	r.mu.Unlock()
	select {
	case r.arrived <- struct{}{}:
	default:
	}
	return &emptypb.Empty{}, nil
}

func serveEvents(t *testing.T, path string) *eventsRecorder {
	t.Helper()
	r := &eventsRecorder{address: path, arrived: make(chan struct{}, 1)}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(srv, r)
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

// waitFor returns every envelope received up to the first one of topic.
func (r *eventsRecorder) waitFor(ctx context.Context, t *testing.T, topic string) []*apitypes.Envelope {
	t.Helper()
	for {
		r.mu.Lock()
		for i, e := range r.got {
			if e.Topic == topic {
				out := append([]*apitypes.Envelope(nil), r.got[:i+1]...)
				r.mu.Unlock()
				return out
			}
		}
		seen := topics(r.got)
		r.mu.Unlock()
		select {
		case <-r.arrived:
		case <-ctx.Done():
			t.Fatalf("no %s event; got %v", topic, seen)
		}
	}
}

func topics(envs []*apitypes.Envelope) []string {
	out := make([]string, len(envs))
	for i, e := range envs {
		out[i] = e.Topic
	}
	return out
}

func decodeEvent(t *testing.T, env *apitypes.Envelope, into proto.Message) {
	t.Helper()
	if err := typeurl.UnmarshalTo(env.Event, into); err != nil {
		t.Fatalf("%s: decode %s: %v", env.Topic, env.Event.GetTypeUrl(), err)
	}
}

// checkEventsUpToExit checks the events up to the init's exit: create,
// start, then at least one OOM event, then the exit with status 137. The OOM
// event must come first: containerd marks the exit as OOM-caused only when
// it knows of the OOM already.
func checkEventsUpToExit(t *testing.T, envs []*apitypes.Envelope, id string, pid uint32) {
	t.Helper()
	names := topics(envs)
	t.Logf("events: %v", names)
	if len(envs) < 4 || names[0] != topicCreate || names[1] != topicStart {
		t.Fatalf("events %v, want %s, %s, %s..., %s", names, topicCreate, topicStart, topicOOM, topicExit)
	}
	for _, e := range envs {
		if e.Namespace != namespace {
			t.Errorf("%s event in namespace %q, want %q", e.Topic, e.Namespace, namespace)
		}
	}
	for _, e := range envs[2 : len(envs)-1] {
		if e.Topic != topicOOM {
			t.Fatalf("events %v: %s between start and exit, want only %s", names, e.Topic, topicOOM)
		}
		var oom eventstypes.TaskOOM
		decodeEvent(t, e, &oom)
		if oom.ContainerID != id {
			t.Errorf("%s for container %q, want %q", topicOOM, oom.ContainerID, id)
		}
	}
	var exit eventstypes.TaskExit
	decodeEvent(t, envs[len(envs)-1], &exit)
	if exit.ContainerID != id || exit.ID != id || exit.Pid != pid || exit.ExitStatus != oomExitStatus {
		t.Errorf("%s: %+v, want container and id %s, pid %d, status %d", topicExit, &exit, id, pid, oomExitStatus)
	}
}

// oomKills reads oom_kill from the cgroup's memory.events.
func oomKills(t *testing.T, cgroupDir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cgroupDir, "memory.events"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("memory.events: %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("memory.events has no oom_kill: %q", data)
	return 0
}

// shim is a started containerd-shim-mine-v2 daemon and its Task API client.
type shim struct {
	id      string
	socket  string // path of its ttrpc socket
	pid     int    // of the daemon
	client  *ttrpc.Client
	task    taskAPI.TTRPCTaskService
	created bool // a container exists that the cleanup must remove
	exited  bool // the daemon was reaped
}

// startShim runs `containerd-shim-mine-v2 ... start` in bundle as containerd
// does, connects to the daemon it launched, and registers its cleanup.
func startShim(ctx context.Context, t *testing.T, bin, bundle, eventsAddress, id string) *shim {
	t.Helper()
	params, err := proto.Marshal(&bootapi.BootstrapParams{
		InstanceID:             id,
		Namespace:              namespace,
		LogLevel:               bootapi.LogLevel_LOG_LEVEL_DEBUG,
		ContainerdTtrpcAddress: "unix://" + eventsAddress,
		ContainerdGrpcAddress:  filepath.Join(filepath.Dir(bundle), "containerd.sock"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// As containerd with debug logging runs it; the log is shown when the
	// test fails.
	cmd := exec.CommandContext(ctx, bin,
		"-namespace", namespace, "-id", id,
		"-address", filepath.Join(filepath.Dir(bundle), "containerd.sock"),
		"-debug", "start")
	cmd.Dir = bundle
	cmd.Env = append(withoutEnv(os.Environ(), "TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE"),
		"TTRPC_ADDRESS="+eventsAddress,
		"GRPC_ADDRESS="+filepath.Join(filepath.Dir(bundle), "containerd.sock"),
		"NAMESPACE="+namespace)
	cmd.Stdin = bytes.NewReader(params)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("shim start: %v\nstderr: %s", err, stderr.Bytes())
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("shim start: stdout is no BootstrapResult: %v (%q)", err, stdout.Bytes())
	}
	socket, ok := strings.CutPrefix(res.Address, "unix://")
	if res.Protocol != "ttrpc" || !ok {
		t.Fatalf("shim start: %+v, want a ttrpc unix:// address", &res)
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("dial the shim at %s: %v", socket, err)
	}
	s := &shim{id: id, socket: socket, client: ttrpc.NewClient(conn)}
	s.task = taskAPI.NewTTRPCTaskClient(s.client)
	t.Cleanup(func() { s.cleanup(t) })
	resp, err := s.task.Connect(ctx, &taskAPI.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	s.pid = int(resp.ShimPid)
	t.Logf("shim %s (pid %d) at %s", resp.Version, s.pid, res.Address)
	return s
}

func withoutEnv(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// shutdown asks the shim to exit and checks that it does, removing its
// socket.
func (s *shim) shutdown(ctx context.Context, t *testing.T) {
	t.Helper()
	_, err := s.task.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: s.id})
	// The shim may close the connection before its reply arrives.
	if err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := s.reap(exitTimeout); err != nil {
		t.Fatalf("after Shutdown: %v", err)
	}
	if _, err := os.Stat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shim socket %s still there after Shutdown (stat: %v)", s.socket, err)
	}
}

// reap waits for the daemon, which became our child when `start` exited.
func (s *shim) reap(timeout time.Duration) error {
	if s.exited || s.pid <= 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(s.pid, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			// Not our child (no subreaper?): wait for it to vanish.
			if unix.Kill(s.pid, 0) != nil {
				s.exited = true
				return nil
			}
		case err != nil:
			return fmt.Errorf("wait for shim pid %d: %w", s.pid, err)
		case pid == s.pid:
			s.exited = true
			if !ws.Exited() || ws.ExitStatus() != 0 {
				return fmt.Errorf("shim pid %d ended with %v", s.pid, describeWait(ws))
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("shim pid %d still running after %v", s.pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// cleanup removes what a failed test left: the container, the daemon.
func (s *shim) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.created {
		_, _ = s.task.Kill(ctx, &taskAPI.KillRequest{ID: s.id, Signal: uint32(unix.SIGKILL), All: true})
		_, _ = s.task.Wait(ctx, &taskAPI.WaitRequest{ID: s.id})
		if _, err := s.task.Delete(ctx, &taskAPI.DeleteRequest{ID: s.id}); err != nil {
			t.Logf("cleanup: Delete: %v", err)
		}
	}
	if !s.exited {
		_, _ = s.task.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: s.id, Now: true})
		if err := s.reap(5 * time.Second); err != nil && s.pid > 0 {
			t.Logf("cleanup: %v; killing it", err)
			_ = unix.Kill(s.pid, unix.SIGKILL)
			_ = s.reap(5 * time.Second)
		}
	}
	s.client.Close()
	_ = os.Remove(s.socket)
}

// removeLeftovers removes runc state and cgroups a failed run left behind.
func removeLeftovers(t *testing.T, id, cgroupDir string) {
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", namespace, id)); err == nil {
		out, err := exec.Command("runc", "--root", filepath.Join("/run/containerd/runc", namespace), "delete", "--force", id).CombinedOutput()
		if err != nil {
			t.Logf("cleanup: runc delete --force %s: %v: %s", id, err, out)
		}
	}
	_ = os.Remove(cgroupDir)
	// Shared with other runs: removed only once empty.
	_ = os.Remove(filepath.Dir(cgroupDir))
	_ = os.Remove(filepath.Join("/run/containerd/runc", namespace))
}

func logFile(t *testing.T, what, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Logf("%s: %v", what, err)
		return
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	t.Logf("%s (%s):\n%s", what, path, b)
}
