package minimgr

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// LoggerArg is the first argument of minimgr run as the binary:// logger of
// a process: `MINIMGR LoggerArg LOGFILE`, with the process's stdout as fd 3,
// its stderr as fd 4 and fd 5 to close once ready, as containerd's shims
// start loggers. A program that embeds Manager calls RunLogger when it is
// started so (cmd/minimgr does).
const LoggerArg = "minimgr-log"

// A terminal's log is named LOG.tty and holds its raw output. The raw log
// has no room for an EOF record: openIO makes LOG.tty.logging beside it,
// which the logger renames LOG.tty.end once the output has ended. A log
// with neither was written by the shim through file:// (minimgr before
// its logger took terminals), and was complete when the process exited.
const (
	terminalSuffix = ".tty"
	loggingSuffix  = ".logging"
	endSuffix      = ".end"
)

// Record is one line of a process's log: one line of output (with its
// newline) of one stream, and when the logger read it. A line longer than
// maxRecord is cut into several records. The last record a logger writes
// has EOF set: both streams are closed.
type Record struct {
	Log    string    `json:"log,omitempty"`
	Stream string    `json:"stream,omitempty"`
	Time   time.Time `json:"time"`
	EOF    bool      `json:"eof,omitempty"`
}

// Streams of a Record. A process with a terminal has one stream, logged
// raw (not as Records): StreamTerminal is how LogReader reports it.
const (
	StreamStdout   = "stdout"
	StreamStderr   = "stderr"
	StreamTerminal = "tty"
)

// maxRecord bounds the output bytes of one record.
const maxRecord = 16 * 1024

// loggerTarget is the binary:// target that makes the shim start bin as
// the logger of a process, writing to path.
func loggerTarget(bin, path string) string {
	u := url.URL{Scheme: "binary", Path: bin, RawQuery: url.Values{LoggerArg: {path}}.Encode()}
	return u.String()
}

// RunLogger is the logger: it reads fds 3 (stdout) and 4 (stderr) line by
// line and appends one JSON Record per line to path, until both end. It
// never stops reading: a record that cannot be written is dropped, so the
// process logged never blocks on its output. It returns the exit code.
//
// A path ending in ".tty" is a terminal's log: fd 3 is the terminal's
// output, appended raw, and fd 4 is only drained (containerd's runc shim
// holds its write end open until its collector closes it, so its end is
// not waited for).
func RunLogger(path string) int {
	if strings.HasSuffix(path, terminalSuffix) {
		return runTerminalLogger(path)
	}
	out, errs, f := startLogging(path)
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	write := func(r Record) {
		if f == nil {
			return
		}
		data, err := json.Marshal(r)
		if err != nil {
			return
		}
		mu.Lock()
		_, _ = f.Write(append(data, '\n'))
		mu.Unlock()
	}
	for _, s := range []struct {
		f    *os.File
		name string
	}{{out, StreamStdout}, {errs, StreamStderr}} {
		if s.f == nil {
			continue
		}
		wg.Go(func() {
			defer s.f.Close()
			br := bufio.NewReaderSize(s.f, maxRecord)
			for {
				line, err := br.ReadSlice('\n')
				if len(line) > 0 {
					write(Record{Log: string(line), Stream: s.name, Time: time.Now().UTC()})
				}
				if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
					return
				}
			}
		})
	}
	wg.Wait()
	write(Record{EOF: true, Time: time.Now().UTC()})
	if f != nil {
		f.Close()
	}
	return 0
}

// startLogging takes the logger's descriptors, opens the log at path and
// says the logger is ready (it closes fd 5). A log that cannot be opened is
// nil: the logger drains its input all the same, so that the process never
// blocks.
func startLogging(path string) (out, errs, log *os.File) {
	out, errs = os.NewFile(3, "stdout"), os.NewFile(4, "stderr")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if ready := os.NewFile(5, "ready"); ready != nil {
		ready.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "minimgr log: %v\n", err)
		return out, errs, nil
	}
	return out, errs, f
}

