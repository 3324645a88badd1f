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

// Dead reports whether nobody listens on the unix socket at path: a connect
// is refused, or the path is gone. Any other outcome may be a live server.
func Dead(path string) bool {
	c, err := net.DialTimeout("unix", path, dialBound)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}
