package process

import (
	"strings"
	"testing"
)

// Each ordering rule of the sequencer, as a sequence of inputs and the steps
// they must produce.
func TestSequencer(t *testing.T) {
	type in struct {
		op     string // begin, end, fail, exit, expire, resume, resumed, unresumed
		execID string
	}
	for _, tc := range []struct {
		name string
		ins  []in
		want string // steps, "kind:exec" joined by spaces; "|" separates inputs
	}{
		{
			name: "init start then exit: oom, exit.json, exit",
			ins:  []in{{"begin", ""}, {"end", ""}, {"exit", ""}},
			want: "| publish-start: | check-oom: save-exit: publish-exit:",
		},
		{
			name: "exit during start is held until the start event",
			ins:  []in{{"begin", ""}, {"exit", ""}, {"end", ""}},
			want: "| | publish-start: check-oom: save-exit: publish-exit:",
		},
		{
			name: "exit during a failed start is still published",
			ins:  []in{{"begin", ""}, {"exit", ""}, {"fail", ""}},
			want: "| | check-oom: save-exit: publish-exit:",
		},
		{
			name: "exec exit during its start is held",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"exit", "e1"}, {"end", "e1"}},
			want: "| publish-start: | | | publish-start:e1 check-oom:e1 publish-exit:e1",
		},
		{
			name: "init exit waits for the running exec, which is killed",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"exit", ""}, {"exit", "e1"}},
			want: "| publish-start: | | publish-start:e1 | kill-execs: arm-init-deadline: | check-oom:e1 publish-exit:e1 check-oom: save-exit: publish-exit:",
		},
		{
			name: "init exit waits for a starting exec, released when its start fails",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"exit", ""}, {"fail", "e1"}},
			want: "| publish-start: | | kill-execs: arm-init-deadline: | check-oom: save-exit: publish-exit:",
		},
		{
			name: "an exec that starts after the init exited is killed",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"exit", ""}, {"end", "e1"}, {"exit", "e1"}},
			want: "| publish-start: | | kill-execs: arm-init-deadline: | publish-start:e1 kill-execs: | check-oom:e1 publish-exit:e1 check-oom: save-exit: publish-exit:",
		},
		{
			name: "init exit after every exec of two",
			ins: []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"begin", "e2"}, {"end", "e2"},
				{"exit", ""}, {"exit", "e2"}, {"exit", "e1"}},
			want: "| publish-start: | | publish-start:e1 | | publish-start:e2 | kill-execs: arm-init-deadline: | check-oom:e2 publish-exit:e2 | check-oom:e1 publish-exit:e1 check-oom: save-exit: publish-exit:",
		},
		{
			name: "deadline releases the init's exit; the late exec exit still goes out",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"exit", ""}, {"expire", ""}, {"exit", "e1"}, {"expire", ""}},
			want: "| publish-start: | | publish-start:e1 | kill-execs: arm-init-deadline: | check-oom: save-exit: publish-exit: | check-oom:e1 publish-exit:e1 |",
		},
		{
			name: "an exec that exited before the init does not hold it",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"exit", "e1"}, {"exit", ""}},
			want: "| publish-start: | | publish-start:e1 | check-oom:e1 publish-exit:e1 | check-oom: save-exit: publish-exit:",
		},
		{
			name: "exit during a resume is held until the resumed event",
			ins:  []in{{"begin", ""}, {"end", ""}, {"resume", ""}, {"exit", ""}, {"resumed", ""}},
			want: "| publish-start: | | | publish-resumed: check-oom: save-exit: publish-exit:",
		},
		{
			name: "exec exit during a resume is held until the resumed event",
			ins:  []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"resume", ""}, {"exit", "e1"}, {"resumed", ""}},
			want: "| publish-start: | | publish-start:e1 | | | publish-resumed: check-oom:e1 publish-exit:e1",
		},
		{
			name: "exits of an exec and the init during a resume keep their order after the resumed event",
			ins: []in{{"begin", ""}, {"end", ""}, {"begin", "e1"}, {"end", "e1"}, {"resume", ""},
				{"exit", ""}, {"exit", "e1"}, {"resumed", ""}},
			want: "| publish-start: | | publish-start:e1 | | | | publish-resumed: kill-execs: arm-init-deadline: check-oom:e1 publish-exit:e1 check-oom: save-exit: publish-exit:",
		},
		{
			name: "exit during a failed resume is still published",
			ins:  []in{{"begin", ""}, {"end", ""}, {"resume", ""}, {"exit", ""}, {"unresumed", ""}},
			want: "| publish-start: | | | check-oom: save-exit: publish-exit:",
		},
		{
			name: "a resume without an exit",
			ins:  []in{{"begin", ""}, {"end", ""}, {"resume", ""}, {"resumed", ""}, {"exit", ""}},
			want: "| publish-start: | | publish-resumed: | check-oom: save-exit: publish-exit:",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSequencer()
			var out []string
			for _, i := range tc.ins {
				var steps []step
				switch i.op {
				case "begin":
					s.beginStart(i.execID)
				case "end":
					steps = s.endStart(i.execID, true)
				case "fail":
					steps = s.endStart(i.execID, false)
				case "exit":
					steps = s.exited(i.execID, Exit{Status: 1})
				case "expire":
					steps = s.expireInit()
				case "resume":
					s.beginResume()
				case "resumed":
					steps = s.endResume(true)
				case "unresumed":
					steps = s.endResume(false)
				}
				var words []string
				for _, st := range steps {
					words = append(words, st.kind.String()+":"+st.execID)
				}
				out = append(out, strings.Join(words, " "))
			}
			norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
			if got := norm(strings.Join(out, " | ")); got != norm(tc.want) {
				t.Fatalf("steps\n got  %s\n want %s", got, tc.want)
			}
		})
	}
}

func TestSequencerInitExited(t *testing.T) {
	s := newSequencer()
	s.beginStart("")
	s.endStart("", true)
	s.beginStart("e1")
	if s.initExited() {
		t.Fatal("init exited before its exit")
	}
	s.exited("", Exit{})
	if !s.initExited() {
		t.Fatal("held init exit not seen")
	}
}
