#!/usr/bin/env bash
# Stop the sshd that env/ssh/start.sh started for STATE_DIR: only the PID it recorded, if it is still sshd.
#
#     sudo bash env/ssh/stop.sh STATE_DIR
#
# Connections it accepted end with it. The user and its home are kept (the next start reuses them).
set -euo pipefail
say() { echo "env/ssh/stop.sh: $*" >&2; }
[ $# -ge 1 ] || { say "usage: env/ssh/stop.sh STATE_DIR"; exit 1; }
STATE=$1
[ -s "$STATE/sshd.pid" ] || { say "nothing to stop (no $STATE/sshd.pid)"; exit 0; }
pid=$(cat "$STATE/sshd.pid")
if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    say "stopped sshd $pid"
else
    say "pid $pid is no longer this rig's sshd: nothing stopped"
fi
rm -f "$STATE/sshd.pid"
