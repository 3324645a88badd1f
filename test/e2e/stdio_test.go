package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// stdioProc is the process a stdio test drives: the init of a container of
// its own, or an exec process in a running container.
type stdioProc struct {
	name        string // "init" or "exec"
	containerID string
	io          func() cio.IO
	resize      func(ctx context.Context, w, h uint32) error
	// closeStdin is CloseIO with WithStdinCloser.
	closeStdin func(ctx context.Context) error
	// attach connects a new client to the process's FIFOs; io returns the
	// new client's IO afterwards.
	attach func(ctx context.Context, a cio.Attach) error
	exitC  <-chan client.ExitStatus
	// finish deletes the process, and the container it ran in, and returns
	// the exit status the delete reported.
	finish func(t *testing.T) uint32
}

// procKinds are the two kinds of stdioProc, for table tests.
var procKinds = []string{"init", "exec"}

// startProc runs args with ioc for stdio (with a terminal when tty is set)
// as the init of a new container (kind "init") or as an exec process of a
// container whose init sleeps (kind "exec"), under the runtime under test.
func (h *harness) startProc(t *testing.T, kind string, ioc cio.Creator, tty bool, args ...string) *stdioProc {
	t.Helper()
	return h.startProcOn(t, h.runtime, kind, ioc, tty, args...)
}

// startProcOn is startProc under runtime rt.
func (h *harness) startProcOn(t *testing.T, rt, kind string, ioc cio.Creator, tty bool, args ...string) *stdioProc {
	t.Helper()
	if kind == "init" {
		opts := []oci.SpecOpts{oci.WithProcessArgs(args...)}
		if tty {
			opts = append(opts, oci.WithTTY)
		}
		c := h.startHost(t, rt, newID(t), ioc, opts...)
		return &stdioProc{
			name:        kind,
			containerID: c.id,
			io:          func() cio.IO { return c.task.IO() },
			resize:      c.task.Resize,
			closeStdin: func(ctx context.Context) error {
				return c.task.CloseIO(ctx, client.WithStdinCloser)
			},
			attach: func(ctx context.Context, a cio.Attach) error {
				task, err := c.container.Task(ctx, a)
				if err == nil {
					c.task = task
				}
				return err
			},
			exitC: c.exitC,
			finish: func(t *testing.T) uint32 {
				t.Helper()
				return c.delete(t)
			},
		}
	}
	c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
	wctx, cancel := context.WithCancel(c.base())
	t.Cleanup(cancel)
	ctx := c.ctx(t, execTimeout)
	p, exitC, err := c.startExec(ctx, wctx, "proc", c.execSpec(tty, args...), ioc)
	if err != nil {
		t.Fatal(err)
	}
	return &stdioProc{
		name:        kind,
		containerID: c.id,
		io:          func() cio.IO { return p.IO() },
		resize:      p.Resize,
		closeStdin: func(ctx context.Context) error {
			return p.CloseIO(ctx, client.WithStdinCloser)
		},
		attach: func(ctx context.Context, a cio.Attach) error {
			np, err := c.task.LoadProcess(ctx, p.ID(), a)
			if err == nil {
				p = np
			}
			return err
		},
		exitC: exitC,
		finish: func(t *testing.T) uint32 {
			t.Helper()
			st, err := p.Delete(c.ctx(t, opTimeout))
			if err != nil {
				t.Fatalf("delete exec: %v", err)
			}
			c.delete(t)
			return st.ExitCode()
		},
	}
}

// wait returns the exit status, or fails t when there is none in time.
func (p *stdioProc) wait(t *testing.T) uint32 {
	t.Helper()
	code, err := exitCode(p.exitC, exitTimeout)
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	return code
}

// end waits for the exit, for the client's output streams to end, and
// deletes the process; it checks that Wait and Delete agree on wantCode.
func (p *stdioProc) end(t *testing.T, wantCode uint32) {
	t.Helper()
	if code := p.wait(t); code != wantCode {
		t.Errorf("%s: Wait status %d, want %d", p.name, code, wantCode)
	}
	if err := waitIO(p.io(), ioTimeout); err != nil {
		t.Errorf("%s: %v", p.name, err)
	}
	if code := p.finish(t); code != wantCode {
		t.Errorf("%s: Delete reported exit status %d, want %d", p.name, code, wantCode)
	}
}

