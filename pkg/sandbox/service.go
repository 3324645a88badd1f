package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"sync"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mineshim/mine/pkg/cgroup"
	"github.com/mineshim/mine/pkg/process"
)

// State strings of SandboxStatus, exactly as CRI compares them.
const (
	StateReady    = "SANDBOX_READY"
	StateNotReady = "SANDBOX_NOTREADY"
)

// stopTimeout bounds the wait for the holder's exit after SIGKILL when
// StopSandbox gives no timeout, and in ShutdownSandbox and Close.
const stopTimeout = 10 * time.Second

// criSandboxID is the annotation CRI puts on every member container.
const criSandboxID = "io.kubernetes.cri.sandbox-id"

// phase is where the one sandbox of a shim is in its life.
type phase int

const (
	phaseNone     phase = iota // no CreateSandbox yet
	phaseCreated               // files written, no holder yet
	phaseStarting              // holder being spawned
	phaseReady                 // holder alive
	phaseStopped               // holder gone (killed or died), or stopped before start
	phaseShutdown              // resources released; the shim may exit
)

func (p phase) String() string {
	switch p {
	case phaseNone:
		return "none"
	case phaseCreated:
		return "created"
	case phaseStarting:
		return "starting"
	case phaseReady:
		return "ready"
	case phaseStopped:
		return "stopped"
	case phaseShutdown:
		return "shutdown"
	}
	return "phase(" + strconv.Itoa(int(p)) + ")"
}

// Config wires a Service.
type Config struct {
	// Reaper reaps the holder, as it reaps the containers.
	Reaper *process.Reaper
	// Self is the binary re-executed as the holder; its main package must
	// call RunHolderIfAsked from an init function. Default /proc/self/exe.
	Self string
	// Members returns how many containers the shim still serves.
	Members func() int
	// Shutdown is called once the sandbox is shut down and no member
	// remains. It must not block, and the shim must answer the call in
	// flight before it exits. (After the last member's Task.Shutdown, the
	// task service ends the shim itself.)
	Shutdown func()
}

// Service implements the Sandbox API for the one sandbox of a shim.
type Service struct {
	cfg Config

	mu        sync.Mutex
	phase     phase         // guarded by mu
	id        string        // guarded by mu
	bundle    string        // guarded by mu
	netns     string        // guarded by mu
	pod       Pod           // guarded by mu
	createdAt time.Time     // guarded by mu
	h         *holder       // guarded by mu; set from phaseReady on
	cgroup    string        // guarded by mu; the holder's cgroup, "" if none
	stopped   chan struct{} // closed on entering phaseStopped; made at Create
	spawned   chan struct{} // guarded by mu; closed when the last StartSandbox's spawn is settled
	// cancelSpawn cancels the last StartSandbox's spawn of the holder, which
	// then kills the holder at once. Guarded by mu.
	cancelSpawn context.CancelFunc
	exit        process.Exit // guarded by mu; valid once stopped is closed
	// stats reads the pod's cgroup for SandboxMetrics, which containerd's
	// CRI calls once a second: resolved at the first call (on a v1 host
	// that reads the host's mount table) and kept. Guarded by mu.
	stats *cgroup.Stats
}

// New returns the Service of a shim.
func New(cfg Config) *Service {
	if cfg.Self == "" {
		cfg.Self = "/proc/self/exe"
	}
	if cfg.Members == nil {
		cfg.Members = func() int { return 0 }
	}
	return &Service{cfg: cfg}
}

// Alive reports whether the shim holds a sandbox that is not shut down:
// the shim must stay up (and ignore Task.Shutdown) while it does.
func (s *Service) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phase != phaseNone && s.phase != phaseShutdown
}

// abandonedAfter is how long a sandbox created but never started waits,
// without a call, for its start before the shim takes it for abandoned
// when its network namespace has not told so earlier: well past kubelet's
// deadline for RunPodSandbox (2 min by default), which a pull of the pause
// image between CreateSandbox and StartSandbox may take.
const abandonedAfter = 5 * time.Minute

