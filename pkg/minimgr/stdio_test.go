package minimgr

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseDetachKeys(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
		ok   bool
	}{
		{"ctrl-p,ctrl-q", []byte{0x10, 0x11}, true},
		{"ctrl-@,ctrl-_", []byte{0, 0x1f}, true},
		{"a,ctrl-A", []byte{'a', 1}, true},
		{"", nil, true},
		{"ctrl-1", nil, false},
		{"ab", nil, false},
	}
	for _, tc := range tests {
		got, err := ParseDetachKeys(tc.in)
		if (err == nil) != tc.ok || !bytes.Equal(got, tc.want) {
			t.Errorf("ParseDetachKeys(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestDetachReader(t *testing.T) {
	keys := []byte{0x10, 0x11}
	tests := []struct {
		name     string
		in       string
		want     string
		detached bool
	}{
		{"no keys", "hello\n", "hello\n", false},
		{"keys", "ab\x10\x11cd", "ab", true},
		{"first key alone", "a\x10b", "a\x10b", false},
		{"first key twice", "a\x10\x10\x11", "a\x10", true},
		{"first key at the end", "a\x10", "a\x10", false},
	}
	for _, tc := range tests {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			got, err := io.ReadAll(&detachReader{r: r, keys: keys})
			if string(got) != tc.want || errors.Is(err, errDetached) != tc.detached {
				t.Errorf("%s (one byte %v): %q, %v; want %q, detached %v", tc.name, oneByte, got, err, tc.want, tc.detached)
			}
		}
	}
}

func TestTailOffset(t *testing.T) {
	f, err := osCreateTemp(t, "a\nb\nc\n")
	if err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]int64{1: 4, 2: 2, 3: 0, 9: 0} {
		if got, err := tailOffset(f, n); err != nil || got != want {
			t.Errorf("tailOffset(%d) = %d, %v; want %d", n, got, err, want)
		}
	}
}

func osCreateTemp(t *testing.T, content string) (*os.File, error) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { f.Close() })
	_, err = f.WriteString(content)
	return f, err
}

// TestFollowTerminalLogToItsEnd: a terminal's log followed past the
// process's exit gives what its logger writes after the exit, up to the
// logger's end mark, and no more; a log without the logger's marks (written
// by the shim through file:// before the logger took terminals) ends with
// the exit.
func TestFollowTerminalLogToItsEnd(t *testing.T) {
	// What comes after the end is written well within outputDrain: a
	// follower that waited for the drain would read it too.
	const afterEnd = time.Second
	follow := func(t *testing.T, logger bool) string {
		path := filepath.Join(t.TempDir(), "init.log"+terminalSuffix)
		if err := os.WriteFile(path, []byte("before "), 0o600); err != nil {
			t.Fatal(err)
		}
		if logger {
			if err := os.WriteFile(path+loggingSuffix, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		appendLog := func(s string) error {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString(s)
			return errors.Join(err, f.Close())
		}
		exited := make(chan struct{})
		close(exited)
		late := make(chan error, 1)
		go func() {
			var err error
			if logger {
				time.Sleep(300 * time.Millisecond)
				err = errors.Join(appendLog("after"), os.Rename(path+loggingSuffix, path+endSuffix))
			}
			time.Sleep(afterEnd)
			late <- errors.Join(err, appendLog(" extra"))
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var got strings.Builder
		err := readLog(ctx, path, true, LogOptions{Follow: true}, exited, func(r Record) error {
			got.WriteString(r.Log)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := <-late; err != nil {
			t.Fatal(err)
		}
		return got.String()
	}
	if got, want := follow(t, true), "before after"; got != want {
		t.Errorf("the logger's log: followed %q, want %q", got, want)
	}
	if got, want := follow(t, false), "before "; got != want {
		t.Errorf("a log the shim wrote: followed %q, want %q", got, want)
	}
}

// The write end of a stdin FIFO is opened once the shim has opened its
// end, which may come a moment after the shim's answer; a FIFO nobody opens
// gives up after readerWait, and never blocks.
func TestOpenWriterWaitsBrieflyForTheReader(t *testing.T) {
	dir := t.TempDir()

	late := filepath.Join(dir, "late")
	if err := mkfifo(late); err != nil {
		t.Fatal(err)
	}
	opened := make(chan *os.File, 1)
	go func() {
		time.Sleep(readerWait / 5)
		r, err := os.OpenFile(late, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Error(err)
		}
		opened <- r
	}()
	fd, err := openWriter(late)
	if r := <-opened; r != nil {
		defer r.Close()
	}
	if err != nil {
		t.Fatalf("a reader that came after %s: %v", readerWait/5, err)
	}
	unix.Close(fd)

	none := filepath.Join(dir, "none")
	if err := mkfifo(none); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	fd, err = openWriter(none)
	took := time.Since(begin)
	if err == nil {
		unix.Close(fd)
		t.Fatal("opened a FIFO that has no reader")
	}
	if !errors.Is(err, unix.ENXIO) {
		t.Fatalf("no reader: %v, want ENXIO", err)
	}
	if took < readerWait || took > readerWait+5*time.Second {
		t.Errorf("gave up after %s, want about %s", took.Round(time.Millisecond), readerWait)
	}
}
