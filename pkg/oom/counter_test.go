//go:build linux

package oom

import (
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParseCounter(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		key     string
		want    uint64
		wantOK  bool
		wantErr bool
	}{
		{name: "v2 memory.events", data: "low 0\nhigh 3\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n", key: "oom_kill", want: 2, wantOK: true},
		{name: "v1 memory.oom_control", data: "oom_kill_disable 0\nunder_oom 1\noom_kill 5\n", key: "oom_kill", want: 5, wantOK: true},
		{name: "prefix key not confused", data: "oom_kill_disable 1\noom 4\n", key: "oom_kill", wantOK: false},
		{name: "v1 before 4.13", data: "oom_kill_disable 0\nunder_oom 0\n", key: "oom_kill", wantOK: false},
		{name: "no trailing newline", data: "max 1\noom_kill 7", key: "oom_kill", want: 7, wantOK: true},
		{name: "leading zeros", data: "oom_kill 0000000012\n", key: "oom_kill", want: 12, wantOK: true},
		{name: "large", data: "oom_kill 18446744073709551615\n", key: "oom_kill", want: 1<<64 - 1, wantOK: true},
		{name: "empty file", data: "", key: "oom_kill", wantOK: false},
		{name: "no value", data: "oom_kill\n", key: "oom_kill", wantErr: true},
		{name: "not a number", data: "oom_kill x\n", key: "oom_kill", wantErr: true},
		{name: "negative", data: "oom_kill -1\n", key: "oom_kill", wantErr: true},
		{name: "other keys malformed", data: "weird\nmax x\noom_kill 1\n", key: "oom_kill", want: 1, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseCounter([]byte(tt.data), tt.key)
			if tt.wantErr {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("err = %v, want an invalid argument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("got (%d, %v), want (%d, %v)", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestAdvance(t *testing.T) {
	now := time.Unix(1000, 0)
	later := now.Add(pendingWindow)
	tests := []struct {
		name      string
		st        counterState
		r         reading
		signals   uint64
		legacy    bool
		wantKills uint64
		want      counterState
	}{
		{name: "v2 max event only", st: counterState{last: 3}, r: reading{counter: 3, ok: true}, want: counterState{last: 3}},
		{name: "v2 one kill", st: counterState{last: 3}, r: reading{counter: 4, ok: true}, wantKills: 1, want: counterState{last: 4}},
		{name: "v2 group kill of three", st: counterState{last: 0}, r: reading{counter: 3, ok: true}, wantKills: 3, want: counterState{last: 3}},
		{name: "counter went down", st: counterState{last: 9}, r: reading{counter: 1, ok: true}, want: counterState{last: 1}},
		{name: "unreadable keeps state", st: counterState{last: 2}, r: reading{}, want: counterState{last: 2}},
		{name: "gone", st: counterState{last: 2, pendingUntil: later, waiting: 1}, r: reading{gone: true}, signals: 1, want: counterState{last: 2}},
		{name: "v1 signal with kill", st: counterState{last: 0}, r: reading{counter: 1, ok: true}, signals: 1, wantKills: 1, want: counterState{last: 1}},
		{name: "v1 signal before kill", st: counterState{last: 0}, r: reading{counter: 0, ok: true}, signals: 1, want: counterState{last: 0, pendingUntil: later, waiting: 1}},
		{name: "v1 pending then kill", st: counterState{last: 0, pendingUntil: later, waiting: 1}, r: reading{counter: 1, ok: true}, wantKills: 1, want: counterState{last: 1}},
		{name: "v1 pending still waiting", st: counterState{last: 0, pendingUntil: later, waiting: 1}, r: reading{counter: 0, ok: true}, want: counterState{last: 0, pendingUntil: later, waiting: 1}},
		{name: "v1 pending expired", st: counterState{last: 0, pendingUntil: now, waiting: 1}, r: reading{counter: 0, ok: true}, want: counterState{last: 0}},
		{name: "v1 unreadable signal waits", st: counterState{last: 0}, r: reading{}, signals: 1, want: counterState{last: 0, pendingUntil: later, waiting: 1}},
		// Two OOMs signalled before one reading, the first one's kill
		// counted: the second's is still to come, with no signal of its own.
		{name: "v1 two signals one kill", st: counterState{last: 0}, r: reading{counter: 1, ok: true}, signals: 2, wantKills: 1, want: counterState{last: 1, pendingUntil: later, waiting: 1}},
		{name: "v1 second kill comes", st: counterState{last: 1, pendingUntil: later, waiting: 1}, r: reading{counter: 2, ok: true}, wantKills: 1, want: counterState{last: 2}},
		{name: "v1 one signal two kills", st: counterState{last: 0}, r: reading{counter: 2, ok: true}, signals: 1, wantKills: 2, want: counterState{last: 2}},
		{name: "v1 new signal while pending", st: counterState{last: 0, pendingUntil: now, waiting: 1}, r: reading{counter: 0, ok: true}, signals: 1, want: counterState{last: 0, pendingUntil: later, waiting: 2}},
		{name: "v1 kill without a signal while waiting", st: counterState{last: 0, pendingUntil: later, waiting: 2}, r: reading{counter: 1, ok: true}, wantKills: 1, want: counterState{last: 1, pendingUntil: later, waiting: 1}},
		{name: "v1 counter down while waiting", st: counterState{last: 5, pendingUntil: later, waiting: 1}, r: reading{counter: 0, ok: true}, want: counterState{last: 0, pendingUntil: later, waiting: 1}},
		{name: "v1 window over with a kill short", st: counterState{last: 0, pendingUntil: now, waiting: 2}, r: reading{counter: 1, ok: true}, wantKills: 1, want: counterState{last: 1}},
		{name: "legacy v1 signals are kills", r: reading{}, signals: 2, legacy: true, wantKills: 2},
		{name: "legacy v1 removal", r: reading{gone: true}, signals: 1, legacy: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kills, got := advance(tt.st, tt.r, tt.signals, tt.legacy, now)
			if kills != tt.wantKills || !got.pendingUntil.Equal(tt.want.pendingUntil) || got.last != tt.want.last || got.waiting != tt.want.waiting {
				t.Fatalf("advance = %d, %+v; want %d, %+v", kills, got, tt.wantKills, tt.want)
			}
		})
	}
}