// Abandoned reports whether the shim holds a sandbox that was created and
// will never be started, idle being how long no call came. CRI's
// RunPodSandbox, failing between CreateSandbox and StartSandbox (the pull
// of the pause image), rolls back its own side, the pod's network
// namespace included, and never calls the shim again: neither
// StartSandbox nor ShutdownSandbox. A namespace gone says so at once;
// otherwise (a pod on the host's network has none to tell) a sandbox is
// taken for abandoned once no call came for abandonedAfter.
func (s *Service) Abandoned(idle time.Duration) bool {
	s.mu.Lock()
	phase, netns := s.phase, s.netns
	s.mu.Unlock()
	if phase != phaseCreated {
		return false
	}
	if netns != "" {
		if _, err := os.Stat(netns); errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return idle > abandonedAfter
}

func wire(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

// checkLocked verifies that id names the sandbox of this shim.
func (s *Service) checkLocked(id string) error {
	if s.phase == phaseNone || id != s.id {
		return fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return nil
}

// CreateSandbox validates the pod's config and writes the pod's files.
func (s *Service) CreateSandbox(ctx context.Context, r *CreateSandboxRequest) (*CreateSandboxResponse, error) {
	if err := process.ValidateID(r.GetSandboxId()); err != nil {
		return nil, wire(err)
	}
	if r.GetBundlePath() == "" || !filepath.IsAbs(r.GetBundlePath()) {
		return nil, wire(fmt.Errorf("bundle path %q must be absolute: %w", r.GetBundlePath(), errdefs.ErrInvalidArgument))
	}
	pod, err := decodePod(r.GetOptions(), r.GetNetnsPath())
	if err != nil {
		return nil, wire(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.phase != phaseNone {
		return nil, wire(fmt.Errorf("sandbox %q (this shim serves %q): %w", r.GetSandboxId(), s.id, errdefs.ErrAlreadyExists))
	}
	// Writing a few small files and one mount: done under the lock so that
	// a concurrent Create cannot interleave.
	if err := writePodFiles(r.GetBundlePath(), pod); err != nil {
		_ = Cleanup(r.GetBundlePath())
		return nil, wire(fmt.Errorf("pod files: %w", err))
	}
	s.phase = phaseCreated
	s.id, s.bundle, s.netns, s.pod = r.GetSandboxId(), r.GetBundlePath(), r.GetNetnsPath(), pod
	s.createdAt = time.Now()
	s.stopped = make(chan struct{})
	log.G(ctx).WithField("sandbox_id", s.id).WithField("netns", s.netns).Debug("sandbox created")
	return &CreateSandboxResponse{}, nil
}

// StartSandbox spawns the holder and answers with its pid.
func (s *Service) StartSandbox(ctx context.Context, r *StartSandboxRequest) (*StartSandboxResponse, error) {
	s.mu.Lock()
	if s.phase == phaseNone {
		s.mu.Unlock()
		return nil, wire(fmt.Errorf("start of sandbox %q before create: %w", r.GetSandboxId(), errdefs.ErrFailedPrecondition))
	}
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		s.mu.Unlock()
		return nil, wire(err)
	}
	if s.phase != phaseCreated {
		st := s.phase
		s.mu.Unlock()
		return nil, wire(fmt.Errorf("cannot start a %s sandbox: %w", st, errdefs.ErrFailedPrecondition))
	}
	s.phase = phaseStarting
	spawned := make(chan struct{})
	spawnCtx, cancelSpawn := context.WithCancel(ctx)
	defer cancelSpawn()
	s.spawned, s.cancelSpawn = spawned, cancelSpawn
	pod, netns, id := s.pod, s.netns, s.id
	s.mu.Unlock()
	// A stop that comes meanwhile cancels the spawn and waits for this: by
	// then the holder is ready, or killed and reaped.
	defer close(spawned)

	h, err := spawnHolder(spawnCtx, s.cfg.Reaper, s.cfg.Self, pod, netns)
	var cg string
	if err == nil && pod.CgroupParent != "" {
		cg, err = joinPodCgroup(pod.CgroupParent, id, h.pid)
		if err != nil {
			kctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
			err = errors.Join(err, h.kill(kctx))
			cancel()
		}
	}
	s.mu.Lock()
	if err != nil {
		if s.phase == phaseStarting {
			s.phase = phaseCreated // may be started again
		} else {
			// Stopped or shut down while the holder was starting: its
			// spawn was cancelled and the holder killed.
			err = fmt.Errorf("sandbox became %s while starting: %w", s.phase, errdefs.ErrAborted)
		}
		s.mu.Unlock()
		return nil, wire(fmt.Errorf("start sandbox %q: %w", id, err))
	}
	if s.phase != phaseStarting {
		// Stopped or shut down while the holder was starting. The kill
		// waits for the holder's exit: not under the lock. The stop that
		// came waits for it through spawned.
		st := s.phase
		s.mu.Unlock()
		kctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		_ = h.kill(kctx)
		removeCgroup(cg)
		return nil, wire(fmt.Errorf("sandbox %q became %s while starting: %w", id, st, errdefs.ErrAborted))
	}
	s.h, s.cgroup, s.phase = h, cg, phaseReady
	created := s.createdAt
	go s.monitor(h)
	s.mu.Unlock()
	log.G(ctx).WithField("sandbox_id", id).WithField("pid", h.pid).Info("sandbox ready")
	return &StartSandboxResponse{Pid: uint32(h.pid), CreatedAt: timestamppb.New(created)}, nil
}

// monitor moves the sandbox to stopped when its holder exits.
func (s *Service) monitor(h *holder) {
	<-h.exited
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(h.exit)
	log.L.WithField("sandbox_id", s.id).WithField("pid", h.pid).WithField("exit_status", h.exit.Status).Info("sandbox holder exited")
}

// stopLocked enters phaseStopped once, recording exit.
func (s *Service) stopLocked(exit process.Exit) {
	if s.phase == phaseStopped || s.phase == phaseShutdown {
		return
	}
	s.phase = phaseStopped
	s.exit = exit
	select {
	case <-s.stopped:
	default:
		close(s.stopped)
	}
}

// Platform says linux and the shim's architecture.
func (s *Service) Platform(ctx context.Context, r *PlatformRequest) (*PlatformResponse, error) {
	return &PlatformResponse{Platform: &apitypes.Platform{OS: "linux", Architecture: goruntime.GOARCH}}, nil
}

// StopSandbox kills the holder and waits for its exit. Stopping a stopped
// sandbox succeeds.
func (s *Service) StopSandbox(ctx context.Context, r *StopSandboxRequest) (*StopSandboxResponse, error) {
	timeout := stopTimeout
	if t := r.GetTimeoutSecs(); t > 0 {
		timeout = time.Duration(t) * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.stop(ctx, r.GetSandboxId()); err != nil {
		return nil, wire(err)
	}
	return &StopSandboxResponse{}, nil
}

func (s *Service) stop(ctx context.Context, id string) error {
	s.mu.Lock()
	if err := s.checkLocked(id); err != nil {
		s.mu.Unlock()
		return err
	}
	h := s.h
	spawning := s.spawned // nil before any StartSandbox
	if s.phase == phaseStarting {
		s.cancelSpawn()
	}
	if s.phase == phaseCreated || s.phase == phaseStarting {
		s.stopLocked(process.Exit{Time: time.Now()})
	}
	stopped := s.stopped
	s.mu.Unlock()
	if spawning != nil {
		// StartSandbox kills the holder it spawned once its spawn is
		// cancelled, or once it sees the sandbox stopped.
		select {
		case <-spawning:
		case <-ctx.Done():
			return fmt.Errorf("sandbox %q: holder still starting: %w", id, ctx.Err())
		}
	}
	if h != nil {
		if err := h.kill(ctx); err != nil {
			return err
		}
	}
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sandbox %q not stopped: %w", id, ctx.Err())
	}
}

// WaitSandbox blocks until the sandbox stops (or ctx ends).
func (s *Service) WaitSandbox(ctx context.Context, r *WaitSandboxRequest) (*WaitSandboxResponse, error) {
	s.mu.Lock()
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		s.mu.Unlock()
		return nil, wire(err)
	}
	stopped := s.stopped
	s.mu.Unlock()
	select {
	case <-stopped:
	case <-ctx.Done():
		return nil, wire(ctx.Err())
	}
	s.mu.Lock()
	e := s.exit
	s.mu.Unlock()
	return &WaitSandboxResponse{ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Time)}, nil
}

// statusInfo is the JSON of SandboxStatus' info["info"].
type statusInfo struct {
	Pid       int    `json:"pid"`
	NetnsPath string `json:"netns_path"`
	Hostname  string `json:"hostname"`
	Phase     string `json:"phase"`
	Cgroup    string `json:"cgroup,omitempty"`
}

// SandboxStatus reports the holder's pid and whether the pod is ready.
func (s *Service) SandboxStatus(ctx context.Context, r *SandboxStatusRequest) (*SandboxStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		return nil, wire(err)
	}
	resp := &SandboxStatusResponse{
		SandboxId: s.id,
		State:     StateNotReady,
		CreatedAt: timestamppb.New(s.createdAt),
	}
	info := statusInfo{NetnsPath: s.netns, Hostname: s.pod.Hostname, Phase: s.phase.String(), Cgroup: s.cgroup}
	if s.h != nil {
		resp.Pid = uint32(s.h.pid)
		info.Pid = s.h.pid
	}
	if s.phase == phaseReady {
		resp.State = StateReady
	}
	select {
	case <-s.stopped:
		resp.ExitedAt = timestamppb.New(s.exit.Time)
	default:
	}
	b, err := json.Marshal(info)
	if err != nil {
		return nil, wire(err)
	}
	resp.Info = map[string]string{"info": string(b)}
	return resp, nil
}

// PingSandbox answers when the sandbox exists.
func (s *Service) PingSandbox(ctx context.Context, r *PingRequest) (*PingResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		return nil, wire(err)
	}
	return &PingResponse{}, nil
}

