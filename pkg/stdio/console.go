package stdio

import (
	"fmt"
	"sync"

	"github.com/containerd/console"
)

// Consoles is the one epoll loop serving the terminal masters of every
// process of the shim. The loop (one goroutine, one epoll fd) is started by
// the first terminal, so a shim without terminals pays nothing for it.
type Consoles struct {
	mu     sync.Mutex
	ep     *console.Epoller // guarded by mu; nil until the first terminal
	closed bool             // guarded by mu
}

// NewConsoles returns the console service; its loop starts on first use.
func NewConsoles() *Consoles { return &Consoles{} }

func (c *Consoles) add(con console.Console) (*console.EpollConsole, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("terminal service closed")
	}
	if c.ep == nil {
		ep, err := console.NewEpoller()
		if err != nil {
			return nil, fmt.Errorf("terminal epoll: %w", err)
		}
		c.ep = ep
		go func() { _ = ep.Wait() }()
	}
	ec, err := c.ep.Add(con)
	if err != nil {
		return nil, fmt.Errorf("watch terminal: %w", err)
	}
	return ec, nil
}

func (c *Consoles) remove(fd int) error {
	c.mu.Lock()
	ep := c.ep
	c.mu.Unlock()
	if ep == nil {
		return nil
	}
	return ep.CloseConsole(fd)
}

// Close closes the epoll fd. console's Epoller has no wake-up, so its loop
// goroutine stays blocked in epoll_wait until the process exits: Close is
// meant for the end of the shim.
func (c *Consoles) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.ep == nil {
		return nil
	}
	return c.ep.Close()
}