// runTerminalLogger appends what comes on fd 3 to path as it comes, then
// marks path's end before it closes the log: a follower woken by the close
// finds the mark.
func runTerminalLogger(path string) int {
	out, errs, f := startLogging(path)
	if errs != nil {
		go func() { _, _ = io.Copy(io.Discard, errs) }()
	}
	if out != nil {
		buf := make([]byte, 32*1024)
		for {
			n, rerr := out.Read(buf)
			if n > 0 && f != nil {
				if _, werr := f.Write(buf[:n]); werr != nil {
					fmt.Fprintf(os.Stderr, "minimgr log: %v\n", werr)
					f.Close()
					f = nil
				}
			}
			if rerr != nil {
				break
			}
		}
	}
	if err := os.Rename(path+loggingSuffix, path+endSuffix); err != nil {
		if err := os.WriteFile(path+endSuffix, nil, 0o600); err != nil {
			fmt.Fprintf(os.Stderr, "minimgr log: %v\n", err)
		}
	}
	if f != nil {
		f.Close()
	}
	return 0
}

// LogOptions select what ReadLog gives.
type LogOptions struct {
	// Follow keeps reading as the log grows, until the process's output
	// has ended (or ctx is done).
	Follow bool
	// Tail, when > 0, starts at the last Tail records.
	Tail int
	// FromEnd starts at the current end of the log (attach).
	FromEnd bool
}

// logFollowPoll bounds how long a follower sleeps between two looks at the
// log when inotify says nothing (a lost or merged event).
const logFollowPoll = 250 * time.Millisecond

// logFollower reads a growing log file. It waits for growth with inotify,
// bounded by logFollowPoll.
type logFollower struct {
	f      *os.File
	ino    int // inotify fd, -1 without
	closed chan struct{}
}

func openFollower(path string) (*logFollower, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("log %s: %w", path, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	lf := &logFollower{f: f, ino: -1, closed: make(chan struct{})}
	if fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err == nil {
		if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY|unix.IN_CLOSE_WRITE); err == nil {
			lf.ino = fd
		} else {
			unix.Close(fd)
		}
	}
	return lf, nil
}

// wait returns once the file may have grown, ctx is done or the bound passed.
func (lf *logFollower) wait(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	ms := int(logFollowPoll.Milliseconds())
	if lf.ino < 0 {
		t := time.NewTimer(logFollowPoll)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	fds := []unix.PollFd{{Fd: int32(lf.ino), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, ms); n > 0 {
		var buf [4096]byte
		_, _ = unix.Read(lf.ino, buf[:])
	}
}

func (lf *logFollower) close() {
	lf.f.Close()
	if lf.ino >= 0 {
		unix.Close(lf.ino)
	}
}

// endsWithEOF reports whether the last record of the log is the logger's
// EOF record.
func endsWithEOF(f *os.File) bool {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return false
	}
	buf := make([]byte, min(st.Size(), 256))
	if _, err := f.ReadAt(buf, st.Size()-int64(len(buf))); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	last := bytes.TrimRight(buf, "\n")
	if i := bytes.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	var r Record
	return json.Unmarshal(last, &r) == nil && r.EOF
}

// tailOffset returns the offset of the last n lines of f.
func tailOffset(f *os.File, n int) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if n <= 0 || size == 0 {
		return 0, nil
	}
	const chunk = 64 * 1024
	buf := make([]byte, chunk)
	pos := size
	seen := 0
	// A final newline ends the last line, it does not start one.
	skipLast := true
	for pos > 0 {
		start := max(pos-chunk, 0)
		b := buf[:pos-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			if skipLast && start+int64(i) == size-1 {
				continue
			}
			seen++
			if seen == n {
				return start + int64(i) + 1, nil
			}
		}
		skipLast = false
		pos = start
	}
	return 0, nil
}

