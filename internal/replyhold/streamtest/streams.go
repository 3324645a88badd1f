package streamtest

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Track records every allocation in the heap profile, so that Count sees
// every stream, and keeps one goroutine allocating: its collections
// delay the goroutine that reads a connection's requests, as a loaded node
// does, which opens ttrpc's window. The returned func undoes both.
func Track() (stop func()) {
	rate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var sink []byte
		for {
			select {
			case <-done:
				return
			default:
			}
			sink = make([]byte, 256<<10)
			_ = sink
		}
	})
	return func() {
		close(done)
		wg.Wait()
		runtime.MemProfileRate = rate
	}
}

// Count returns how many streams ttrpc's server connections hold recorded:
// the live objects of the heap profile that a connection's loop stored in
// its sync.Map of streams. Only the streams recorded under Track are all
// seen.
func Count() int {
	n := 0
	for _, r := range recorded() {
		n += int(r.InUseObjects())
	}
	return n
}

// Stacks describes where each stream Count counts was stored, for a test
// that fails.
func Stacks() string {
	var b strings.Builder
	for _, r := range recorded() {
		fmt.Fprintf(&b, "%d live:\n", r.InUseObjects())
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			fmt.Fprintf(&b, "\t%s (%s:%d)\n", f.Function, f.File, f.Line)
			if !more {
				break
			}
		}
	}
	return b.String()
}

// recorded returns the heap profile's records of live stream entries.
func recorded() []runtime.MemProfileRecord {
	runtime.GC()
	runtime.GC() // the profile is as of the last completed cycle
	var records []runtime.MemProfileRecord
	for {
		n, _ := runtime.MemProfile(nil, false)
		records = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(records, false); ok {
			records = records[:n]
			break
		}
	}
	var out []runtime.MemProfileRecord
	for _, r := range records {
		if r.InUseObjects() == 0 {
			continue
		}
		var site, storer string
		stored := false
		own := false // the runtime allocated it for itself (see below)
		mallocs := 0 // allocations on the stack before site
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			switch {
			case site == "" && f.Function == "runtime.mallocgc":
				mallocs++
				own = own || mallocs > 1
			case site == "" && runtimeOwn[f.Function]:
				own = true
			case site == "" && !strings.HasPrefix(f.Function, "runtime."):
				site = f.Function
			case stored && storer == "":
				storer = f.Function
			}
			stored = stored || f.Function == "sync.(*Map).Store"
			if !more {
				break
			}
		}
		// An entry, not the map's root node, stored by ttrpc's loop. An
		// object the runtime allocated for itself inside that allocation
		// (a sudog taken by the GC assist that the allocation paid, which
		// the runtime keeps cached for good) has the same site and is not
		// a stream.
		if !own && strings.Contains(site, "sync.newEntry") && strings.Contains(storer, "ttrpc.(*serverConn).run") {
			out = append(out, r)
		}
	}
	return out
}

// runtimeOwn are runtime functions that allocate for the runtime itself
// inside an allocation of the program's: a stack that has one above the
// program's first frame is not the program's object.
var runtimeOwn = map[string]bool{
	"runtime.gcAssistAlloc":      true,
	"runtime.deductAssistCredit": true,
	"runtime.gcStart":            true,
	"runtime.acquireSudog":       true,
}

// Settle counts until settled accepts the count, for 2 s at most, and
// returns the last count. A client has its reply before the server's loop
// forgets the stream, so a count taken at once may still hold streams
// about to go.
func Settle(settled func(count int) bool) int {
	n := Count()
	for deadline := time.Now().Add(2 * time.Second); !settled(n) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		n = Count()
	}
	return n
}

// Steady accepts a count once it has read the same three times in a row.
func Steady() func(int) bool {
	last, same := -1, 0
	return func(n int) bool {
		if n == last {
			same++
		} else {
			last, same = n, 1
		}
		return same >= 3
	}
}