// TestTTYResize resizes the terminal of a process twice and has it report
// its size with `stty size` after each resize. The process reads a line
// before each report, and the test writes that line only after the resize
// returned, so the order is fixed without any delay.
func TestTTYResize(t *testing.T) {
	h := requireHarness(t)
	sizes := []struct{ w, h uint32 }{{123, 45}, {77, 31}}
	for _, kind := range procKinds {
		t.Run(kind, func(t *testing.T) {
			stdinR, stdinW := io.Pipe()
			t.Cleanup(func() { stdinW.Close() })
			out := newOutputBuffer()
			p := h.startProc(t, kind, cio.NewCreator(cio.WithStreams(stdinR, out, nil), cio.WithTerminal), true,
				"sh", "-c", "read a; stty size; read b; stty size")
			var want strings.Builder
			for _, s := range sizes {
				if err := p.resize(nsContext(t, defaultNamespace, opTimeout), s.w, s.h); err != nil {
					t.Fatalf("resize %s to %dx%d: %v", kind, s.w, s.h, err)
				}
				if _, err := io.WriteString(stdinW, "go\n"); err != nil {
					t.Fatalf("write to the terminal: %v", err)
				}
				// The terminal echoes the line; `stty size` prints rows, columns.
				report := fmt.Sprintf("%d %d", s.h, s.w)
				fmt.Fprintf(&want, "go\r\n%s\r\n", report)
				out.waitFor(t, report, exitTimeout)
			}
			p.end(t, 0)
			if got := out.String(); got != want.String() {
				t.Errorf("terminal output %q, want %q", got, want.String())
			}
		})
	}
}

// TestTTYLargeOutput sends 1 MiB through a terminal in one go and checks it
// arrives whole and in order. The terminal turns each "\n" into "\r\n".
func TestTTYLargeOutput(t *testing.T) {
	h := requireHarness(t)
	const size = 1 << 20
	var seq strings.Builder
	for i := 1; seq.Len() < size; i++ {
		seq.WriteString(strconv.Itoa(i) + "\n")
	}
	want := strings.ReplaceAll(seq.String()[:size], "\n", "\r\n")
	for _, kind := range procKinds {
		t.Run(kind, func(t *testing.T) {
			out := newOutputBuffer()
			p := h.startProc(t, kind, cio.NewCreator(cio.WithStreams(nil, out, nil), cio.WithTerminal), true,
				"sh", "-c", fmt.Sprintf("seq 1 1000000 | head -c %d", size))
			p.end(t, 0)
			if got := out.String(); got != want {
				t.Errorf("terminal output: %s", diffSummary(got, want))
			}
		})
	}
}

// diffSummary describes how got differs from want without printing
// megabytes.
func diffSummary(got, want string) string {
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	clip := func(s string, from int) string {
		from = max(0, from)
		return s[from:min(len(s), from+40)]
	}
	return fmt.Sprintf("%d bytes, want %d; first difference at offset %d: got %q, want %q",
		len(got), len(want), i, clip(got, i-10), clip(want, i-10))
}

