package stdio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
	}{
		{"none", Config{}, nil},
		{"fifos", Config{Stdin: "/a", Stdout: "/b", Stderr: "/c"}, nil},
		{"fifo scheme", Config{Stdout: "fifo:///b"}, nil},
		{"file", Config{Stdout: "file:///var/log/x", Stderr: "file:///var/log/x"}, nil},
		{"binary", Config{Stdout: "binary:///bin/logger?a=b", Stderr: "binary:///bin/logger?a=b"}, nil},
		{"unknown scheme", Config{Stdout: "gopher://x"}, errdefs.ErrNotImplemented},
		{"file without path", Config{Stdout: "file://"}, errdefs.ErrInvalidArgument},
		{"file as stdin", Config{Stdin: "file:///x"}, errdefs.ErrInvalidArgument},
		{"binary for one stream", Config{Stdout: "binary:///bin/l", Stderr: "/fifo"}, errdefs.ErrInvalidArgument},
		{"terminal to file", Config{Stdout: "file:///x", Terminal: true}, nil},
		{"terminal to binary", Config{Stdout: "binary:///l", Stderr: "binary:///l", Terminal: true}, nil},
		{"binary-v2", Config{Stdout: "binary-v2:///bin/logger", Stderr: "binary-v2:///bin/logger"}, nil},
		{"binary-v2 without path", Config{Stdout: "binary-v2://", Stderr: "binary-v2://"}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// spawn runs a shell command with the process side of i as its stdio.
func spawn(t *testing.T, i *IO, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r := i.Runc(); r != nil {
		r.Set(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	if c, ok := i.Runc().(interface{ CloseAfterStart() error }); ok {
		c.CloseAfterStart()
	}
	if err := i.Started(context.Background()); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFIFOs(t *testing.T) {
	dir := t.TempDir()
	in, out, errp := mkfifo(t, dir, "in"), mkfifo(t, dir, "out"), mkfifo(t, dir, "err")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The reader side, as containerd holds it.
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	errR, err := fifo.OpenFifo(ctx, errp, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	inW, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	i, err := Open(ctx, Config{Stdin: in, Stdout: out, Stderr: errp}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close(0)
	cmd := spawn(t, i, "cat; echo oops >&2")
	if _, err := inW.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	// The client detaching is not EOF for the process; CloseStdin is.
	inW.Close()
	if err := i.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("process: %v", err)
	}
	if !i.Flush(ExitBound) {
		t.Fatal("flush hit its bound")
	}
	gotOut, _ := io.ReadAll(outR)
	gotErr, _ := io.ReadAll(errR)
	if string(gotOut) != "hello\n" || string(gotErr) != "oops\n" {
		t.Fatalf("stdout %q stderr %q", gotOut, gotErr)
	}
}

func TestFileTarget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "c.log")
	ctx := context.Background()
	i, err := Open(ctx, Config{Stdout: "file://" + path, Stderr: "file://" + path}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close(0)
	cmd := spawn(t, i, "echo out; echo err >&2")
	cmd.Wait()
	i.Flush(ExitBound)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(data); !strings.Contains(got, "out\n") || !strings.Contains(got, "err\n") {
		t.Fatalf("file has %q", got)
	}
}

func TestBinaryLogger(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "logged")
	logger := filepath.Join(dir, "logger.sh")
	// fd 3: stdout, fd 4: stderr, fd 5: closed once ready.
	script := "#!/bin/sh\nexec 5>&-\necho \"id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE arg=$1\" > " + out + ".env\ncat <&3 >> " + out + "\ncat <&4 >> " + out + "\n"
	if err := os.WriteFile(logger, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	target := "binary://" + logger + "?tag"
	i, err := Open(context.Background(), Config{Stdout: target, Stderr: target}, Options{ContainerID: "c1", Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := spawn(t, i, "echo to-stdout; echo to-stderr >&2")
	cmd.Wait()
	i.Close(0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(out)
		if strings.Contains(string(data), "to-stdout") && strings.Contains(string(data), "to-stderr") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logger wrote %q", data)
		}
		time.Sleep(20 * time.Millisecond)
	}
	env, _ := os.ReadFile(out + ".env")
	if got := strings.TrimSpace(string(env)); got != "id=c1 ns=ns arg=tag" {
		t.Fatalf("logger environment %q", got)
	}
}

// A background child that keeps stdout open does not hold the exit: Flush
// returns once what the process wrote has been copied, and what the child
// writes later is still copied, until Close cuts it off within its bound.
func TestFlushLeavesBackgroundOutputFlowing(t *testing.T) {
	dir := t.TempDir()
	out := mkfifo(t, dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	i, err := Open(ctx, Config{Stdout: out}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "go")
	cmd := spawn(t, i, "(while [ ! -e "+marker+" ]; do sleep 0.05; done; echo later; sleep 30) & echo hi")
	cmd.Wait()
	if !i.Flush(ExitBound) {
		t.Fatal("flush hit its bound although the pipe was empty")
	}
	buf := make([]byte, 16)
	n, _ := outR.Read(buf)
	if got := string(buf[:n]); got != "hi\n" {
		t.Fatalf("read %q", got)
	}
	// The child writes after the process's exit: still delivered.
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		n, _ := outR.Read(buf)
		got <- string(buf[:n])
	}()
	select {
	case s := <-got:
		if s != "later\n" {
			t.Fatalf("read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("output of the background child was not copied")
	}
	const bound = 300 * time.Millisecond
	start := time.Now()
	i.Close(bound)
	if d := time.Since(start); d > bound+2*closeBound {
		t.Fatalf("close took %s", d)
	}
}

// openStdinIO opens an IO whose stdin is a new FIFO, with no other stream,
// and returns it with the FIFO's path and a context bounded for the test.
// Closing the IO is the test's.
func openStdinIO(t *testing.T) (context.Context, string, *IO) {
	t.Helper()
	in := mkfifo(t, t.TempDir(), "in")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	i, err := Open(ctx, Config{Stdin: in}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, in, i
}

// Stdin that the process never reads: its exit must not leave the copy, a
// client writing, or Close blocked (a full pipe whose read end the shim kept
// wedged containers for good).
func TestUnreadStdinNeverBlocks(t *testing.T) {
	ctx, in, i := openStdinIO(t)
	// As clients open it: the shim opens its side only once the process is made.
	w, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write(make([]byte, 300000))
		w.Close()
		wrote <- err
	}()
	cmd := spawn(t, i, "exit 0")
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("client write: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client blocked writing stdin of an exited process")
	}
	start := time.Now()
	if err := i.CloseStdin(); err != nil && !errors.Is(err, os.ErrClosed) {
		t.Logf("close stdin: %v", err)
	}
	i.Close(DeleteBound)
	if d := time.Since(start); d > stdinDrainBound+DeleteBound+2*closeBound {
		t.Fatalf("closing took %s", d)
	}
}

// Resize may race with the process's exit closing its terminal.
func TestResizeRacesClose(t *testing.T) {
	for n := 0; n < 50; n++ {
		con, _, err := console.NewPty()
		if err != nil {
			t.Skipf("no pty: %v", err)
		}
		i := &IO{cfg: Config{Terminal: true}, con: con}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for k := 0; k < 20; k++ {
				_ = i.Resize(80, 24)
			}
		}()
		i.Close(0)
		<-done
		if err := i.Resize(80, 24); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("resize after close: %v", err)
		}
	}
}

func TestCloseStdinGivesEOF(t *testing.T) {
	dir := t.TempDir()
	in := mkfifo(t, dir, "in")
	ctx := context.Background()
	i, err := Open(ctx, Config{Stdin: in}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close(0)
	cmd, stdout := spawnStdin(t, ctx, i, "cat >/dev/null; echo eof")
	if err := i.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := waitCmd(cmd, 10*time.Second); err != nil || stdout.String() != "eof\n" {
		t.Fatalf("cat: %v %q", err, stdout.String())
	}
}

// spawnStdin runs script with i's stdin (and no other stream), its output
// in the buffer returned, and sets i's stdin up (Started).
func spawnStdin(t *testing.T, ctx context.Context, i *IO, script string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var stdout bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", script)
	i.Runc().Set(cmd)
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	i.Runc().(interface{ CloseAfterStart() error }).CloseAfterStart()
	if err := i.Started(ctx); err != nil {
		t.Fatal(err)
	}
	return cmd, &stdout
}

// waitCmd waits for cmd, at most bound.
func waitCmd(cmd *exec.Cmd, bound time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		return fmt.Errorf("not ended within %s", bound)
	}
}

// A process without I/O gets /dev/null, never a pipe whose end someone
// waits for: runc create's own output must not be tied to the container.
func TestNullIOUsesDevNull(t *testing.T) {
	for _, cfg := range []Config{{}, {Stdin: ""}, {Stdout: "file://" + filepath.Join(t.TempDir(), "out")}} {
		i, err := Open(context.Background(), cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/bin/true")
		i.Runc().Set(cmd)
		for name, f := range map[string]any{"stdout": cmd.Stdout, "stderr": cmd.Stderr} {
			if f == nil {
				t.Errorf("%+v: %s left unset", cfg, name)
			}
			if _, ok := f.(*os.File); !ok {
				t.Errorf("%+v: %s is %T, not a file", cfg, name, f)
			}
		}
		i.Close(0)
	}
}

// A client that closes its side of the stdin FIFO (detaches) does not end
// the process's stdin: another client can attach and write.
func TestStdinSurvivesDetach(t *testing.T) {
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "in"), mkfifo(t, dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	i, err := Open(ctx, Config{Stdin: in, Stdout: out}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close(0)
	cmd := spawn(t, i, "read a; read b; echo \"$a $b\"")
	for _, line := range []string{"first\n", "second\n"} {
		w, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		w.Close() // detach
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	i.Flush(ExitBound)
	got, _ := io.ReadAll(outR)
	if string(got) != "first second\n" {
		t.Fatalf("process read %q", got)
	}
}

// gateWriter blocks each Write until release is signalled, and reports
// what it got.
type gateWriter struct {
	entered chan struct{}
	release chan struct{}
	got     chan string
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.release
	g.got <- string(p)
	return len(p), nil
}

// An output copy holds a buffer only while its pipe has something to read:
// one while a write is under way, none once the pipe is empty again, so an
// idle process's output costs no 32 KiB buffer.
func TestIdleOutputHoldsNoBuffer(t *testing.T) {
	waitOut := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for buffersOut.Load() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d copy buffers out, want %d", buffersOut.Load(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	base := buffersOut.Load()
	w, oc := pipeCopy(t)
	g := &gateWriter{entered: make(chan struct{}), release: make(chan struct{}), got: make(chan string, 1)}
	oc.start(g, nil)
	waitOut(base) // waiting on an empty pipe
	if _, err := w.Write([]byte("line\n")); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	if n := buffersOut.Load(); n != base+1 {
		t.Errorf("%d copy buffers out while writing, want %d", n, base+1)
	}
	g.release <- struct{}{}
	if s := <-g.got; s != "line\n" {
		t.Errorf("copied %q", s)
	}
	waitOut(base) // the pipe is empty again
	w.Close()
	select {
	case <-oc.done:
	case <-time.After(5 * time.Second):
		t.Fatal("copy did not end at EOF")
	}
	waitOut(base)
}

// Idle output copies hold no goroutine: they wait in the idle poller, wake
// when their pipe has something, end at EOF, and end when stopped (before
// their pipe is closed) while idle.
func TestIdleOutputHoldsNoGoroutine(t *testing.T) {
	const n = 50
	type stream struct {
		r, w *os.File
		oc   *outputCopy
		out  *lockedBuffer
	}
	settle := func(want func(int) bool) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			g := runtime.NumGoroutine()
			if want(g) || time.Now().After(deadline) {
				return g
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	base := runtime.NumGoroutine()
	streams := make([]stream, n)
	for i := range streams {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); w.Close() })
		oc, err := newOutputCopy(r)
		if err != nil {
			t.Fatal(err)
		}
		out := &lockedBuffer{}
		oc.start(out, nil)
		streams[i] = stream{r, w, oc, out}
	}
	// The poller's own goroutine may be new to this test.
	if g := settle(func(g int) bool { return g <= base+1 }); g > base+1 {
		t.Fatalf("%d goroutines with %d idle copies, %d before", g, n, base)
	}
	for i, s := range streams {
		if _, err := fmt.Fprintf(s.w, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range streams {
		want := fmt.Sprintf("line %d\n", i)
		deadline := time.Now().Add(5 * time.Second)
		for s.out.String() != want {
			if time.Now().After(deadline) {
				t.Fatalf("copy %d: %q, want %q", i, s.out.String(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if g := settle(func(g int) bool { return g <= base+1 }); g > base+1 {
		t.Fatalf("%d goroutines once the copies are idle again, %d before", g, base)
	}
	// Half end as Close ends them (stop, then the pipe closed), whether
	// parked or not; half at EOF.
	for i, s := range streams {
		if i%2 == 0 {
			s.oc.stop()
			s.r.Close()
		} else {
			s.w.Close()
		}
	}
	for i, s := range streams {
		select {
		case <-s.oc.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("copy %d did not end (stopped: %v)", i, i%2 == 0)
		}
		if !s.oc.drained() {
			t.Errorf("copy %d ended but is not drained", i)
		}
	}
}

// A poller that ends (its epoll failed) hands its parked copies back to
// goroutines of their own: their output still flows, their EOF still ends
// them, and they never park again.
func TestIdlePollerEndResumesParked(t *testing.T) {
	p, err := newIdlePoller()
	if err != nil {
		t.Fatal(err)
	}
	w, oc := pipeCopy(t)
	oc.poller, oc.token = p, p.token()
	out := &lockedBuffer{}
	oc.start(out, nil)
	parked := func() bool {
		oc.mu.Lock()
		defer oc.mu.Unlock()
		return oc.parked
	}
	deadline := time.Now().Add(5 * time.Second)
	for !parked() {
		if time.Now().After(deadline) {
			t.Fatal("the copy of an empty pipe never parked")
		}
		time.Sleep(time.Millisecond)
	}
	p.end() // as run does when its epoll fails; p.run never ran
	for i := range 3 {
		want := fmt.Sprintf("line %d\n", i)
		if _, err := w.Write([]byte(want)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.HasSuffix(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("after the poller ended: copied %q, want it to end with %q", out.String(), want)
			}
			time.Sleep(time.Millisecond)
		}
		if parked() {
			t.Fatal("a copy parked in a poller that ended")
		}
	}
	w.Close()
	select {
	case <-oc.done:
	case <-time.After(5 * time.Second):
		t.Fatal("copy did not end at EOF after the poller ended")
	}
}

// pipeCopy is a pipe and an output copy of its read end, not started; the
// read end is closed at the end of the test.
func pipeCopy(tb testing.TB) (*os.File, *outputCopy) {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	oc, err := newOutputCopy(r)
	if err != nil {
		tb.Fatal(err)
	}
	return w, oc
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A stream copy (stdin, terminals) blocked on an idle source holds no
// pooled buffer; a burst is read with one, given back once the source has
// caught up.
func TestStreamCopyIdleHoldsNoBuffer(t *testing.T) {
	base := buffersOut.Load()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var dst lockedBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyStream(&dst, r, true)
	}()
	burst := bytes.Repeat([]byte("x"), 100<<10)
	if _, err := w.Write(burst); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dst.Len() < len(burst) || buffersOut.Load() != base {
		if time.Now().After(deadline) {
			t.Fatalf("copied %d of %d bytes, %d copy buffers out (want %d) while the source is idle",
				dst.Len(), len(burst), buffersOut.Load(), base)
		}
		time.Sleep(time.Millisecond)
	}
	w.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("copy did not end at EOF")
	}
	r.Close()
	if n := buffersOut.Load(); n != base {
		t.Errorf("%d copy buffers out after the copy ended, want %d", n, base)
	}
}

// fdsUnder counts the descriptors open on files under dir, whatever else
// the package's other tests still close.
func fdsUnder(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, dir+"/") {
			c++
		}
	}
	return c
}

// A stdin FIFO that is not there is bad input, and leaves nothing open.
func TestMissingStdinIsInvalidArgument(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fd0 := fdsUnder(t, dir)
	_, err := Open(ctx, Config{Stdin: filepath.Join(dir, "none"), Stdout: mkfifo(t, dir, "out")}, Options{})
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("open with a missing stdin FIFO: %v, want invalid argument", err)
	}
	if got := fdsUnder(t, dir); got != fd0 {
		t.Errorf("%d descriptors left under the bundle after the failed open, want %d", got, fd0)
	}
}

// A stdin FIFO holds two descriptors: the side the shim reads and the write
// side it keeps until CloseStdin (the FIFO library's objects held an O_PATH
// descriptor each besides, four in all, and opened the read side in the
// background); closing the IO drops them.
func TestStdinFIFOHoldsTwoDescriptors(t *testing.T) {
	const n = 50
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fd0 := fdsUnder(t, dir)
	ios := make([]*IO, n)
	for k := range ios {
		i, err := Open(ctx, Config{Stdin: mkfifo(t, dir, fmt.Sprintf("in%d", k))}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := i.Started(ctx); err != nil {
			t.Fatal(err)
		}
		ios[k] = i
	}
	// Count once the count has held for three readings: a descriptor
	// opened in the background would show by then.
	open, same := fdsUnder(t, dir), 1
	for deadline := time.Now().Add(10 * time.Second); (open-fd0 < 2*n || same < 3) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if now := fdsUnder(t, dir); now == open {
			same++
		} else {
			open, same = now, 1
		}
	}
	per := float64(open-fd0) / n
	t.Logf("per stdin: %.1f descriptors", per)
	if per != 2 {
		t.Errorf("a stdin FIFO holds %.1f descriptors, want 2", per)
	}
	for _, i := range ios {
		if err := i.Close(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := fdsUnder(t, dir); got != fd0 {
		t.Errorf("%d descriptors after closing every IO, want %d", got, fd0)
	}
}

// An output FIFO stays open for the life of its process, in a group shim
// once per container and stream: what it holds is paid per container. It is
// its write side and the kept read side, one descriptor each, and about half
// a KiB of heap (1.9 KiB while the FIFO library's handles were kept).
func TestOutputFIFOHoldsTwoDescriptors(t *testing.T) {
	const n = 100
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	readers := make([]*os.File, n)
	paths := make([]string, n)
	for k := range paths {
		paths[k] = mkfifo(t, dir, fmt.Sprintf("out%d", k))
		r, err := os.OpenFile(paths[k], os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		readers[k] = r
		defer r.Close()
	}
	fds := func() int { return fdsUnder(t, dir) }
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	fd0, heap0 := fds(), heap()
	outs := make([]io.WriteCloser, n)
	for k, p := range paths {
		w, err := openOutput(ctx, "fifo://"+p)
		if err != nil {
			t.Fatal(err)
		}
		outs[k] = w
	}
	fd1, heap1 := fds(), heap()
	perFD := float64(fd1-fd0) / n
	perHeap := (float64(heap1) - float64(heap0)) / n
	t.Logf("per output: %.1f descriptors, %.0f B of heap", perFD, perHeap)
	if perFD != 2 {
		t.Errorf("an output FIFO holds %.1f descriptors, want 2 (its write side and the kept read side)", perFD)
	}
	if perHeap > 1024 {
		t.Errorf("an output FIFO holds %.0f B of heap, want at most 1 KiB", perHeap)
	}
	// Each still carries what is written to its reader, and its close
	// drops both descriptors.
	for k, w := range outs {
		msg := fmt.Sprintf("line %d\n", k)
		if _, err := io.WriteString(w, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		nr, err := readers[k].Read(buf)
		if err != nil || string(buf[:nr]) != msg {
			t.Fatalf("output %d read %q, %v; want %q", k, buf[:nr], err, msg)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			t.Fatalf("second close: %v", err)
		}
	}
	if got := fds(); got != fd0 {
		t.Errorf("%d descriptors after closing every output, want %d", got, fd0)
	}
	runtime.KeepAlive(outs)
}

// A CloseStdin that came before the terminal (an exec's CloseIO before its
// Start) does not leave the terminal's input descriptor open: Close
// releases it.
func TestCloseReleasesTTYInputAfterEarlyCloseStdin(t *testing.T) {
	con, _, err := console.NewPty()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	// A stdin not set up yet: CloseStdin is recorded, not carried out.
	i := &IO{cfg: Config{Terminal: true, Stdin: filepath.Join(t.TempDir(), "in")}}
	if err := i.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	in, err := newTTYInput(con)
	if err != nil {
		t.Fatal(err)
	}
	i.conMu.Lock()
	i.con = con
	i.conMu.Unlock()
	i.stdinDst = in
	i.Close(0)
	if _, err := in.Write([]byte{'x'}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write to the terminal's input after Close: %v, want it closed", err)
	}
}

// The stdin FIFO is opened once the runtime has made the process
// (Started), as containerd's runc shim opens it, not at Open: a client
// that writes all its input and closes it, then asks for CloseIO, finds
// the task made. A CloseStdin that comes before Started is carried out
// then: what the client wrote is read, then EOF.
func TestStdinOpenedWhenStarted(t *testing.T) {
	ctx, in, i := openStdinIO(t)
	defer i.Close(0)
	if fd, err := unix.Open(in, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd)
		t.Fatal("the stdin FIFO has a reader before the process was made")
	} else if !errors.Is(err, unix.ENXIO) {
		t.Fatal(err)
	}
	if err := i.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	w, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write([]byte("hello\n"))
		wrote <- errors.Join(err, w.Close())
	}()
	cmd, stdout := spawnStdin(t, ctx, i, "cat; echo eof")
	if err := waitCmd(cmd, 5*time.Second); err != nil {
		t.Fatalf("the process did not see EOF, the early CloseStdin lost: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got := stdout.String(); got != "hello\neof\n" {
		t.Errorf("output %q, want %q", got, "hello\neof\n")
	}
}

// Started sets stdin up once: a start tried again (a restore whose pid
// could not be read) does not open the FIFO a second time.
func TestStdinSetUpOnce(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fd0 := fdsUnder(t, dir)
	i, err := Open(ctx, Config{Stdin: mkfifo(t, dir, "in")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close(0)
	for range 2 {
		if err := i.Started(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := fdsUnder(t, dir) - fd0; n != 2 {
		t.Errorf("%d descriptors of the stdin FIFO after two Starteds, want 2", n)
	}
}

// testConsoles is the console service of the package's tests: one, as in
// the shim, so that the tests leave one epoll loop behind, not one each.
var testConsoles = sync.OnceValue(NewConsoles)

// runtimeTerminal does what runc does for a process with a terminal: it
// makes one and sends its master over i's console socket. It returns the
// process's side, open (closed at the test's end).
func runtimeTerminal(t *testing.T, i *IO) *os.File {
	t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer master.Close() // the message queued on the socket holds the master
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: i.ConsoleSocket().Path(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := conn.WriteMsgUnix([]byte("/dev/ptmx"), unix.UnixRights(int(master.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	return slave
}

// A CloseStdin whose wait for the clients is cut short by Close sends no ^D: the
// terminal is being closed, and into a terminal whose input is full the EOF
// would wait out its bound, and Close with it (Delete after a CloseIO of a
// process that reads no stdin).
func TestCloseSendsNoEOFIntoClosingTerminal(t *testing.T) {
	dir := t.TempDir()
	in := mkfifo(t, dir, "in")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	i, err := Open(ctx, Config{Stdin: in, Stdout: "file://" + filepath.Join(dir, "out"), Terminal: true}, Options{Consoles: testConsoles()})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			i.Close(0)
		}
	})
	runtimeTerminal(t, i) // the process's side, open and never read
	if err := i.Started(ctx); err != nil {
		t.Fatal(err)
	}

	// A client fills the terminal's input and keeps the FIFO open.
	w, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const input = 8 << 20 // more than a terminal's input, a FIFO and a copy hold
	var wrote atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		line := []byte(strings.Repeat("x", 63) + "\n")
		for range input / len(line) {
			n, err := w.Write(line)
			wrote.Add(int64(n))
			if err != nil {
				writeErr <- err
				return
			}
		}
	}()
	last, still := int64(-1), 0
	for deadline := time.Now().Add(10 * time.Second); still < 5; {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal's input never filled (%d bytes written)", wrote.Load())
		}
		time.Sleep(50 * time.Millisecond)
		if n := wrote.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	select {
	case err := <-writeErr:
		t.Fatalf("the client's write failed: %v", err)
	default:
	}
	if last >= input {
		t.Fatalf("all %d bytes went through: the terminal's input is not full", last)
	}

	if err := i.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	// CloseStdin waits in the background for the client, which holds the
	// FIFO open; Close comes meanwhile.
	time.Sleep(200 * time.Millisecond)
	begin := time.Now()
	closed = true
	if err := i.Close(0); err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	t.Logf("Close: %s, after %d bytes of input", took.Round(time.Millisecond), last)
	if took >= closeBound/2 {
		t.Errorf("Close took %s: it waited for an EOF sent into the terminal it closes", took.Round(time.Millisecond))
	}
}

// CloseStdin of a terminal process that has no stdin does nothing, after
// Started or beside it (containerd's runc shim does nothing either): no EOF
// reaches the process, and it does not race with Started, which keeps the
// terminal's input to close it (the race detector's part).
func TestCloseStdinWithoutStdin(t *testing.T) {
	for _, beside := range []bool{false, true} {
		t.Run(fmt.Sprintf("beside Started %v", beside), func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			i, err := Open(ctx, Config{Stdout: "file://" + filepath.Join(dir, "out"), Terminal: true}, Options{Consoles: testConsoles()})
			if err != nil {
				t.Fatal(err)
			}
			defer i.Close(0)
			slave := runtimeTerminal(t, i)
			closed := make(chan error, 1)
			if beside {
				go func() { closed <- i.CloseStdin() }()
			}
			if err := i.Started(ctx); err != nil {
				t.Fatal(err)
			}
			if !beside {
				closed <- i.CloseStdin()
			}
			if err := <-closed; err != nil {
				t.Fatalf("CloseStdin: %v", err)
			}
			// An EOF (^D in canonical mode) would end this read at once,
			// with 0 bytes.
			if err := slave.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			n, err := slave.Read(buf)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("the process read %q (%v) from its terminal: CloseStdin without stdin sent it something", buf[:n], err)
			}
		})
	}
}
