//go:build linux

package oom

import "testing"

func TestParseKmsgRecord(t *testing.T) {
	tests := []struct {
		name    string
		rec     string
		wantSeq uint64
		wantPID int
		wantOK  bool
	}{
		{
			name:    "memory cgroup victim (kernel 6.18)",
			rec:     "3,49870,17488556720,-;Memory cgroup out of memory: Killed process 23126 (sh) total-vm:29408kB, anon-rss:15488kB, file-rss:1392kB, shmem-rss:0kB, UID:0 pgtables:76kB oom_score_adj:0\n",
			wantSeq: 49870, wantPID: 23126, wantOK: true,
		},
		{
			name:    "global victim, with dictionary lines",
			rec:     "3,812,904255301,-,caller=T1;Out of memory: Killed process 4242 (hog) total-vm:1kB\n SUBSYSTEM=mem\n",
			wantSeq: 812, wantPID: 4242, wantOK: true,
		},
		{
			name:    "kernel 4.x victim",
			rec:     "3,77,100,-;Killed process 9021 (allocator) total-vm:1227484kB, anon-rss:15872kB, file-rss:0kB, shmem-rss:0kB\n",
			wantSeq: 77, wantPID: 9021, wantOK: true,
		},
		{
			name:    "summary line is not the victim record",
			rec:     "6,49869,17488556700,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,mems_allowed=0,oom_memcg=/a,task_memcg=/a,task=sh,pid=23126,uid=0\n",
			wantSeq: 49869,
		},
		{
			name:    "reaper",
			rec:     "6,49871,17488557000,-;oom_reaper: reaped process 23126 (sh), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n",
			wantSeq: 49871,
		},
		{
			name:    "written by a process (facility user)",
			rec:     "12,900,1,-;Memory cgroup out of memory: Killed process 23126 (sh)\n",
			wantSeq: 900,
		},
		{
			name:    "no pid",
			rec:     "3,901,1,-;Killed process  (sh)\n",
			wantSeq: 901,
		},
		{name: "no prefix", rec: "Killed process 1 (init)\n"},
		{name: "bad sequence", rec: "3,x,1,-;Killed process 1 (init)\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seq, pid, ok := parseKmsgRecord([]byte(tt.rec))
			if seq != tt.wantSeq || pid != tt.wantPID || ok != tt.wantOK {
				t.Errorf("parseKmsgRecord = %d, %d, %v; want %d, %d, %v", seq, pid, ok, tt.wantSeq, tt.wantPID, tt.wantOK)
			}
		})
	}
}

// TestKmsgVictimsBounded keeps the last kmsgVictims victims, in order.
func TestKmsgVictimsBounded(t *testing.T) {
	k := &kmsgLog{fd: -1}
	for i := 1; i <= kmsgVictims+10; i++ {
		k.remember(victim{seq: uint64(i), pid: 1000 + i})
	}
	if len(k.victims) != kmsgVictims {
		t.Fatalf("%d victims kept, want %d", len(k.victims), kmsgVictims)
	}
	if first := k.victims[0].seq; first != 11 {
		t.Fatalf("oldest kept victim has seq %d, want 11", first)
	}
	if !k.killedSince(1000+kmsgVictims+10, 0) || k.killedSince(1005, 0) {
		t.Fatal("killedSince does not match the kept victims")
	}
	if k.killedSince(1000+kmsgVictims+10, uint64(kmsgVictims+10)) {
		t.Fatal("killedSince found a victim at its mark")
	}
}