// TestStdinClose runs cat with stdin from the client: CloseIO must end its
// stdin, so that cat sees EOF and exits 0.
func TestStdinClose(t *testing.T) {
	h := requireHarness(t)
	const line = "hello\n"
	tests := []struct {
		name string
		// stdin returns the reader the client copies to the process.
		stdin func(t *testing.T) io.Reader
		// runcSkip, when set, is why containerd's runc shim does not pass.
		runcSkip string
	}{
		{
			// What ctr and containerd's own tests do: the client's
			// stdin ends, then CloseIO.
			name:  "reader ends, then CloseIO",
			stdin: func(t *testing.T) io.Reader { return strings.NewReader(line) },
		},
		{
			name: "CloseIO while the client holds stdin open",
			stdin: func(t *testing.T) io.Reader {
				r, w := io.Pipe()
				t.Cleanup(func() { w.Close() })
				go io.WriteString(w, line) // returns once the client copied it
				return r
			},
			runcSkip: "containerd's runc shim holds a writer of the stdin FIFO itself; CloseIO closes that one, and the process sees EOF only once the client closed its writer too",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if h.runtime == runtimeRunc && tc.runcSkip != "" {
				t.Skip(tc.runcSkip)
			}
			for _, kind := range procKinds {
				t.Run(kind, func(t *testing.T) {
					out := newOutputBuffer()
					p := h.startProc(t, kind, cio.NewCreator(cio.WithStreams(tc.stdin(t), out, out)), false, "cat")
					out.waitFor(t, line, exitTimeout)
					if err := p.closeStdin(nsContext(t, defaultNamespace, opTimeout)); err != nil {
						t.Fatalf("close stdin of %s: %v", kind, err)
					}
					p.end(t, 0)
					if got := out.String(); got != line {
						t.Errorf("cat output %q, want %q", got, line)
					}
				})
			}
		})
	}
}

// TestStdinSurvivesDetach detaches the client from a process that waits
// for a line on stdin, attaches again and sends the line: a client going
// away (ctr run -d, ctr task attach, a containerd restart) is not EOF for
// the process, only CloseIO is.
func TestStdinSurvivesDetach(t *testing.T) {
	h := requireHarness(t)
	for _, kind := range procKinds {
		t.Run(kind, func(t *testing.T) {
			stdinR, stdinW := io.Pipe()
			t.Cleanup(func() { stdinW.Close() })
			// The process ends only on a second line, so that it outlives
			// the opening of the second client's FIFOs: an attach returns
			// before the client has opened them, and an open of an output
			// FIFO that the shim has already closed (the output ended)
			// waits for a writer for good.
			p := h.startProc(t, kind, cio.NewCreator(cio.WithStreams(stdinR, io.Discard, io.Discard)), false,
				"sh", "-c", "read x; echo got:$x; echo read >&2; read y")
			// Detach: the client closes its ends of the FIFOs, which stay
			// in place for the next client.
			p.io().Cancel()
			stdinW.Close()

			inR, inW := io.Pipe()
			t.Cleanup(func() { inW.Close() })
			out := newOutputBuffer()
			ctx := nsContext(t, defaultNamespace, opTimeout)
			if err := p.attach(ctx, cio.NewAttach(cio.WithStreams(inR, out, out))); err != nil {
				t.Fatalf("attach to %s again: %v", kind, err)
			}
			// Blocks while nobody reads the FIFO: not waited for.
			go io.WriteString(inW, "hello\n")
			// The process reads the line, or EOF at once if stdin ended
			// when the first client detached. Its output on both streams
			// has reached the client: the client has opened both FIFOs.
			out.waitFor(t, "got:", ioTimeout)
			out.waitFor(t, "read", ioTimeout)
			go io.WriteString(inW, "bye\n")
			p.end(t, 0)
			if got := out.String(); got != "got:hello\nread\n" && got != "read\ngot:hello\n" {
				t.Errorf("output after attaching again %q, want got:hello and read: the process read EOF when the first client detached", got)
			}
		})
	}
}