// ShutdownSandbox stops the holder, releases the pod's mounts and cgroup,
// and lets the shim exit once no member container remains.
func (s *Service) ShutdownSandbox(ctx context.Context, r *ShutdownSandboxRequest) (*ShutdownSandboxResponse, error) {
	s.mu.Lock()
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		s.mu.Unlock()
		return nil, wire(err)
	}
	s.mu.Unlock()
	if err := s.release(ctx); err != nil {
		return nil, wire(err)
	}
	if s.cfg.Members() == 0 && s.cfg.Shutdown != nil {
		s.cfg.Shutdown()
	}
	return &ShutdownSandboxResponse{}, nil
}

// release stops the holder and frees the pod's resources; idempotent.
func (s *Service) release(ctx context.Context) error {
	s.mu.Lock()
	if s.phase == phaseNone || s.phase == phaseShutdown {
		s.mu.Unlock()
		return nil
	}
	id := s.id
	s.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	if err := s.stop(sctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.phase == phaseShutdown {
		return nil
	}
	err := Cleanup(s.bundle)
	removeCgroup(s.cgroup)
	s.phase = phaseShutdown
	return err
}

// Close releases the sandbox when the shim exits without ShutdownSandbox.
func (s *Service) Close() error {
	return s.release(context.Background())
}

// SandboxMetrics returns the stats of the pod's cgroup (the cgroup parent),
// or of the holder's cgroup when the pod has no parent.
func (s *Service) SandboxMetrics(ctx context.Context, r *SandboxMetricsRequest) (*SandboxMetricsResponse, error) {
	s.mu.Lock()
	if err := s.checkLocked(r.GetSandboxId()); err != nil {
		s.mu.Unlock()
		return nil, wire(err)
	}
	parent, h, cg := s.pod.CgroupParent, s.h, s.stats
	s.mu.Unlock()
	pid := 0
	if h != nil && h.alive() {
		pid = h.pid
	}
	if cg != nil && !cg.Exists() {
		// Removed (and maybe made again): resolved again, which tells a
		// cgroup that is gone.
		cg = nil
	}
	if cg == nil || parent == "" && pid == 0 {
		var err error
		if cg, err = podCgroup(parent, pid); err != nil {
			return nil, wire(err)
		}
		s.mu.Lock()
		s.stats = cg
		s.mu.Unlock()
	}
	stats, err := cg.Read()
	if err != nil {
		return nil, wire(fmt.Errorf("pod cgroup %q: %w", parent, err))
	}
	data, err := cgroup.MarshalAny(stats)
	if err != nil {
		return nil, wire(err)
	}
	return &SandboxMetricsResponse{Metrics: &apitypes.Metric{
		Timestamp: timestamppb.Now(), ID: r.GetSandboxId(), Data: data,
	}}, nil
}

// UpdateSandbox is not supported: CRI does not call it for this mode.
func (s *Service) UpdateSandbox(ctx context.Context, r *UpdateSandboxRequest) (*UpdateSandboxResponse, error) {
	return nil, wire(fmt.Errorf("update of sandbox %q: %w", r.GetSandboxId(), errdefs.ErrNotImplemented))
}

// PrepareMember gives a member container of this sandbox, about to be
// created from bundle, the pod's files and /dev/shm (see memberMounts). A
// container of another sandbox, or of none, is left alone.
func (s *Service) PrepareMember(ctx context.Context, id, bundle string) error {
	s.mu.Lock()
	none := s.phase == phaseNone
	s.mu.Unlock()
	if none {
		return nil // a shim without a sandbox: nothing to read
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil // the task's own validation reports it
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(data, &spec) != nil {
		return nil
	}
	s.mu.Lock()
	member := s.phase != phaseNone && spec.Annotations[criSandboxID] == s.id && id != s.id
	ready := s.phase == phaseReady
	podDir, h := s.bundle, s.h
	s.mu.Unlock()
	if !member {
		return nil
	}
	if !ready {
		return fmt.Errorf("container %q of sandbox %q: sandbox not ready: %w", id, spec.Annotations[criSandboxID], errdefs.ErrFailedPrecondition)
	}
	if err := memberMounts(bundle, podDir, fmt.Sprintf("/proc/%d/ns/ipc", h.pid)); err != nil {
		return fmt.Errorf("pod mounts of container %q: %w", id, err)
	}
	return nil
}
