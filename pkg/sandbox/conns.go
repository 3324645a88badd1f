package sandbox

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
)

// exitGrace bounds how long a shut-down sandbox's shim waits for its
// clients to hang up before it exits anyway.
const exitGrace = 3 * time.Second

// Handshaker wraps the shim's ttrpc handshaker so that the service knows
// how many connections are open. After ShutdownSandbox the shim exits once
// containerd has closed them (it does so right after the call returns):
// exiting at once could cut the connection before ShutdownSandbox's reply
// is written, which containerd reports as a failed pod removal.
func (s *Service) Handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return countingHandshaker{inner: inner, s: s}
}

type countingHandshaker struct {
	inner ttrpc.Handshaker
	s     *Service
}

func (h countingHandshaker) Handshake(ctx context.Context, conn net.Conn) (net.Conn, interface{}, error) {
	approved, info, err := h.inner.Handshake(ctx, conn)
	if err != nil {
		return approved, info, err
	}
	h.s.connMu.Lock()
	h.s.conns++
	h.s.connMu.Unlock()
	return &trackedConn{Conn: approved, s: h.s}, info, nil
}

type trackedConn struct {
	net.Conn
	once sync.Once
	s    *Service
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.s.connClosed)
	return err
}

func (s *Service) connClosed() {
	s.connMu.Lock()
	s.conns--
	s.connMu.Unlock()
	select {
	case s.connGone <- struct{}{}:
	default:
	}
}

// exitWhenDisconnected calls cfg.Shutdown once no connection is open, or
// after exitGrace.
func (s *Service) exitWhenDisconnected() {
	if s.cfg.Shutdown == nil {
		return
	}
	go func() {
		grace := time.NewTimer(exitGrace)
		defer grace.Stop()
		for {
			s.connMu.Lock()
			n := s.conns
			s.connMu.Unlock()
			if n <= 0 {
				break
			}
			select {
			case <-s.connGone:
				continue
			case <-grace.C:
			}
			break
		}
		s.cfg.Shutdown()
	}()
}