// loggerSource is a binary:// logger as containerd defines them: the
// process's stdout on fd 3, its stderr on fd 4, and fd 5 to close once
// ready. It ignores SIGTERM and ends when both streams have. It copies them into PREFIX.stdout and PREFIX.stderr (PREFIX follows
// the argument "out", from the URI's query), writes its CONTAINER_ID and
// CONTAINER_NAMESPACE to PREFIX.env, and renames PREFIX.done.tmp to
// PREFIX.done once both streams ended; PREFIX.done holds the errors met.
// With the argument "ready" "byte" it writes a byte to fd 5 before closing
// it, as a binary-v2:// logger must; with "ready" "byte-open" it writes the
// byte and closes fd 5 only once both streams have ended; with "ready"
// "late-none" it closes fd 5 without the byte after half a second. With
// "quit" "now" it exits once ready, reading nothing.
const loggerSource = `package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	// containerd's runc shim sends SIGTERM when it closes the streams; the
	// streams end then anyway, and the copies must finish.
	signal.Ignore(syscall.SIGTERM)
	prefix, readyByte, keepReady, late, quit := "", false, false, false, false
	for i := 1; i+1 < len(os.Args); i++ {
		switch os.Args[i] {
		case "out":
			prefix = os.Args[i+1]
		case "ready":
			readyByte = os.Args[i+1] == "byte" || os.Args[i+1] == "byte-open"
			keepReady = os.Args[i+1] == "byte-open"
			late = os.Args[i+1] == "late-none"
		case "quit":
			quit = os.Args[i+1] == "now"
		}
	}
	if prefix == "" {
		fmt.Fprintf(os.Stderr, "no out argument in %q\n", os.Args)
		os.Exit(2)
	}
	var mu sync.Mutex
	var errs []string
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err.Error())
		mu.Unlock()
	}
	env := fmt.Sprintf("CONTAINER_ID=%s\nCONTAINER_NAMESPACE=%s\n", os.Getenv("CONTAINER_ID"), os.Getenv("CONTAINER_NAMESPACE"))
	if err := os.WriteFile(prefix+".env", []byte(env), 0o644); err != nil {
		fail(err)
	}
	var wg sync.WaitGroup
	for _, s := range []struct {
		fd     uintptr
		suffix string
	}{{3, ".stdout"}, {4, ".stderr"}} {
		src := os.NewFile(s.fd, s.suffix)
		dst, err := os.Create(prefix + s.suffix)
		if err != nil {
			fail(err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := io.Copy(dst, src); err != nil {
				fail(fmt.Errorf("fd %d: %w", s.fd, err))
			}
			if err := dst.Close(); err != nil {
				fail(err)
			}
		}()
	}
	ready := os.NewFile(5, "ready")
	if late {
		time.Sleep(500 * time.Millisecond)
	}
	if readyByte {
		if _, err := ready.Write([]byte{1}); err != nil {
			fail(fmt.Errorf("write fd 5: %w", err))
		}
	}
	if !keepReady {
		if err := ready.Close(); err != nil {
			fail(fmt.Errorf("close fd 5: %w", err))
		}
	}
	if quit {
		os.Exit(0)
	}
	wg.Wait()
	if err := os.WriteFile(prefix+".done.tmp", []byte(strings.Join(errs, "\n")), 0o644); err != nil {
		os.Exit(1)
	}
	if err := os.Rename(prefix+".done.tmp", prefix+".done"); err != nil {
		os.Exit(1)
	}
}
`

// buildLogger builds loggerSource as a static binary in a temporary
// directory and returns its path. It skips t without a Go toolchain.
func buildLogger(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go in PATH to build the binary:// logger")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(loggerSource), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "logger")
	ctx, cancel := context.WithTimeout(context.Background(), shimBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off", "GO111MODULE=on")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the logger: %v\n%s", err, out)
	}
	return bin
}

// waitFile waits until path exists.
func waitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %v", path, timeout)
		}
		<-tick.C
	}
}

