//go:build linux

package oom

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Event reports one OOM kill in a watched cgroup.
type Event struct {
	// ID is the id given to Add or AddPath.
	ID string
	// Time is when the kill was seen.
	Time time.Time
}

// ErrClosed is returned by Add and AddPath once Close has been called or the
// loop has ended.
var ErrClosed = fmt.Errorf("oom watcher is closed: %w", errdefs.ErrFailedPrecondition)

// epoll tokens of the Watcher's own fds; v1 eventfds get tokens from firstToken on.
const (
	tokenWake uint64 = iota
	tokenInotify
	tokenRetry
	firstToken
)

// Watcher watches the OOM kill counters of many cgroups with one goroutine
// and one epoll set. See the package documentation.
type Watcher struct {
	notify func(Event)
	hooks  hooks
	ctx    context.Context

	// Created by New; used by the loop, and by Add/Remove under mu while
	// !stopped; closed by the loop when it ends.
	epfd    int // epoll set
	wakefd  int // eventfd written by Close to stop the loop
	inofd   int // one inotify instance for every v2 cgroup, made at the first; guarded by mu
	timerfd int // times the loop's re-reads of pending v1 counters

	// spinFor is how long a signal makes the loop spin (pendingSpinFor, or
	// hooks.spinFor); see maySpin for where it does not.
	spinFor time.Duration

	// kmsg witnesses the kills of a cgroup removed before its counter was
	// read; nil where the kernel log cannot be read. Closed by the loop
	// when it ends.
	kmsg *kmsgLog

	done chan struct{} // closed when the loop has ended and closed every fd
	err  error         // the loop's error; written before done is closed

	mu        sync.Mutex
	closing   bool               // Close was called; guarded by mu
	stopped   bool               // the loop is ending, the fds above are closed or about to be; guarded by mu
	entries   map[string]*entry  // by id; guarded by mu
	byToken   map[uint64]*entry  // v1 eventfd epoll token -> entry; guarded by mu
	byWD      map[int32][]*entry // v2 inotify watch -> entries on that memory.events file; guarded by mu
	nextToken uint64             // guarded by mu
}

// entry is one watched cgroup.
type entry struct {
	id     string
	cg     CgroupPath
	ino    uint64 // inode of cg.Dir when armed: another inode at that path is another cgroup
	legacy bool   // v1 without an oom_kill counter (kernel < 4.13): each eventfd signal is one kill
	pid    int    // the container's init, given to Add; 0 from AddPath
	mark   uint64 // the kernel log's last record before the baseline (see Check)

	efd   int    // v1 eventfd registered in cgroup.event_control and in epoll, -1 once closed; guarded by Watcher.mu
	token uint64 // v1 epoll token of efd; guarded by Watcher.mu
	wd    int32  // v2 inotify watch of memory.events, -1 once dropped; guarded by Watcher.mu

	removed atomic.Bool // Remove or the end of the loop took the entry out; set under Watcher.mu

	pollMu   sync.Mutex   // serialises the readings of the counter and the notify calls they cause
	state    counterState // guarded by pollMu
	reported uint64       // kills reported so far; guarded by pollMu
	readErr  time.Time    // when a failed reading was last logged; guarded by pollMu
	spunAt   time.Time    // when a signal of this cgroup last started a spin; the loop's own
}

// hooks let tests observe the loop. They are nil outside tests.
type hooks struct {
	// beforePoll runs in the loop before it reads the counter of a cgroup that woke it.
	beforePoll func(id string)
	// afterPoll runs in the loop after it read the counter of a cgroup.
	afterPoll func(id string, kills uint64, gone bool)
	// retryDelay, when set, replaces the delay the loop arms its timerfd with.
	retryDelay func(time.Duration) time.Duration
	// signalled runs in the loop when a reading consumed a v1 signal and
	// left the cgroup pending.
	signalled func(id string)
	// spinFor, when set, replaces pendingSpinFor whatever the processors;
	// a negative value means no spin.
	spinFor time.Duration
}

// New starts a Watcher whose loop calls notify once per OOM kill seen in a
// watched cgroup. notify must not be nil. Close stops it.
func New(notify func(Event)) (*Watcher, error) {
	return newWatcher(notify, hooks{})
}

