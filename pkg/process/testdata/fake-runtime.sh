#!/bin/sh
# A stand-in OCI runtime for unit tests: records its argv in $FAKE_RUNTIME_LOG,
# runs `sleep` as the container's process, and fails the command named in
# $FAKE_RUNTIME_FAIL with a runc-style log.json error. $FAKE_RUNTIME_EXEC_BLOCK
# names a FIFO that exec reads before it starts its process,
# $FAKE_RUNTIME_EXEC_HOLD one it reads after (the process runs, the runtime
# has not returned), $FAKE_RUNTIME_START_HOLD one that start reads last,
# $FAKE_RUNTIME_CREATE_HOLD and $FAKE_RUNTIME_RESTORE_HOLD ones that create
# and restore read once the process exists;
# $FAKE_RUNTIME_DELETE_HOLD one that delete reads first, and
# $FAKE_RUNTIME_PAUSE_HOLD and $FAKE_RUNTIME_RESUME_HOLD ones that pause and
# resume read last;
# $FAKE_RUNTIME_DELETE_KEEPS makes delete leave the process alive;
# $FAKE_RUNTIME_EXIT_ON_START and $FAKE_RUNTIME_EXIT_ON_RESUME make start
# and resume kill the process and return once it has exited.
# Every process it starts is also listed in $FAKE_RUNTIME_PIDS, for the
# test's cleanup to end whatever is left.
echo "$*" >> "$FAKE_RUNTIME_LOG"
root=/tmp/fake-runtime
logfile=
while [ $# -gt 0 ]; do
	case "$1" in
	--root) root=$2; shift 2 ;;
	--log) logfile=$2; shift 2 ;;
	--log-format) shift 2 ;;
	--*) shift ;;
	*) break ;;
	esac
done
cmd=$1; shift
if [ "$cmd" = "$FAKE_RUNTIME_FAIL" ]; then
	[ -n "$logfile" ] && printf '{"level":"error","msg":"fake %s failed on purpose","time":"now"}\n' "$cmd" >> "$logfile"
	exit 1
fi
pidfile=
prev=
for a in "$@"; do
	[ "$prev" = "--pid-file" ] && pidfile=$a
	prev2=$prev; prev=$a
done
# The container id is the last argument; kill takes "id signal".
id=$prev
if [ "$cmd" = kill ]; then id=$prev2; sig=$prev; fi
case "$cmd" in
create)
	mkdir -p "$root/$id"
	sleep 1000 </dev/null >/dev/null 2>&1 &
	echo $! > "$pidfile"; echo $! > "$root/$id/pid"
	[ -z "$FAKE_RUNTIME_PIDS" ] || echo $! >> "$FAKE_RUNTIME_PIDS"
	[ -n "$FAKE_RUNTIME_CREATE_HOLD" ] && read _ < "$FAKE_RUNTIME_CREATE_HOLD"
	true ;;
start)
	[ -d "$root/$id" ] || exit 1
	if [ -n "$FAKE_RUNTIME_EXIT_ON_START" ]; then kill -9 "$(cat "$root/$id/pid")"; sleep 0.2; fi
	[ -n "$FAKE_RUNTIME_START_HOLD" ] && read _ < "$FAKE_RUNTIME_START_HOLD"
	true ;;
exec)
	[ -d "$root/$id" ] || exit 1
	[ -n "$FAKE_RUNTIME_EXEC_BLOCK" ] && read _ < "$FAKE_RUNTIME_EXEC_BLOCK"
	sleep 1000 </dev/null >/dev/null 2>&1 &
	echo $! > "$pidfile"; echo $! >> "$root/$id/execs"
	[ -z "$FAKE_RUNTIME_PIDS" ] || echo $! >> "$FAKE_RUNTIME_PIDS"
	[ -n "$FAKE_RUNTIME_EXEC_HOLD" ] && read _ < "$FAKE_RUNTIME_EXEC_HOLD"
	true ;;
kill)
	[ -f "$root/$id/pid" ] || exit 1
	kill -"$sig" "$(cat "$root/$id/pid")" 2>/dev/null || exit 1 ;;
delete)
	[ -n "$FAKE_RUNTIME_DELETE_HOLD" ] && read _ < "$FAKE_RUNTIME_DELETE_HOLD"
	if [ -f "$root/$id/pid" ] && [ -z "$FAKE_RUNTIME_DELETE_KEEPS" ]; then kill -9 "$(cat "$root/$id/pid")" 2>/dev/null; fi
	rm -rf "$root/$id" ;;
pause)
	[ -d "$root/$id" ] || exit 1
	[ -n "$FAKE_RUNTIME_PAUSE_HOLD" ] && read _ < "$FAKE_RUNTIME_PAUSE_HOLD"
	true ;;
resume)
	[ -d "$root/$id" ] || exit 1
	if [ -n "$FAKE_RUNTIME_EXIT_ON_RESUME" ]; then kill -9 "$(cat "$root/$id/pid")"; sleep 0.2; fi
	[ -n "$FAKE_RUNTIME_RESUME_HOLD" ] && read _ < "$FAKE_RUNTIME_RESUME_HOLD"
	true ;;
checkpoint)
	[ -d "$root/$id" ] || exit 1
	case " $* " in *" --leave-running "*) ;; *) kill -9 "$(cat "$root/$id/pid")" ;; esac ;;
restore)
	mkdir -p "$root/$id"
	sleep 1000 </dev/null >/dev/null 2>&1 &
	echo $! > "$pidfile"; echo $! > "$root/$id/pid"
	[ -z "$FAKE_RUNTIME_PIDS" ] || echo $! >> "$FAKE_RUNTIME_PIDS"
	[ -n "$FAKE_RUNTIME_RESTORE_HOLD" ] && read _ < "$FAKE_RUNTIME_RESTORE_HOLD"
	true ;;
state)
	[ -d "$root/$id" ] || exit 1
	st=stopped
	kill -0 "$(cat "$root/$id/pid" 2>/dev/null)" 2>/dev/null && st=running
	printf '{"id":"%s","pid":%s,"status":"%s","bundle":"","rootfs":"","created":"2026-01-01T00:00:00Z"}\n' "$id" "$(cat "$root/$id/pid")" "$st" ;;
ps)
	printf '[%s]\n' "$(cat "$root/$id/pid" 2>/dev/null)" ;;
*)
	exit 0 ;;
esac
