package unixsock

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// dialBound bounds the connect of Dead. A connect to a unix socket does not
// wait for the server to accept, so the bound matters only when the caller
// itself is not scheduled in time, and its expiry counts as alive.
const dialBound = time.Second

// Dead reports whether no stream server can be reached at path. Alive are
// a socket that accepts a connect, one whose backlog is full (EAGAIN), and
// one the connect ran out of time on. Anything else (refused, gone, not a
// stream socket, not a socket at all, a symlink loop) is dead: the path is
// of no use to a client and may be taken over.
func Dead(path string) bool {
	c, err := net.DialTimeout("unix", path, dialBound)
	if err == nil {
		c.Close()
		return false
	}
	var ne net.Error
	busy := errors.Is(err, syscall.EAGAIN) || errors.As(err, &ne) && ne.Timeout()
	return !busy
}