func newWatcher(notify func(Event), h hooks) (_ *Watcher, retErr error) {
	if notify == nil {
		return nil, fmt.Errorf("nil notify func: %w", errdefs.ErrInvalidArgument)
	}
	w := &Watcher{
		notify:    notify,
		hooks:     h,
		ctx:       context.Background(),
		epfd:      -1,
		wakefd:    -1,
		inofd:     -1,
		timerfd:   -1,
		spinFor:   pendingSpinFor,
		done:      make(chan struct{}),
		entries:   make(map[string]*entry),
		byToken:   make(map[uint64]*entry),
		byWD:      make(map[int32][]*entry),
		nextToken: firstToken,
	}
	defer func() {
		if retErr != nil {
			for _, fd := range []int{w.epfd, w.wakefd, w.inofd, w.timerfd} {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
	}()
	if h.spinFor != 0 {
		w.spinFor = max(h.spinFor, 0)
	}
	var err error
	if w.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if w.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// A timerfd, not epoll_wait's timeout: the first re-read comes well
	// under a millisecond after the signal (epoll_wait counts whole
	// milliseconds).
	if w.timerfd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	if err := epollAdd(w.epfd, w.wakefd, tokenWake); err != nil {
		return nil, err
	}
	if err := epollAdd(w.epfd, w.timerfd, tokenRetry); err != nil {
		return nil, err
	}
	if k, err := openKmsg(); err != nil {
		log.G(w.ctx).WithError(err).Debug("oom kills of cgroups removed before they are read will not be seen")
	} else {
		w.kmsg = k
	}
	go w.run()
	return w, nil
}

// Add resolves the memory cgroup of pid (see ResolveCgroup) and watches it
// under id. Call it after the container's cgroup exists and before its
// process can allocate (after create, before start).
func (w *Watcher) Add(id string, pid int) error {
	if err := w.precheck(id); err != nil {
		return err
	}
	cg, err := ResolveCgroup(pid)
	if err != nil {
		return fmt.Errorf("watch %s: %w", id, err)
	}
	return w.add(id, cg, pid)
}

// AddPath watches the cgroup cg under id. The kill counter's value now is
// the baseline: only later kills are reported. Without a process to follow,
// the kills of a cgroup removed before its counter is read are not seen
// (see Check).
func (w *Watcher) AddPath(id string, cg CgroupPath) error {
	if err := w.precheck(id); err != nil {
		return err
	}
	return w.add(id, cg, 0)
}

func (w *Watcher) add(id string, cg CgroupPath, pid int) error {
	if err := cg.validate(); err != nil {
		return fmt.Errorf("watch %s: %w", id, err)
	}
	e := &entry{id: id, cg: cg, pid: pid, efd: -1, wd: -1}
	if pid > 0 && w.kmsg != nil {
		e.mark = w.kmsg.mark()
	}
	var err error
	if cg.Version == 1 {
		err = w.addV1(e)
	} else {
		err = w.addV2(e)
	}
	if err != nil {
		return fmt.Errorf("watch %s (%s): %w", id, cg, err)
	}
	return nil
}

// precheck fails early on a closed watcher, an empty or a known id.
func (w *Watcher) precheck(id string) error {
	if id == "" {
		return fmt.Errorf("empty id: %w", errdefs.ErrInvalidArgument)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.canAddLocked(id)
}

func (w *Watcher) canAddLocked(id string) error {
	if w.closing || w.stopped {
		return ErrClosed
	}
	if _, ok := w.entries[id]; ok {
		return fmt.Errorf("oom watch %s: %w", id, errdefs.ErrAlreadyExists)
	}
	return nil
}

// addV1 registers an eventfd for the OOM notifications of a v1 memory cgroup
// (cgroup.event_control) and adds it to the epoll set.
func (w *Watcher) addV1(e *entry) (retErr error) {
	if err := e.baseline(); err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer func() {
		if retErr != nil {
			// Closing the eventfd also drops the kernel's registration.
			unix.Close(efd)
		}
	}()
	if err := registerOOMEventfd(e.cg.Dir, efd); err != nil {
		return err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.canAddLocked(e.id); err != nil {
		return err
	}
	token := w.nextToken
	if err := epollAdd(w.epfd, efd, token); err != nil {
		return err
	}
	w.nextToken++
	e.efd, e.token = efd, token
	w.entries[e.id] = e
	w.byToken[token] = e
	return nil
}

// registerOOMEventfd asks the kernel to signal efd on every OOM of the v1
// memory cgroup dir, and once more when the cgroup is removed.
func registerOOMEventfd(dir string, efd int) error {
	cfd, err := unix.Open(filepath.Join(dir, oomControlFile), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return classify("open "+oomControlFile, err)
	}
	// The kernel keeps its own references: both fds can go after the write.
	defer unix.Close(cfd)
	ecfd, err := unix.Open(filepath.Join(dir, eventControlFile), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return classify("open "+eventControlFile, err)
	}
	defer unix.Close(ecfd)
	if _, err := unix.Write(ecfd, []byte(strconv.Itoa(efd)+" "+strconv.Itoa(cfd))); err != nil {
		return classify("register oom eventfd", err)
	}
	return nil
}

// addV2 adds an inotify watch on memory.events of a v2 cgroup.
func (w *Watcher) addV2(e *entry) error {
	if err := e.baseline(); err != nil {
		return err
	}
	if e.legacy {
		return fmt.Errorf("%s has no %s counter: %w", eventsFile, counterKey, errdefs.ErrNotImplemented)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.canAddLocked(e.id); err != nil {
		return err
	}
	if err := w.inotifyLocked(); err != nil {
		return err
	}
	// The same file watched twice gets the same watch descriptor: byWD
	// keeps every entry on it and the watch lives until the last one goes.
	wd, err := unix.InotifyAddWatch(w.inofd, filepath.Join(e.cg.Dir, eventsFile), unix.IN_MODIFY)
	if err != nil {
		return classify("inotify_add_watch "+eventsFile, err)
	}
	e.wd = int32(wd)
	w.entries[e.id] = e
	w.byWD[e.wd] = append(w.byWD[e.wd], e)
	return nil
}

// inotifyLocked makes the inotify instance at the first v2 watch. A host
// with cgroup v1 never needs one, and a shim must not fail to start because
// the node ran out of instances (fs.inotify.max_user_instances, 128 per
// user by default): only the v2 watches fail then.
func (w *Watcher) inotifyLocked() error {
	if w.inofd >= 0 {
		return nil
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
		return fmt.Errorf("inotify_init1: %w: %w", errdefs.ErrResourceExhausted, err)
	}
	if err != nil {
		return classify("inotify_init1", err)
	}
	if err := epollAdd(w.epfd, fd, tokenInotify); err != nil {
		unix.Close(fd)
		return err
	}
	w.inofd = fd
	return nil
}

// baseline records the identity of the cgroup and its kill counter now.
// It runs before the watch is armed: a kill between the two is reported by
// the next reading.
func (e *entry) baseline() error {
	var st unix.Stat_t
	if err := unix.Stat(e.cg.Dir, &st); err != nil {
		return classify("stat cgroup", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is not a directory: %w", e.cg.Dir, errdefs.ErrInvalidArgument)
	}
	e.ino = st.Ino
	file := e.counterFile()
	data, err := os.ReadFile(filepath.Join(e.cg.Dir, file))
	if err != nil {
		if isGone(err) {
			return fmt.Errorf("no %s: memory controller not enabled: %w: %w", file, errdefs.ErrFailedPrecondition, err)
		}
		return classify("read "+file, err)
	}
	v, ok, err := parseCounter(data, counterKey)
	if err != nil {
		return fmt.Errorf("parse %s: %w", file, err)
	}
	e.legacy = !ok
	e.state.last = v + e.belowKills(&st)
	return nil
}

// belowKills adds up the v1 kill counters of the cgroups below e's, when
// there are any (a directory's link count is 2 plus its subdirectories). A
// v1 memory cgroup counts a kill only in the victim's own cgroup, not in
// its parents, while a limit of the container's cgroup kills in the
// cgroups below it too: a container whose init is systemd, or docker in
// docker. v2 counts a kill in every cgroup above the victim already.
func (e *entry) belowKills(st *unix.Stat_t) uint64 {
	if e.cg.Version != 1 || st.Nlink <= 2 {
		return 0
	}
	var sum uint64
	_ = filepath.WalkDir(e.cg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || path == e.cg.Dir {
			return nil // a cgroup removed meanwhile, or a file
		}
		if data, err := os.ReadFile(filepath.Join(path, oomControlFile)); err == nil {
			if v, ok, err := parseCounter(data, counterKey); err == nil && ok {
				sum += v
			}
		}
		return nil
	})
	return sum
}

func (e *entry) counterFile() string {
	if e.cg.Version == 1 {
		return oomControlFile
	}
	return eventsFile
}

// read reads the kill counter of e's cgroup by path.
func (e *entry) read() (reading, error) {
	var st unix.Stat_t
	if err := unix.Stat(e.cg.Dir, &st); err != nil {
		if isGone(err) {
			return reading{gone: true}, nil
		}
		return reading{}, err
	}
	if st.Ino != e.ino {
		return reading{gone: true}, nil
	}
	data, err := os.ReadFile(filepath.Join(e.cg.Dir, e.counterFile()))
	if err != nil {
		if isGone(err) {
			return reading{gone: true}, nil
		}
		return reading{}, err
	}
	v, ok, err := parseCounter(data, counterKey)
	if err != nil {
		return reading{}, err
	}
	if ok {
		v += e.belowKills(&st)
	}
	return reading{counter: v, ok: ok}, nil
}

// Check reads the kill counter of id's cgroup now and calls notify, in the
// caller's goroutine and before it returns, for every kill not reported yet.
// It waits for a report of id that the loop has in progress. Call it when
// a process of the container (its init or an exec) has exited and before
// publishing that exit: the kernel counts a kill before it sends SIGKILL,
// so the OOM event precedes the exit it caused. Check of an unknown id does
// nothing.
func (w *Watcher) Check(id string) {
	w.mu.Lock()
	e := w.entries[id]
	w.mu.Unlock()
	if e == nil {
		return
	}
	w.poll(e, false)
}

// Remove stops watching id and closes the fds of its watch. The error wraps
// errdefs.ErrNotFound when id is not watched (and after Close).
func (w *Watcher) Remove(id string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.entries[id]
	if !ok {
		return fmt.Errorf("oom watch %s: %w", id, errdefs.ErrNotFound)
	}
	delete(w.entries, id)
	e.removed.Store(true)
	if err := w.disarmLocked(e); err != nil {
		return fmt.Errorf("remove oom watch %s: %w", id, err)
	}
	return nil
}

// disarmLocked takes e's eventfd out of epoll and closes it (v1), or drops
// e from its inotify watch, removing the watch with its last entry (v2).
func (w *Watcher) disarmLocked(e *entry) error {
	if w.stopped {
		return nil
	}
	var errs []error
	if e.efd >= 0 {
		delete(w.byToken, e.token)
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, e.efd, nil); err != nil {
			errs = append(errs, fmt.Errorf("epoll_ctl del: %w", err))
		}
		if err := unix.Close(e.efd); err != nil {
			errs = append(errs, fmt.Errorf("close eventfd: %w", err))
		}
		e.efd = -1
	}
	if e.wd >= 0 {
		rest := w.byWD[e.wd][:0]
		for _, o := range w.byWD[e.wd] {
			if o != e {
				rest = append(rest, o)
			}
		}
		if len(rest) > 0 {
			w.byWD[e.wd] = rest
		} else {
			delete(w.byWD, e.wd)
			// EINVAL: the kernel dropped the watch already (file deleted)
			// and its IN_IGNORED is still queued.
			if _, err := unix.InotifyRmWatch(w.inofd, uint32(e.wd)); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("inotify_rm_watch: %w", err))
			}
		}
		e.wd = -1
	}
	return errors.Join(errs...)
}

// Close stops the loop, closes every fd the Watcher owns and returns the
// loop's error. It waits for a notify call in progress in the loop. Later
// calls return nil.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closing = true
	if !w.stopped {
		if err := writeEventfd(w.wakefd); err != nil {
			// Not expected (one write per Watcher, far from the eventfd's
			// limit). Without the wake-up the loop would not end: do not
			// wait for it, and let a later Close try again.
			w.closing = false
			w.mu.Unlock()
			return fmt.Errorf("wake oom loop: %w", err)
		}
	}
	w.mu.Unlock()
	<-w.done
	return w.err
}

// run is the loop goroutine. It owns epfd, wakefd, inofd and timerfd, and closes them
// with every eventfd left when it ends.
func (w *Watcher) run() {
	err := w.loop()
	if err != nil {
		log.G(w.ctx).WithError(err).Error("oom watcher loop ended")
	}

	w.mu.Lock()
	w.stopped = true
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for id, e := range w.entries {
		e.removed.Store(true)
		if e.efd >= 0 {
			if err := unix.Close(e.efd); err != nil {
				errs = append(errs, fmt.Errorf("close eventfd of %s: %w", id, err))
			}
			e.efd = -1
		}
		e.wd = -1
	}
	clear(w.entries)
	clear(w.byToken)
	clear(w.byWD)
	fds := []int{w.timerfd, w.wakefd, w.epfd}
	if w.inofd >= 0 {
		fds = append(fds, w.inofd)
		w.inofd = -1
	}
	w.mu.Unlock()

	for _, fd := range fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("close fd %d: %w", fd, err))
		}
	}
	if w.kmsg != nil {
		if err := w.kmsg.close(); err != nil {
			errs = append(errs, fmt.Errorf("close /dev/kmsg: %w", err))
		}
	}
	w.err = errors.Join(errs...)
	close(w.done)
}

