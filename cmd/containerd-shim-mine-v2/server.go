package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/mineshim/mine/internal/replyhold"
)

// drainGrace bounds how long an ending daemon waits for its clients to hang
// up before it closes their connections itself, counted from the end of
// its last call in flight. callDrainBound bounds the wait for the calls in
// flight, so the whole wait is at most their sum: a client's Kill, whose
// exit made the container's manager delete it and shut the shim down, is
// still answered when runc takes its time.
const (
	drainGrace     = 3 * time.Second
	callDrainBound = 10 * time.Second
)

// server is the daemon's ttrpc server: it accepts on the socket start
// handed over, from clients of the daemon's own user, and counts the
// connections it serves so that stop can wait for them to close.
//
// ttrpc's Server.Shutdown is not enough on its own: it closes every
// connection it last saw idle, and a connection's state is brought up to
// date only when the connection's loop wakes to send a response. A request
// that came on an idle connection is therefore still "idle" while its
// handler runs, and Shutdown closes the connection under it: the reply is
// lost. containerd sends a group's shim a Shutdown after each task's
// Delete, each on that task's connection; when a pod's containers are
// removed in parallel, the Shutdown that finds no container left can come
// while another task's Delete is still being answered, which containerd
// then reports as "ttrpc: closed". containerd closes a task's connection
// right after that task's Shutdown is answered, so waiting for the clients
// to hang up (for a bounded grace) is waiting for the replies to have been
// written.
type server struct {
	*ttrpc.Server
	listener  *closeOnceListener
	conns     *connections
	callDrain time.Duration // bound of stop's wait for the calls in flight
}

// newServer makes the server; its own interceptor, which counts the calls
// in flight, runs before those of opts.
func newServer(l net.Listener, opts ...ttrpc.ServerOpt) (*server, error) {
	conns := newConnections()
	opts = append([]ttrpc.ServerOpt{
		ttrpc.WithServerHandshaker(conns.handshaker(ttrpc.UnixSocketRequireSameUser())),
		ttrpc.WithChainUnaryServerInterceptor(conns.interceptor),
	}, opts...)
	srv, err := ttrpc.NewServer(opts...)
	if err != nil {
		return nil, err
	}
	return &server{Server: srv, listener: &closeOnceListener{Listener: l}, conns: conns, callDrain: callDrainBound}, nil
}

// serve serves until stop.
func (s *server) serve(ctx context.Context) error {
	return s.Server.Serve(ctx, s.listener)
}

// stop stops accepting and, with a grace (after a Shutdown call), waits
// for the calls in flight to end (at most callDrain) and then up to grace
// after the last of them for the clients to close their connections; then
// it shuts the server down, which closes the idle connections and waits up
// to bound for the others, and closes what is still open after that. It
// returns how many connections were still open when it stopped waiting.
func (s *server) stop(grace, bound time.Duration) (int, error) {
	lerr := s.listener.Close()
	open := 0
	if grace > 0 {
		open = s.conns.waitClosed(grace, s.callDrain)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	err := s.Server.Shutdown(ctx)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		err = errors.Join(err, s.Server.Close())
	}
	return open, errors.Join(lerr, err)
}

// connections counts the connections a server serves and the calls in
// flight on them.
type connections struct {
	mu       sync.Mutex
	open     int           // guarded by mu
	inFlight int           // guarded by mu
	lastEnd  time.Time     // when the last call ended; guarded by mu
	changed  chan struct{} // a connection closed or a call ended (buffered, one pending)
}

func newConnections() *connections {
	return &connections{changed: make(chan struct{}, 1)}
}

// handshaker wraps a handshaker: every connection it approves is counted
// until it is closed.
func (c *connections) handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return countingHandshaker{inner: inner, c: c}
}

// interceptor counts a call in flight until its handler returns.
func (c *connections) interceptor(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	c.mu.Lock()
	c.inFlight++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.lastEnd = time.Now()
		c.mu.Unlock()
		c.signal()
	}()
	return m(ctx, u)
}

// waitClosed waits for every connection to close: while calls are in
// flight, up to callBound; then up to grace after the later of its start
// and the last call's end (the answer is written after the handler
// returns, and the client hangs up after reading it). It returns how many
// connections are still open.
func (c *connections) waitClosed(grace, callBound time.Duration) int {
	begin := time.Now()
	hard := begin.Add(callBound + grace)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for {
		c.mu.Lock()
		n, inFlight, lastEnd := c.open, c.inFlight, c.lastEnd
		c.mu.Unlock()
		if n == 0 {
			return 0
		}
		deadline := begin.Add(callBound)
		if inFlight == 0 {
			since := begin
			if lastEnd.After(begin) {
				since = lastEnd
			}
			deadline = since.Add(grace)
		}
		if deadline.After(hard) {
			deadline = hard
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return n
		}
		timer.Reset(wait)
		select {
		case <-c.changed:
		case <-timer.C:
		}
	}
}

func (c *connections) closed() {
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
	c.signal()
}

func (c *connections) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

type countingHandshaker struct {
	inner ttrpc.Handshaker
	c     *connections
}

func (h countingHandshaker) Handshake(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
	approved, info, err := h.inner.Handshake(ctx, conn)
	if err != nil {
		return approved, info, err
	}
	h.c.mu.Lock()
	h.c.open++
	h.c.mu.Unlock()
	return &countedConn{Conn: replyhold.Wrap(approved), c: h.c}, info, nil
}

type countedConn struct {
	net.Conn
	once sync.Once
	c    *connections
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.c.closed)
	return err
}

// closeOnceListener lets stop close the listener before the server's
// Shutdown closes it again.
type closeOnceListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *closeOnceListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