// TestStdioKinds runs a process writing one line to stdout and one to
// stderr under each kind of output target containerd knows, as init and as
// exec, and checks what arrived where.
func TestStdioKinds(t *testing.T) {
	h := requireHarness(t)
	const wantCode = 5
	args := []string{"sh", "-c", "echo out; echo err >&2; exit 5"}
	logger := ""
	tests := []struct {
		name string
		// setup returns the creator and a check of the output, run once the
		// process is deleted.
		setup func(t *testing.T, kind string) (cio.Creator, func(t *testing.T, containerID string))
	}{
		{
			name: "fifo",
			setup: func(t *testing.T, kind string) (cio.Creator, func(*testing.T, string)) {
				stdout, stderr := newOutputBuffer(), newOutputBuffer()
				return cio.NewCreator(cio.WithStreams(nil, stdout, stderr)), func(t *testing.T, _ string) {
					if stdout.String() != "out\n" || stderr.String() != "err\n" {
						t.Errorf("stdout %q, stderr %q; want \"out\\n\", \"err\\n\"", stdout.String(), stderr.String())
					}
				}
			},
		},
		{
			name: "file",
			setup: func(t *testing.T, kind string) (cio.Creator, func(*testing.T, string)) {
				path := filepath.Join(t.TempDir(), "logs", "out.log")
				return cio.LogFile(path), func(t *testing.T, _ string) {
					data, err := os.ReadFile(path)
					if err != nil {
						t.Fatalf("log file: %v", err)
					}
					if got := sortedLines(string(data)); !slices.Equal(got, []string{"err", "out"}) {
						t.Errorf("log file holds %q, want the lines out and err", data)
					}
				}
			},
		},
		{
			name: "binary",
			setup: func(t *testing.T, kind string) (cio.Creator, func(*testing.T, string)) {
				if logger == "" {
					t.Fatal("no logger built")
				}
				prefix := filepath.Join(t.TempDir(), "log")
				return cio.BinaryIO(logger, map[string]string{"out": prefix}), func(t *testing.T, id string) {
					// The logger ends by itself once the process's output
					// is closed.
					if err := waitFile(prefix+".done", exitTimeout); err != nil {
						t.Fatalf("logger did not finish: %v", err)
					}
					read := func(suffix string) string {
						data, err := os.ReadFile(prefix + suffix)
						if err != nil {
							t.Error(err)
						}
						return string(data)
					}
					if errs := read(".done"); errs != "" {
						t.Errorf("logger errors: %s", errs)
					}
					if out, errOut := read(".stdout"), read(".stderr"); out != "out\n" || errOut != "err\n" {
						t.Errorf("logger got stdout %q on fd 3 and stderr %q on fd 4; want \"out\\n\", \"err\\n\"", out, errOut)
					}
					env := read(".env")
					if !strings.Contains(env, "CONTAINER_NAMESPACE="+defaultNamespace+"\n") {
						t.Errorf("logger environment %q, want CONTAINER_NAMESPACE=%s", env, defaultNamespace)
					}
					wantIDs := []string{"CONTAINER_ID=" + id + "\n"}
					if kind == "exec" {
						// containerd's runc shim names the exec process.
						wantIDs = append(wantIDs, "CONTAINER_ID=proc\n")
					}
					if !slices.ContainsFunc(wantIDs, func(s string) bool { return strings.Contains(env, s) }) {
						t.Errorf("logger environment %q, want one of %q", env, wantIDs)
					}
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "binary" && logger == "" {
				logger = buildLogger(t)
			}
			for _, kind := range procKinds {
				t.Run(kind, func(t *testing.T) {
					ioc, check := tc.setup(t, kind)
					p := h.startProc(t, kind, ioc, false, args...)
					p.end(t, wantCode)
					check(t, p.containerID)
				})
			}
		})
	}
}

// TestTerminalToLogger runs a process with a terminal whose output goes to
// a binary:// logger (cio.TerminalBinaryIO, as `nerdctl run -d -t` logs it),
// as init and as exec: the terminal's output, one stream, reaches the
// logger's fd 3.
func TestTerminalToLogger(t *testing.T) {
	h := requireHarness(t)
	logger := buildLogger(t)
	h.sideBySide(t, func(t *testing.T, rt string) {
		for _, kind := range procKinds {
			t.Run(kind, func(t *testing.T) {
				prefix := filepath.Join(t.TempDir(), "log")
				ioc := cio.TerminalBinaryIO(logger, map[string]string{"out": prefix})
				p := h.startProcOn(t, rt, kind, ioc, true, "sh", "-c", "echo out; echo err >&2; exit 5")
				p.end(t, 5)
				const want = "out\r\nerr\r\n" // the terminal's line ends
				if err := waitContent(prefix+".stdout", want, exitTimeout); err != nil {
					t.Fatalf("logger's fd 3: %v", err)
				}
				err := waitFile(prefix+".done", exitTimeout)
				if rt == runtimeRunc {
					// containerd's runc shim keeps the write end of fd 4
					// until its collector closes it.
					t.Logf("%s: the logger's end: %v", rt, err)
					return
				}
				if err != nil {
					t.Fatalf("logger did not finish: %v", err)
				}
				for suffix, want := range map[string]string{".done": "", ".stderr": ""} {
					if data, err := os.ReadFile(prefix + suffix); err != nil || string(data) != want {
						t.Errorf("logger's %s: %q, %v; want %q", suffix, data, err, want)
					}
				}
			})
		}
		// A logger that goes away costs the terminal's output, not the
		// process: it writes far more than a terminal holds, and ends.
		t.Run("logger gone", func(t *testing.T) {
			ioc := cio.TerminalBinaryIO(logger, map[string]string{"out": filepath.Join(t.TempDir(), "log"), "quit": "now"})
			p := h.startProcOn(t, rt, "init", ioc, true, "sh", "-c", "sleep 0.5; yes | head -c 1000000; exit 3")
			if rt == runtimeRunc {
				// It stops reading the terminal: the process blocks.
				code, err := exitCode(p.exitC, 3*time.Second)
				t.Logf("%s: the process's exit: %d, %v", rt, code, err)
				return
			}
			code, err := exitCode(p.exitC, exitTimeout)
			if err != nil || code != 3 {
				t.Fatalf("the process's exit: %d, %v; want 3", code, err)
			}
			if code := p.finish(t); code != 3 {
				t.Errorf("Delete reported exit status %d, want 3", code)
			}
		})
		// A terminal exec whose logger fails fails, and leaves no process
		// behind, here one that ignores the hang-up: the logger says so
		// only after half a second, long after the process's start.
		t.Run("exec, logger failed", func(t *testing.T) {
			c := h.startHost(t, rt, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
			ctx := c.ctx(t, execTimeout)
			u, err := cio.LogURIGenerator("binary-v2", logger, map[string]string{"out": filepath.Join(t.TempDir(), "log"), "ready": "late-none"})
			if err != nil {
				t.Fatal(err)
			}
			ioc := cio.TerminalLogURI(u)
			_, _, err = c.startExec(ctx, c.base(), "nolog", c.execSpec(true, "sh", "-c", "trap '' HUP; sleep 3007"), ioc)
			if err == nil {
				t.Fatal("exec started with a logger that does not exist")
			}
			pids, perr := c.task.Pids(ctx)
			if perr != nil {
				t.Fatal(perr)
			}
			if rt == runtimeRunc {
				t.Logf("%s: %v; %d processes in the container", rt, err, len(pids))
				return
			}
			if len(pids) != 1 {
				t.Errorf("%d processes in the container after the failed exec (%v), want the init alone", len(pids), err)
			}
		})
	})
}

// TestLoggerReadyByte: a binary-v2:// logger (containerd >= 2.2) is ready
// once it has written a byte to fd 5; one that closes fd 5 without it is
// taken as failed, and so is the task's creation.
func TestLoggerReadyByte(t *testing.T) {
	h := requireHarness(t)
	logger := buildLogger(t)
	uri := func(t *testing.T, args map[string]string) cio.Creator {
		u, err := cio.LogURIGenerator("binary-v2", logger, args)
		if err != nil {
			t.Fatal(err)
		}
		return cio.LogURI(u)
	}
	h.sideBySide(t, func(t *testing.T, rt string) {
		// "byte-open": the byte alone says ready; fd 5 stays open for the
		// logger's life.
		for _, ready := range []string{"byte", "byte-open"} {
			t.Run("ready "+ready, func(t *testing.T) {
				prefix := filepath.Join(t.TempDir(), "log")
				ioc := uri(t, map[string]string{"out": prefix, "ready": ready})
				p := h.startProcOn(t, rt, "init", ioc, false, "sh", "-c", "echo out; echo err >&2; exit 5")
				p.end(t, 5)
				if err := waitFile(prefix+".done", exitTimeout); err != nil {
					t.Fatalf("logger did not finish: %v", err)
				}
				for suffix, want := range map[string]string{".done": "", ".stdout": "out\n", ".stderr": "err\n"} {
					if data, err := os.ReadFile(prefix + suffix); err != nil || string(data) != want {
						t.Errorf("logger's %s: %q, %v; want %q", suffix, data, err, want)
					}
				}
			})
		}
		t.Run("no ready byte", func(t *testing.T) {
			prefix := filepath.Join(t.TempDir(), "log")
			c := h.newContainer(t, rt, newID(t), oci.WithProcessArgs(sleeper...))
			task, cerr := c.container.NewTask(c.ctx(t, opTimeout), uri(t, map[string]string{"out": prefix}))
			if cerr == nil {
				c.task = task
				t.Fatal("task created with a binary-v2 logger that never said it was ready")
			}
			// The logger ran (it writes its environment before fd 5): the
			// creation failed on its readiness, not on the scheme.
			if err := waitFile(prefix+".env", exitTimeout); err != nil {
				t.Errorf("the creation failed (%v), and not on the logger's readiness: %v", cerr, err)
			}
			t.Logf("%s: %v", rt, cerr)
		})
	})
}

// waitContent waits until the file at path holds want, and says what it
// held when it does not within timeout.
func waitContent(path, want string, timeout time.Duration) error {
	var (
		data []byte
		err  error
	)
	if pollUntil(timeout, func() bool {
		data, err = os.ReadFile(path)
		return err == nil && string(data) == want
	}) {
		return nil
	}
	return fmt.Errorf("%s holds %q (%v) after %v, want %q", path, data, err, timeout, want)
}

// TestNoStdio runs processes without any stdio (cio.NullIO, `ctr run
// --null-io`): creating and starting them must not wait for the process to
// end.
func TestNoStdio(t *testing.T) {
	h := requireHarness(t)
	const startBound = 10 * time.Second
	t.Run("init", func(t *testing.T) {
		h.ensureImage(t, defaultNamespace)
		id := newID(t)
		ctx := nsContext(t, defaultNamespace, opTimeout)
		image, err := h.client.GetImage(ctx, imageRef)
		if err != nil {
			t.Fatal(err)
		}
		container, err := h.client.NewContainer(ctx, id,
			client.WithImage(image),
			client.WithSnapshotter(h.snapshotter),
			client.WithNewSnapshot(id+"-snapshot", image),
			client.WithRuntime(h.runtime, nil),
			client.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(sleeper...)),
		)
		if err != nil {
			t.Fatal(err)
		}
		c := &execHost{h: h, ns: defaultNamespace, id: id, container: container}
		t.Cleanup(func() { c.cleanup(t) })
		cctx, cancel := context.WithTimeout(ctx, startBound)
		defer cancel()
		if c.task, err = container.NewTask(cctx, cio.NullIO); err != nil {
			// The runtime may still be stuck with a created container:
			// remove it so that it does not outlive the test.
			t.Cleanup(func() { forceDeleteRunc(t, defaultNamespace, id) })
			t.Fatalf("create a task without stdio: %v (not done within %v)", err, startBound)
		}
		exitC, err := c.task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.exitC = exitC
		if err := c.task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		c.kill(t, syscall.SIGKILL)
		if code := c.waitInit(t); code != 137 {
			t.Errorf("init exit status %d, want 137", code)
		}
		c.delete(t)
	})
	t.Run("exec", func(t *testing.T) {
		c := h.startHost(t, h.runtime, newID(t), discardIO(), oci.WithProcessArgs(sleeper...))
		wctx, cancel := context.WithCancel(c.base())
		t.Cleanup(cancel)
		sctx, scancel := context.WithTimeout(c.base(), startBound)
		defer scancel()
		p, exitC, err := c.startExec(sctx, wctx, "quiet", c.execSpec(false, sleeper...), cio.NullIO)
		if err != nil {
			t.Fatalf("exec without stdio: %v (not started within %v)", err, startBound)
		}
		ctx := c.ctx(t, opTimeout)
		if err := p.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code, err := exitCode(exitC, exitTimeout); err != nil || code != 137 {
			t.Errorf("exec status %d, %v; want 137", code, err)
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Error(err)
		}
		c.delete(t)
	})
}

// forceDeleteRunc removes container id from runc's state (killing its
// process), for a runtime that left it behind.
func forceDeleteRunc(t *testing.T, ns, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "runc", "--root", filepath.Join(runcRoot, ns), "delete", "--force", id).CombinedOutput()
	if err != nil {
		t.Logf("runc delete --force %s: %v: %s", id, err, out)
	}
}