// loop waits on the epoll set until Close wakes it. A cgroup whose v1 OOM
// signal came before its kill counter moved is re-read without sleeping
// for spinFor, then every pendingFirstRetry for pendingFastFor, then
// backing off, for pendingWindow at most.
func (w *Watcher) loop() error {
	var (
		events = make([]unix.EpollEvent, 128)
		// Events of watched files carry no name: 16 bytes each, and
		// readInotify drains until EAGAIN. The buffer lives on the loop's
		// stack; a large one would make that stack, and the runtime's
		// starting size of every goroutine's stack (the average of the
		// stacks it scans), grow.
		inoBuf     = make([]byte, 4096)
		pending    = make(map[*entry]struct{})
		spinning   bool          // re-read the pending cgroups at once, until spinUntil
		spinUntil  time.Time     //
		retryEvery time.Duration // 0: the timerfd does not time the re-reads yet
		fastUntil  time.Time     // timed re-reads back off from then on
	)
	for {
		timeout := -1
		if spinning {
			// Let the task being killed have this processor if it
			// needs it, and look at the epoll set without waiting.
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			timeout = 0
		}
		n, err := unix.EpollWait(w.epfd, events, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		var woke []*entry
		retry := false
		for _, ev := range events[:n] {
			switch token := getToken(ev); token {
			case tokenRetry:
				if _, err := readEventfd(w.timerfd); err != nil && !errors.Is(err, unix.EAGAIN) {
					return fmt.Errorf("read timerfd: %w", err)
				}
				retry = true
			case tokenWake:
				if w.drainWake() {
					return nil
				}
			case tokenInotify:
				es, err := w.readInotify(inoBuf)
				if err != nil {
					return err
				}
				woke = append(woke, es...)
			default:
				w.mu.Lock()
				e := w.byToken[token]
				w.mu.Unlock()
				if e != nil {
					woke = append(woke, e)
				}
			}
		}
		turn := time.Now()
		wasPending := len(pending) > 0
		signalled := false // a v1 signal before its kill
		spin := false      // ... in a cgroup that may spin
		read := func(e *entry) {
			if w.pollFromLoop(e, pending) {
				signalled = true
				spin = w.maySpin(e, turn) || spin
			}
		}
		for _, e := range woke {
			read(e)
		}
		if len(pending) > 0 && !signalled && (retry || spinning) {
			for e := range pending {
				read(e)
			}
		}
		now := time.Now()
		if spin {
			spinUntil = now.Add(w.spinFor)
		}
		rearm := false
		switch {
		case spin || !wasPending:
			retryEvery = 0 // the timed re-reads start from the first
		case signalled && retryEvery > pendingFirstRetry:
			// Another OOM in a pending cgroup that may not spin: the
			// timed re-reads start again from the first, and back off
			// at once (about ten of them for each such signal).
			retryEvery, rearm = pendingFirstRetry, true
		}
		// One reading of the clock decides both whether the next turn
		// waits and whether the timer is armed for it.
		spinning = len(pending) > 0 && now.Before(spinUntil)
		switch {
		case len(pending) == 0:
			retryEvery = 0
		case spinning:
			// The next turn re-reads at once.
		case retryEvery == 0:
			// No spin, or it is over: the timerfd times the re-reads.
			retryEvery = pendingFirstRetry
			fastUntil = now.Add(pendingFastFor)
			if err := w.armRetry(retryEvery); err != nil {
				return err
			}
		case retry || rearm:
			if !rearm && !now.Before(fastUntil) {
				retryEvery = min(2*retryEvery, pendingMaxRetry)
			}
			if err := w.armRetry(retryEvery); err != nil {
				return err
			}
		}
	}
}

// maySpin reports whether a signal of e, found pending at turn, starts a
// spin: at most one per cgroup every pendingWindow, so that a cgroup whose
// kernel keeps signalling without killing (every task in it exempt from
// the OOM killer, or oom_kill_disable set and memory uncharged now and
// then) costs at most one spin a second; and none with a single processor,
// which the task being killed needs, or a single P, which the spin would
// hold from the process's other goroutines (the processors are read at
// the signal: the shim sets its own after it made the watcher). Unless a
// test's hook set the spin. Only the loop calls it.
func (w *Watcher) maySpin(e *entry, turn time.Time) bool {
	if w.spinFor <= 0 || !e.spunAt.IsZero() && turn.Sub(e.spunAt) < pendingWindow {
		return false
	}
	if w.hooks.spinFor == 0 && (runtime.NumCPU() < 2 || runtime.GOMAXPROCS(0) < 2) {
		return false
	}
	e.spunAt = turn
	return true
}

// armRetry makes the timerfd fire once, after d.
func (w *Watcher) armRetry(d time.Duration) error {
	if w.hooks.retryDelay != nil {
		d = w.hooks.retryDelay(d)
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(d.Nanoseconds())}
	if err := unix.TimerfdSettime(w.timerfd, 0, &spec, nil); err != nil {
		return fmt.Errorf("timerfd_settime: %w", err)
	}
	return nil
}

// pollFromLoop reads e's counter for the loop and keeps pending up to date.
// It reports whether a v1 signal consumed by this reading left e pending:
// the kernel signalled an OOM and has not counted its kill yet.
func (w *Watcher) pollFromLoop(e *entry, pending map[*entry]struct{}) (signalled bool) {
	if w.hooks.beforePoll != nil {
		w.hooks.beforePoll(e.id)
	}
	kills, isPending, gone, signals := w.poll(e, true)
	if isPending {
		pending[e] = struct{}{}
	} else {
		delete(pending, e)
	}
	if gone && e.cg.Version == 1 {
		// The eventfd fired for the removal: the kernel dropped the
		// registration, nothing else will come on it.
		w.mu.Lock()
		if !e.removed.Load() {
			if err := w.disarmLocked(e); err != nil {
				log.G(w.ctx).WithError(err).WithField("id", e.id).Warn("disarm removed cgroup")
			}
		}
		w.mu.Unlock()
	}
	if w.hooks.afterPoll != nil {
		w.hooks.afterPoll(e.id, kills, gone)
	}
	if isPending && signals > 0 && w.hooks.signalled != nil {
		w.hooks.signalled(e.id)
	}
	return isPending && signals > 0
}

// poll reads e's kill counter and calls notify for each kill not reported
// yet. fromLoop consumes the v1 eventfd's signals; Check consumes them only
// for legacy v1, where they are the count. It returns the signals consumed.
func (w *Watcher) poll(e *entry, fromLoop bool) (kills uint64, isPending, gone bool, signals uint64) {
	if e.cg.Version == 1 && (fromLoop || e.legacy) {
		signals = w.drainEventfd(e)
	}
	e.pollMu.Lock()
	defer e.pollMu.Unlock()
	if e.removed.Load() {
		return 0, false, false, signals
	}
	r, err := e.read()
	now := time.Now()
	if err != nil && now.Sub(e.readErr) >= time.Second { // a pending cgroup is read often
		e.readErr = now
		log.G(w.ctx).WithError(err).WithField("id", e.id).WithField("path", e.cg.Dir).Warn("read oom kill counter")
	}
	kills, e.state = advance(e.state, r, signals, e.legacy, now)
	if r.gone && !fromLoop && e.reported == 0 && w.killedInit(e) {
		log.G(w.ctx).WithField("id", e.id).WithField("pid", e.pid).Info("oom kill of a removed cgroup's init found in the kernel log")
		kills = 1
	}
	e.reported += kills
	for range kills {
		w.notify(Event{ID: e.id, Time: now})
	}
	return kills, e.state.pending(), r.gone, signals
}

// killedInit reports whether the kernel log shows the OOM killer killing
// e's init since e was added. Check asks it only when e's cgroup is gone
// and nothing was reported for it: the kernel counts a kill before it sends
// SIGKILL, but a systemd scope can be removed, with its counter, before the
// kernel notifies memory.events (at most once per 10 ms) or before the
// init's exit reaches Check. A victim other than the init, in a cgroup
// removed unread, is not seen.
func (w *Watcher) killedInit(e *entry) bool {
	return e.pid > 0 && w.kmsg != nil && w.kmsg.killedSince(e.pid, e.mark)
}

// drainEventfd returns and resets the count of e's eventfd, 0 when closed.
func (w *Watcher) drainEventfd(e *entry) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.efd < 0 || w.stopped {
		return 0
	}
	v, err := readEventfd(e.efd)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		log.G(w.ctx).WithError(err).WithField("id", e.id).Warn("read oom eventfd")
	}
	return v
}

