package stdio

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// idlePoller waits, for every output copy whose pipe is empty, until the
// pipe is readable again, so that an idle stream holds no goroutine. A
// goroutine parked in a read keeps its stack (2 to 4 KiB) and descriptor
// for as long as the stream is quiet, which for most containers' stdout and
// stderr is most of their life; in a shim that serves a pod's containers,
// those were two goroutines per container.
//
// It is one epoll instance, each pipe registered one-shot, whose own
// readiness the Go runtime's poller watches: it takes no thread of its own
// and one goroutine in all. (containerd/console's Epoller serves terminals
// only, and blocks a thread in epoll_wait.) The poller and its goroutine
// belong to the process: made on first use, never stopped; an idle one
// costs a descriptor and a parked goroutine. If its loop ends, it hands its
// copies back (end).
type idlePoller struct {
	raw syscall.RawConn

	mu     sync.Mutex
	next   int32                 // guarded by mu: the last token given
	parked map[int32]*outputCopy // guarded by mu: by token
	dead   bool                  // guarded by mu: run has ended; nothing parks any more
}

var (
	pollerOnce sync.Once
	poller     *idlePoller // nil when it could not be made: copies wait in their own goroutine
)

// idle returns the process's idle poller, started on first use, or nil.
func idle() *idlePoller {
	pollerOnce.Do(func() {
		p, err := newIdlePoller()
		if err != nil {
			log.L.WithError(err).Warn("no idle poller for output copies: each waits in a goroutine")
			return
		}
		poller = p
		go p.run()
	})
	return poller
}

func newIdlePoller() (*idlePoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	// Non-blocking: the runtime's poller registers it (an epoll instance
	// is readable while one of its registrations is ready).
	f := os.NewFile(uintptr(fd), "stdio-idle-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &idlePoller{raw: raw, parked: map[int32]*outputCopy{}}, nil
}

// token names a copy in the poller's registrations.
func (p *idlePoller) token() int32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return p.next
}

// arm waits for fd (o's pipe) to become readable, once: the first time it
// registers fd, later it rearms it. The caller holds o.mu.
func (p *idlePoller) arm(o *outputCopy, fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: o.token}
	p.mu.Lock()
	if p.dead {
		p.mu.Unlock()
		return errors.New("idle poller ended")
	}
	p.parked[o.token] = o
	p.mu.Unlock()
	op := unix.EPOLL_CTL_MOD
	if !o.registered {
		op = unix.EPOLL_CTL_ADD
	}
	var err error
	if cerr := p.raw.Control(func(epfd uintptr) { err = unix.EpollCtl(int(epfd), op, fd, &ev) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		p.mu.Lock()
		delete(p.parked, o.token)
		p.mu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	o.registered = true
	return nil
}

// forget drops fd (o's pipe) from the poller. The caller holds o.mu.
func (p *idlePoller) forget(o *outputCopy, fd int) {
	p.mu.Lock()
	delete(p.parked, o.token)
	p.mu.Unlock()
	if !o.registered {
		return
	}
	o.registered = false
	_ = p.raw.Control(func(epfd uintptr) { _ = unix.EpollCtl(int(epfd), unix.EPOLL_CTL_DEL, fd, nil) })
}

// run hands every pipe that became readable back to a goroutine of its copy.
func (p *idlePoller) run() {
	events := make([]unix.EpollEvent, 32)
	for {
		var (
			n    int
			werr error
		)
		err := p.raw.Read(func(epfd uintptr) bool {
			n, werr = unix.EpollWait(int(epfd), events, 0)
			if errors.Is(werr, unix.EINTR) {
				n, werr = 0, nil
			}
			return n > 0 || werr != nil
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			log.L.WithError(err).Error("idle poller of output copies ended; each copy waits in its goroutine")
			p.end()
			return
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			o := p.parked[ev.Fd]
			delete(p.parked, ev.Fd)
			p.mu.Unlock()
			if o != nil {
				o.resume()
			}
		}
	}
}

// end hands every parked copy back to a goroutine of its own, which waits
// in the runtime's poller from then on (arm refuses).
func (p *idlePoller) end() {
	p.mu.Lock()
	p.dead = true
	parked := p.parked
	p.parked = map[int32]*outputCopy{}
	p.mu.Unlock()
	for _, o := range parked {
		o.resume()
	}
}