// TestTTYStdinNotReadCloses: a client writes 256 KiB of lines into the stdin
// of a terminal process that reads none. The terminal's input fills and a
// write to its master waits for room that never comes. CloseIO, the kill
// and the delete still each return within their bounds (both runtimes).
func TestTTYStdinNotReadCloses(t *testing.T) {
	h := requireHarness(t)
	for _, rt := range []string{runtimeMine, runtimeRunc} {
		t.Run(rt, func(t *testing.T) {
			h.requireShim(t, rt)
			stdinR, stdinW := io.Pipe()
			t.Cleanup(func() { stdinW.Close() })
			ioc := cio.NewCreator(cio.WithStreams(stdinR, io.Discard, nil), cio.WithTerminal)
			c := h.startHost(t, rt, newID(t), ioc, oci.WithTTY, oci.WithProcessArgs("sleep", "1000"))
			line := []byte(strings.Repeat("x", 63) + "\n")
			go func() {
				for range (256 << 10) / len(line) {
					if _, err := stdinW.Write(line); err != nil {
						return
					}
				}
			}()
			time.Sleep(time.Second) // the terminal's input fills meanwhile
			timed := func(what string, bound time.Duration, f func(ctx context.Context) error) {
				t.Helper()
				begin := time.Now()
				err := f(c.ctx(t, opTimeout))
				took := time.Since(begin)
				t.Logf("%s: %s, %v", what, took.Round(time.Millisecond), err)
				if took > bound {
					t.Errorf("%s took %s, more than %s", what, took.Round(time.Millisecond), bound)
				}
			}
			timed("CloseIO", 10*time.Second, func(ctx context.Context) error {
				return c.task.CloseIO(ctx, client.WithStdinCloser)
			})
			timed("kill", 5*time.Second, func(ctx context.Context) error {
				return c.task.Kill(ctx, syscall.SIGKILL)
			})
			if code := c.waitInit(t); code != 137 {
				t.Errorf("exit status %d, want 137", code)
			}
			timed("delete", 15*time.Second, func(ctx context.Context) error {
				_, err := c.task.Delete(ctx)
				return err
			})
		})
	}
}

// TestTTYCloseIOSendsEOF: CloseIO of a terminal process sends it EOF (^D in
// canonical mode): cat reading the terminal ends. (containerd's runc shim
// closes the stdin FIFO only, and a terminal process never sees EOF.)
func TestTTYCloseIOSendsEOF(t *testing.T) {
	h := requireHarness(t)
	for _, kind := range procKinds {
		t.Run(kind, func(t *testing.T) {
			stdinR, stdinW := io.Pipe()
			out := newOutputBuffer()
			p := h.startProc(t, kind, cio.NewCreator(cio.WithStreams(stdinR, out, nil), cio.WithTerminal), true,
				"sh", "-c", "cat >/dev/null; echo cat-ended")
			if _, err := stdinW.Write([]byte("hello\n")); err != nil {
				t.Fatal(err)
			}
			out.waitFor(t, "hello", ioTimeout) // the terminal's echo: cat reads
			stdinW.Close()
			if err := p.closeStdin(nsContext(t, defaultNamespace, opTimeout)); err != nil {
				t.Fatalf("CloseIO: %v", err)
			}
			out.waitFor(t, "cat-ended", ioTimeout)
			p.end(t, 0)
		})
	}
}