// drainWake resets the wake-up eventfd and reports whether Close was called.
func (w *Watcher) drainWake() bool {
	if _, err := readEventfd(w.wakefd); err != nil && !errors.Is(err, unix.EAGAIN) {
		log.G(w.ctx).WithError(err).Warn("read oom wake eventfd")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closing
}

// readInotify drains the inotify fd and returns the entries whose
// memory.events changed. A watch the kernel dropped (IN_IGNORED) is
// forgotten after a last reading; a queue overflow re-reads every v2 cgroup.
func (w *Watcher) readInotify(buf []byte) ([]*entry, error) {
	var (
		wds      []int32
		ignored  []int32
		overflow bool
	)
	w.mu.Lock()
	fd := w.inofd // set before its first event could come
	w.mu.Unlock()
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			return nil, fmt.Errorf("read inotify: %w", err)
		}
		// struct inotify_event: s32 wd, u32 mask, u32 cookie, u32 len, name[len].
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := binary.NativeEndian.Uint32(buf[off+12:])
			switch {
			case mask&unix.IN_Q_OVERFLOW != 0:
				overflow = true
			case mask&unix.IN_IGNORED != 0:
				ignored = append(ignored, wd)
			default:
				wds = append(wds, wd)
			}
			off += unix.SizeofInotifyEvent + int(nameLen)
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	seen := make(map[*entry]bool)
	var out []*entry
	add := func(es []*entry) {
		for _, e := range es {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	for _, wd := range wds {
		add(w.byWD[wd])
	}
	for _, wd := range ignored {
		es := w.byWD[wd]
		delete(w.byWD, wd)
		for _, e := range es {
			e.wd = -1
		}
		add(es)
	}
	if overflow {
		for _, e := range w.entries {
			if e.cg.Version == 2 {
				add([]*entry{e})
			}
		}
	}
	return out, nil
}

func epollAdd(epfd, fd int, token uint64) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	ev.Fd = int32(uint32(token))
	ev.Pad = int32(uint32(token >> 32))
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

func getToken(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

func readEventfd(fd int) (uint64, error) {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n != len(b) {
			return 0, fmt.Errorf("short eventfd read of %d bytes", n)
		}
		return binary.NativeEndian.Uint64(b[:]), nil
	}
}

func writeEventfd(fd int) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	for {
		_, err := unix.Write(fd, b[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err
	}
}