// readLog reads the log at path (JSON Records, or raw output for a
// terminal) from the start, the last o.Tail records or its end, and hands
// each record to sink. With o.Follow it keeps reading until the logger's
// EOF record, or for a terminal its end mark; exited, when closed, says
// that the process has exited: a log whose end does not come within
// outputDrain after that is taken as complete. sink's error ends the read
// and is returned.
func readLog(ctx context.Context, path string, terminal bool, o LogOptions, exited <-chan struct{}, sink func(Record) error) error {
	lf, err := openFollower(path)
	if err != nil {
		return err
	}
	defer lf.close()
	var off int64
	switch {
	case o.FromEnd:
		off, err = lf.f.Seek(0, io.SeekEnd)
	case o.Tail > 0 && !terminal:
		n := o.Tail
		if endsWithEOF(lf.f) {
			n++ // the EOF record is no line of output
		}
		off, err = tailOffset(lf.f, n)
	}
	if err != nil {
		return err
	}
	if _, err := lf.f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(lf.f, 64*1024)
	var (
		partial  []byte
		drainEnd time.Time // once exited: when to stop waiting for the end
		complete bool      // the terminal's end mark was seen: read to the end once more
		buf      = make([]byte, 32*1024)
	)
	for {
		if terminal {
			n, err := br.Read(buf)
			if n > 0 {
				if serr := sink(Record{Log: string(buf[:n]), Stream: StreamTerminal}); serr != nil {
					return serr
				}
				continue
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		} else {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 && err == nil {
				if partial != nil {
					line = append(partial, line...)
					partial = nil
				}
				var r Record
				if jerr := json.Unmarshal(line, &r); jerr != nil {
					continue // not a record: skipped
				}
				if r.EOF {
					if o.Follow {
						return nil
					}
					continue
				}
				if serr := sink(r); serr != nil {
					return serr
				}
				continue
			}
			if len(line) > 0 {
				partial = append(partial, line...)
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		// At the current end of the log.
		if !o.Follow || ctx.Err() != nil || complete {
			return ctx.Err()
		}
		select {
		case <-exited:
			if terminal {
				switch terminalEnd(path) {
				case endMarked:
					// Marked after the last write: what was read
					// before the mark was looked for may not be all.
					complete = true
					continue
				case endAtExit:
					return nil
				}
			}
			if drainEnd.IsZero() {
				drainEnd = time.Now().Add(outputDrain)
			} else if time.Now().After(drainEnd) {
				return nil
			}
		default:
		}
		lf.wait(ctx)
	}
}

// How the end of a terminal's log is known.
const (
	endPending = iota // its logger has not marked it yet
	endMarked         // its logger has marked it
	endAtExit         // the shim wrote it: it ended with the process
)

// terminalEnd says where the terminal log at path stands. The logger
// renames one mark into the other, so one of them is there at any time
// for a log it writes; the pending mark is looked for first.
func terminalEnd(path string) int {
	if _, err := os.Stat(path + loggingSuffix); err == nil {
		return endPending
	}
	if _, err := os.Stat(path + endSuffix); err == nil {
		return endMarked
	}
	return endAtExit
}

// Logs writes the log of container id (or of its exec execID) to stdout and
// stderr, each record to its stream; with timestamps each line starts with
// its time (RFC 3339). With o.Follow it returns once the process's output
// has ended.
func (m *Manager) Logs(ctx context.Context, id, execID string, o LogOptions, timestamps bool, stdout, stderr io.Writer) error {
	dir, rec, err := m.load(id)
	if err != nil && !errors.Is(err, ErrShimDead) {
		return err
	}
	path := logPath(dir, execID)
	terminal := rec.Terminal
	if execID != "" {
		terminal = false
		if _, err := os.Stat(path); err != nil {
			if _, terr := os.Stat(path + ".tty"); terr == nil {
				path, terminal = path+".tty", true
			}
		}
	} else if terminal {
		path += ".tty"
	}
	if terminal && timestamps {
		return fmt.Errorf("--timestamps: the log of a terminal has none: %w", errdefs.ErrNotImplemented)
	}
	var exited chan struct{}
	if o.Follow {
		exited = make(chan struct{})
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			if execID == "" {
				_, _ = m.Wait(ctx, id)
			} else {
				_, _ = m.WaitExec(ctx, id, execID)
			}
			close(exited)
		}()
	}
	return readLog(ctx, path, terminal, o, exited, func(r Record) error {
		w := stdout
		if r.Stream == StreamStderr {
			w = stderr
		}
		s := r.Log
		if timestamps {
			s = r.Time.Format(time.RFC3339Nano) + " " + s
		}
		_, err := io.WriteString(w, s)
		return err
	})
}

// logPath is the log file of a process: io/init.log or io/exec-ID.log
// (with ".tty" appended for a terminal's raw output).
func logPath(dir, execID string) string {
	return dir + "/" + ioDir + "/" + ioName(execID) + ".log"
}
