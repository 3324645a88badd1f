package minimgr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
)

// TestConcurrentContainers starts and deletes 20 containers at once through
// the library: all succeed, their events arrive in order, and nothing is
// left behind (shims, sockets, state directories, runc state).
func TestConcurrentContainers(t *testing.T) {
	const n = 20
	m, bundle := newTestManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An events server, as `minimgr events` runs it.
	srv, err := m.ListenEvents()
	if err != nil {
		t.Fatal(err)
	}
	var (
		evMu    sync.Mutex
		topics  = map[string][]string{}
		deletes = make(chan string, n)
	)
	sctx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	served := make(chan error, 1)
	go func() {
		served <- srv.Serve(sctx, func(e Event) {
			if e.Namespace != m.Namespace() {
				return
			}
			id := containerOf(e)
			evMu.Lock()
			topics[id] = append(topics[id], e.Topic)
			evMu.Unlock()
			if e.Topic == "/tasks/delete" {
				deletes <- id
			}
		})
	}()

	type result struct {
		id       string
		shimPid  int
		initPid  int
		socket   string
		output   string
		exitCode int
		err      error
	}
	results := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := &results[i]
			r.id = fmt.Sprintf("c%02d", i)
			<-start
			var out bytes.Buffer
			c, err := m.Create(ctx, CreateOpts{
				Bundle: bundle, ID: r.id,
				Args: []string{"sh", "-c", "echo $0; exit $1", r.id, fmt.Sprint(i)},
				IO:   IO{Stdout: &out},
			})
			if err != nil {
				r.err = err
				return
			}
			defer c.Close()
			r.shimPid = c.ShimPid()
			if rec, err := readRecord(c.StateDir()); err == nil {
				r.socket = strings.TrimPrefix(rec.Address, "unix://")
			}
			if r.initPid, err = c.Start(ctx); err != nil {
				r.err = err
				return
			}
			exit, err := c.Wait(ctx)
			if err != nil {
				r.err = err
				return
			}
			r.exitCode = exit.Status
			if !c.WaitIO(5 * time.Second) {
				r.err = errors.New("output did not end")
				return
			}
			r.output = out.String()
			if _, err := c.Delete(ctx, false); err != nil {
				r.err = err
			}
		})
	}
	close(start)
	wg.Wait()

	for i, r := range results {
		if r.err != nil {
			t.Errorf("%s: %v", r.id, r.err)
			continue
		}
		if r.output != r.id+"\n" || r.exitCode != i {
			t.Errorf("%s: output %q exit %d, want %q exit %d", r.id, r.output, r.exitCode, r.id+"\n", i)
		}
	}
	if t.Failed() {
		return
	}

	// Every container's events, in order.
	seen := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for len(seen) < n {
		select {
		case id := <-deletes:
			seen[id] = true
		case <-timeout:
			t.Fatalf("delete events of %d containers only", len(seen))
		}
	}
	stopEvents()
	if err := <-served; err != nil {
		t.Errorf("events server: %v", err)
	}
	want := "/tasks/create,/tasks/start,/tasks/exit,/tasks/delete"
	for _, r := range results {
		if got := strings.Join(topics[r.id], ","); got != want {
			t.Errorf("%s: events %s, want %s", r.id, got, want)
		}
	}

	// Nothing left: shims, their sockets, init processes, state, runc state.
	for _, r := range results {
		if err := waitGone(r.shimPid, 10*time.Second); err != nil {
			t.Errorf("%s: shim: %v", r.id, err)
		}
		if err := waitGone(r.initPid, 10*time.Second); err != nil {
			t.Errorf("%s: init: %v", r.id, err)
		}
		if _, err := os.Stat(r.socket); r.socket == "" || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: socket %q left: %v", r.id, r.socket, err)
		}
	}
	if entries, err := os.ReadDir(nsDir(m.Root(), m.Namespace())); err != nil || len(entries) != 0 {
		t.Errorf("state left: %v %v", entries, err)
	}
	runcRoot := filepath.Join("/run/containerd/runc", m.Namespace())
	if entries, err := os.ReadDir(runcRoot); err == nil && len(entries) != 0 {
		t.Errorf("runc state left in %s: %v", runcRoot, entries)
	}
	if infos, err := m.List(ctx); err != nil || len(infos) != 0 {
		t.Errorf("list: %v %v", infos, err)
	}
}

func containerOf(e Event) string {
	switch ev := e.Event.(type) {
	case *eventstypes.TaskCreate:
		return ev.ContainerID
	case *eventstypes.TaskStart:
		return ev.ContainerID
	case *eventstypes.TaskExit:
		return ev.ContainerID
	case *eventstypes.TaskDelete:
		return ev.ContainerID
	}
	return ""
}
