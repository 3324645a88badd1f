package stdio

import (
	"bytes"
	"testing"
	"time"
)

// signalWriter reports every write on got.
type signalWriter struct{ got chan int }

func (s signalWriter) Write(p []byte) (int, error) {
	s.got <- len(p)
	return len(p), nil
}

// BenchmarkOutputLine is a process that writes a line, then waits for it to
// be copied: each line finds the pipe empty. Without the idle poller the
// copy's goroutine waits in the runtime's poller; with it (the default) the
// same, until the pipe has been empty for parkAfter; parked on every line,
// each line costs a rearm, a wake-up and a new goroutine.
func BenchmarkOutputLine(b *testing.B) {
	line := append(bytes.Repeat([]byte("x"), 99), '\n')
	for _, bc := range []struct {
		name      string
		poller    bool
		parkAfter time.Duration
	}{{"idle-poller", true, defaultParkAfter}, {"parked-every-line", true, 0}, {"goroutine", false, 0}} {
		b.Run(bc.name, func(b *testing.B) {
			w, oc := pipeCopy(b)
			if !bc.poller {
				oc.poller = nil
			}
			oc.parkAfter = bc.parkAfter
			got := make(chan int, 1)
			oc.start(signalWriter{got}, nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(line); err != nil {
					b.Fatal(err)
				}
				for n := 0; n < len(line); n += <-got {
				}
			}
			w.Close()
			<-oc.done
		})
	}
}
