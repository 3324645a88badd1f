package process

import (
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/mount"

	"github.com/mineshim/mine/pkg/stdio"
)

// EventKind names a lifecycle event of a container or of one of its processes.
type EventKind int

// The lifecycle events a Container emits, in the order the contract requires.
const (
	EventCreate EventKind = iota + 1
	EventStart
	EventExit
	EventDelete
	EventExecAdded
	EventExecStarted
	EventPaused
	EventResumed
	EventCheckpointed
)

func (k EventKind) String() string {
	switch k {
	case EventCreate:
		return "create"
	case EventStart:
		return "start"
	case EventExit:
		return "exit"
	case EventDelete:
		return "delete"
	case EventExecAdded:
		return "exec-added"
	case EventExecStarted:
		return "exec-started"
	case EventPaused:
		return "paused"
	case EventResumed:
		return "resumed"
	case EventCheckpointed:
		return "checkpointed"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one lifecycle event. ExecID is empty for the init process.
type Event struct {
	Kind        EventKind
	ContainerID string
	ExecID      string
	Pid         int
	ExitStatus  int
	ExitedAt    time.Time

	// Set on EventCreate only.
	Bundle     string
	Rootfs     []mount.Mount
	Stdio      stdio.Config
	Checkpoint string
}
