package process

import "fmt"

// stepKind is one thing the sequencer asks its container to do, in order.
type stepKind int

const (
	// stepPublishStart publishes the start (or exec-started) event.
	stepPublishStart stepKind = iota + 1
	// stepKillExecs kills the execs still running: the init has exited.
	stepKillExecs
	// stepArmInitDeadline bounds how long the init's exit waits for the
	// exits of those execs (initExitBound), then calls expireInit.
	stepArmInitDeadline
	// stepCheckOOM is the OOM watcher's read of the container before an
	// exit is published.
	stepCheckOOM
	// stepSaveExit writes the init's exit into the bundle (exit.json).
	stepSaveExit
	// stepPublishExit marks the process stopped and publishes its exit.
	stepPublishExit
	// stepPublishResumed publishes the container's resumed event.
	stepPublishResumed
)

func (k stepKind) String() string {
	switch k {
	case stepPublishStart:
		return "publish-start"
	case stepKillExecs:
		return "kill-execs"
	case stepArmInitDeadline:
		return "arm-init-deadline"
	case stepCheckOOM:
		return "check-oom"
	case stepSaveExit:
		return "save-exit"
	case stepPublishExit:
		return "publish-exit"
	case stepPublishResumed:
		return "publish-resumed"
	}
	return fmt.Sprintf("step(%d)", int(k))
}

// step is one step for the process execID ("" for the init).
type step struct {
	kind   stepKind
	execID string
	exit   Exit // for stepSaveExit and stepPublishExit
}

// sequencer is the one place where the events of a container's processes are
// ordered. It runs no runtime, does no I/O and has no lock of its own: its
// container calls it with its lock held and carries out the steps it
// returns, in order. The rules:
//
//  1. Start before exit: an exit that arrives while its process is starting
//     (between the runtime call and the start event) is held, and released
//     after the start event.
//  2. Exec exits before the init's: while an exec is starting or running,
//     the init's exit is held; the live execs are killed, and the init's
//     exit is released when the last of them has exited, or when the
//     deadline armed with it expires (an exec that cannot be killed must not
//     hold the container's exit forever).
//  3. OOM before exit, exit.json before TaskExit: the init's exit is always
//     the steps check-oom, save-exit, publish-exit, in that order; an
//     exec's is check-oom, publish-exit (an exec can be the OOM killer's
//     victim too).
//  4. Resumed before exit: while the container is being resumed, every step
//     the rules above give is parked, and the parked steps follow the
//     resumed event (a process whose sleep ended while it was frozen exits
//     as soon as it is thawed: the init, or an exec).
type sequencer struct {
	starting map[string]bool // processes between their runtime start and the start event
	held     map[string]Exit // exits that arrived while their process was starting
	resuming bool            // the container is being resumed (rule 4)
	parked   []step          // steps given while resuming, in order
	live     int             // execs starting or started whose exit is not released
	initExit *Exit           // the init's exit, held for the live execs
	initGone bool            // the init's exit has arrived (held or released)
}

func newSequencer() *sequencer {
	return &sequencer{starting: make(map[string]bool), held: make(map[string]Exit)}
}

// initExited reports whether the init's exit has arrived, released or not.
func (s *sequencer) initExited() bool { return s.initGone }

// beginStart opens the start window of a process.
func (s *sequencer) beginStart(execID string) {
	s.starting[execID] = true
	if execID != "" {
		s.live++
	}
}

// endStart closes the start window: after a successful start, the start
// event, then an exit that came meanwhile (rule 1). An exec that failed to
// start no longer holds the init's exit.
func (s *sequencer) endStart(execID string, started bool) []step {
	return s.give(s.endStartSteps(execID, started))
}

func (s *sequencer) endStartSteps(execID string, started bool) []step {
	delete(s.starting, execID)
	var steps []step
	if started {
		steps = append(steps, step{kind: stepPublishStart, execID: execID})
		if execID != "" && s.initExit != nil {
			// It started after the init exited: it dies as the others did.
			steps = append(steps, step{kind: stepKillExecs})
		}
	}
	if e, ok := s.held[execID]; ok {
		delete(s.held, execID)
		return append(steps, s.exitedSteps(execID, e)...)
	}
	if !started && execID != "" {
		s.live--
		steps = append(steps, s.releaseInit()...)
	}
	return steps
}

// beginResume opens the resume window of the container (rule 4).
func (s *sequencer) beginResume() { s.resuming = true }

// endResume closes it: the resumed event after a successful resume, then
// the steps parked meanwhile.
func (s *sequencer) endResume(resumed bool) []step {
	s.resuming = false
	var steps []step
	if resumed {
		steps = append(steps, step{kind: stepPublishResumed})
	}
	steps = append(steps, s.parked...)
	s.parked = nil
	return steps
}

// give returns steps to do now, or parks them during a resume (rule 4).
func (s *sequencer) give(steps []step) []step {
	if s.resuming && len(steps) > 0 {
		s.parked = append(s.parked, steps...)
		return nil
	}
	return steps
}

// exited takes the exit of a process and returns what to do now.
func (s *sequencer) exited(execID string, e Exit) []step {
	return s.give(s.exitedSteps(execID, e))
}

func (s *sequencer) exitedSteps(execID string, e Exit) []step {
	if s.starting[execID] {
		s.held[execID] = e // rule 1
		if execID == "" {
			s.initGone = true
		}
		return nil
	}
	if execID == "" {
		s.initGone = true
		if s.live > 0 { // rule 2
			s.initExit = &e
			return []step{{kind: stepKillExecs}, {kind: stepArmInitDeadline}}
		}
		return initExitSteps(e)
	}
	s.live--
	return append([]step{
		{kind: stepCheckOOM, execID: execID},
		{kind: stepPublishExit, execID: execID, exit: e},
	}, s.releaseInit()...)
}

// expireInit releases the init's exit although execs have not exited.
func (s *sequencer) expireInit() []step {
	return s.give(s.expireInitSteps())
}

func (s *sequencer) expireInitSteps() []step {
	if s.initExit == nil {
		return nil
	}
	e := *s.initExit
	s.initExit = nil
	return initExitSteps(e)
}

func (s *sequencer) releaseInit() []step {
	if s.live > 0 || s.initExit == nil {
		return nil
	}
	return s.expireInitSteps()
}

// initExitSteps is rule 3.
func initExitSteps(e Exit) []step {
	return []step{
		{kind: stepCheckOOM},
		{kind: stepSaveExit, exit: e},
		{kind: stepPublishExit, exit: e},
	}
}
