#!/usr/bin/env bash
# Stop the single-node SLURM that env/slurm/start.sh started: only the PIDs it recorded.
#
#     sudo bash env/slurm/stop.sh
#
# Jobs still queued or running on the test cluster are cancelled first (through SLURM, so their
# processes end with them). Each daemon gets SIGTERM, then SIGKILL if it has not ended within its
# grace period. A killed daemon may linger as a zombie (nothing reaps it here): that counts as dead.
# Nothing is killed by name, and a recorded PID now running another program is left alone.
set -euo pipefail

# HPCSWEEP_SLURM_NODES=N (N > 1): a second, N-node cluster beside this one (env/slurm/multinode.sh)
if [ "${HPCSWEEP_SLURM_NODES:-1}" != 1 ]; then exec bash "$(dirname "$0")/multinode.sh" stop; fi

STATE=${HPCSWEEP_SLURM_STATE:-/var/lib/hpcsweep-slurm}
say() { echo "env/slurm/stop.sh: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "env/slurm/stop.sh: error: needs root: sudo bash env/slurm/stop.sh" >&2; exit 1; }

pid_of() { [ -s "$STATE/$1.pid" ] && cat "$STATE/$1.pid"; }

alive() {   # alive NAME PID: PID runs NAME's binary and is not a zombie
    local pid=$2
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "/usr/sbin/$1")" ]   # Debian: slurmctld -> slurmctld-wlm
}

# cancel what is still queued or running, so no job's processes outlive the cluster
if pid=$(pid_of slurmctld) && alive slurmctld "$pid"; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        scancel $jobs 2>/dev/null || true
        deadline=$(( $(date +%s) + 30 ))
        while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.3; done
    fi
fi

stop() {    # stop NAME GRACE_SECONDS
    local name=$1 grace=$2 pid deadline
    pid=$(pid_of "$name") || { say "$name: not started by start.sh"; return 0; }
    if alive "$name" "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + grace ))
        while alive "$name" "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
        if alive "$name" "$pid"; then
            say "$name (pid $pid) ignored SIGTERM for ${grace} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$name" "$pid"; do sleep 0.1; done
        fi
        say "$name (pid $pid) stopped"
    else
        say "$name (pid $pid) was not running"
    fi
    rm -f "$STATE/$name.pid"
}

stop slurmd 15
stop slurmctld 15
stop slurmdbd 15
stop mariadbd 30
stop munged 10
