package process

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Status is where a process stands in its life.
type Status int

// The states of init and exec processes. Stopped means the exit has been
// published; Deleted means the runtime state and resources are gone.
const (
	Created Status = iota + 1
	Running
	Pausing
	Paused
	Stopped
	Deleted
)

func (s Status) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Pausing:
		return "pausing"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// op is an operation asked of a process.
type op int

const (
	opStart op = iota + 1
	opKill
	opDelete
	opPause
	opResume
	opExec
	opCloseIO
	opUpdate
	opStats
	opCheckpoint
	opPids
)

func (o op) String() string {
	switch o {
	case opStart:
		return "start"
	case opKill:
		return "kill"
	case opDelete:
		return "delete"
	case opPause:
		return "pause"
	case opResume:
		return "resume"
	case opExec:
		return "exec into"
	case opCloseIO:
		return "close the stdin of"
	case opUpdate:
		return "update"
	case opStats:
		return "read the stats of"
	case opCheckpoint:
		return "checkpoint"
	case opPids:
		return "list the processes of"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// allowed is the whole state machine: which operation may begin in which
// state. Transitions happen in Container, after the runtime call succeeded.
//
// An exec may be added to a created container (runc execs into its
// namespaces, and containerd's API allows it). The processes of a stopped
// container are not listed (see Container.Pids).
var allowed = map[Status]map[op]bool{
	Created: {opStart: true, opKill: true, opDelete: true, opExec: true, opCloseIO: true, opUpdate: true, opStats: true, opPids: true},
	Running: {opKill: true, opPause: true, opExec: true, opCloseIO: true, opUpdate: true, opStats: true, opCheckpoint: true, opPids: true},
	Pausing: {opKill: true, opStats: true, opPids: true},
	Paused:  {opKill: true, opResume: true, opUpdate: true, opStats: true, opCheckpoint: true, opPids: true},
	Stopped: {opDelete: true, opStats: true},
	Deleted: {},
}

// check returns nil when o may begin in s, or a classified error.
func check(s Status, o op) error {
	if allowed[s][o] {
		return nil
	}
	if o == opKill && s == Stopped {
		// containerd and CRI treat "already finished" as not found.
		return fmt.Errorf("cannot kill a stopped process: %w", errdefs.ErrNotFound)
	}
	return fmt.Errorf("cannot %s a %s process: %w", o, s, errdefs.ErrFailedPrecondition)
}
