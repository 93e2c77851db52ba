#!/usr/bin/env bash
# A second, N-node SLURM on this one machine, beside the single-node one (start.sh / stop.sh call this
# when HPCSWEEP_SLURM_NODES is set to more than 1):
#
#     sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/start.sh   # prints the SLURM_CONF that selects it
#     sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/stop.sh    # stops exactly what that start created
#     export SLURM_CONF=/var/lib/hpcsweep-slurm-nodes/slurm.conf   # then sinfo, sbatch, main.py ... use it
#
# Why network namespaces: Debian's slurmd (22.05.8) is not built with multiple-slurmd support (several
# slurmd per host, one Port each). Checked (`slurmd -V`: slurm-wlm 22.05.8): a second
# `slurmd -D -N othernode -f <a config naming two nodes on this host, one Port each>` answered
# "killing old slurmd[PID]" and ended the slurmd already running (one slurmd per host in this build);
# its libslurmfull also carries the "Duplicated NodeHostName" check. So each node here is a host of its own: its slurmd runs in its own network namespace
# (`ip netns`, a veth pair to a bridge this script creates, a private address) and UTS namespace (its
# own host name). Nothing leaves the machine: the bridge has no route out.
#
# What is shared with the single-node cluster (started first, through start.sh, if it is not up):
# munged (the same key) and slurmdbd, where this cluster is registered under its own name. What is
# its own: ClusterName, slurmctld (on the bridge address, its own port), state, spool, logs, pid
# files, all under $STATE. Node names resolve in every namespace: each slurmd runs in a mount
# namespace of its own where $STATE/hosts-<node> is bound over /etc/hosts, for it and every job
# process it starts, so a job finds the rendezvous host (the first node of its allocation) by name,
# as on a real cluster. The host's own /etc/hosts is never touched.
#
# Settings chosen for the multi-node tests: SlurmdTimeout=10 (a node whose slurmd died is DOWN, its
# jobs NODE_FAIL, ~25 s after it fell silent rather than 5 min), the fast requeue of start.sh, and
# ReturnToService=2 (a node that comes back is usable again).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
unset SLURM_CONF       # a caller's (this cluster's, say) must not steer start.sh's single-node checks; ctl() sets ours
N=${HPCSWEEP_SLURM_NODES:-2}
me="env/slurm/$(basename "$0") ($N nodes)"
say() { echo "$me: $*"; }
die() { echo "$me: error: $*" >&2; exit 1; }
case $N in ''|*[!0-9]*) die "HPCSWEEP_SLURM_NODES must be a whole number from 2 to 8, not '$N'";; esac
[ "$N" -ge 2 ] && [ "$N" -le 8 ] || die "HPCSWEEP_SLURM_NODES must be from 2 to 8, not $N"
STATE=${HPCSWEEP_SLURM_NODES_STATE:-/var/lib/hpcsweep-slurm-nodes}
CONF=$STATE/slurm.conf
CLUSTER=hpcsweepnodes
PARTITION=debug              # the same partition and limit as the single-node cluster: profile `local` fits both
MAX_TIME_MIN=60
CTLD_PORT=6827               # the single-node slurmctld has 6817
NET=10.213.57                # the bridge: $NET.1 the host side (slurmctld), $NET.(10+i) node i
BRIDGE=hpcsw-br0
HOST=$(hostname -s)
CPUS=${HPCSWEEP_SLURM_NODE_CPUS:-$(( $(nproc) * 2 ))}
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 4 / N ))

[ "$(id -u)" -eq 0 ] || die "needs root: sudo HPCSWEEP_SLURM_NODES=$N bash env/slurm/start.sh"

node() { echo "node$1"; }                 # node i's name (and host name)
netns() { echo "hpcsw-node$1"; }          # its network namespace
addr() { echo "$NET.$(( 10 + $1 ))"; }
ctl() { SLURM_CONF=$CONF "$@"; }

alive() {   # alive PIDFILE BINARY: the recorded PID runs BINARY and is not a zombie
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$2")" ]
}

stop_pid() {    # stop_pid NAME PIDFILE BINARY GRACE
    local name=$1 pidfile=$2 bin=$3 grace=$4 pid deadline
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if alive "$pidfile" "$bin"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + grace ))
        while alive "$pidfile" "$bin" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
        if alive "$pidfile" "$bin"; then
            say "$name (pid $pid) ignored SIGTERM for ${grace} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$pidfile" "$bin"; do sleep 0.1; done
        fi
        say "$name (pid $pid) stopped"
    fi
    rm -f "$pidfile"
}

wait_for() {   # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
    local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$what did not come up in time; see $STATE/log/"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- stop
stop() {
    if alive "$STATE/slurmctld.pid" /usr/sbin/slurmctld; then
        jobs=$(ctl squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            ctl scancel $jobs 2>/dev/null || true
            deadline=$(( $(date +%s) + 30 ))
            while [ -n "$(ctl squeue -h -o %A 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.3; done
        fi
    fi
    local i
    for i in $(seq 1 8); do
        stop_pid "slurmd $(node "$i")" "$STATE/slurmd-$(node "$i").pid" /usr/sbin/slurmd 15
    done
    stop_pid slurmctld "$STATE/slurmctld.pid" /usr/sbin/slurmctld 15
    for i in $(seq 1 8); do
        ip link del "hpcsw-v$i" 2>/dev/null || true          # its peer in the namespace goes with it
        if ip netns list | grep -qw "$(netns "$i")"; then ip netns del "$(netns "$i")"; fi
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    say "stopped (the single-node cluster, munged and slurmdbd are left running)"
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ "${1:-}" = start ] || die "usage: $0 start|stop"

# ---------------------------------------------------------------- start
# munged, mariadbd, slurmdbd (and the single-node cluster): started by start.sh if not up
HPCSWEEP_SLURM_NODES=1 bash "$HERE/start.sh"

install -d -m 0755 "$STATE" "$STATE/spool"
install -d -o slurm -g slurm -m 0755 "$STATE/ctld" "$STATE/log" "$STATE/run"

changed=0
put() {     # put PATH: stdin to PATH if its content differs; notes the change
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat > "$tmp"
    chmod 0644 "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; changed=1; fi
}

slurm_conf() {
    cat <<EOF
# written by env/slurm/multinode.sh: a $N-node test cluster on one machine (see env/clusters.yaml, profile local)
ClusterName=$CLUSTER
SlurmctldHost=$HOST($NET.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
ReturnToService=2
SlurmdTimeout=10
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmdSpoolDir=$STATE/spool/%n
StateSaveLocation=$STATE/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
KillWait=5
InactiveLimit=0
MinJobAge=300
MaxArraySize=1001
MaxJobCount=20000
FirstJobId=500000
JobRequeue=1
MailProg=/bin/true
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
EOF
    for i in $(seq 1 "$N"); do
        echo "NodeName=$(node "$i") NodeAddr=$(addr "$i") CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=node[1-$N] Default=YES MaxTime=$MAX_TIME_MIN State=UP"
}
put "$CONF" < <(slurm_conf)      # not a pipe: put must run in this shell to note a change

hosts_file() {   # hosts_file I: node I's /etc/hosts
    echo "# written by env/slurm/multinode.sh: bound over /etc/hosts for node $(node "$1")'s slurmd and its jobs"
    echo "127.0.0.1 localhost"
    echo "$NET.1 $HOST"
    for j in $(seq 1 "$N"); do echo "$(addr "$j") $(node "$j")"; done
}

# the bridge, and one namespace per node with a veth pair into it
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
for i in $(seq 1 "$N"); do
    ns=$(netns "$i")
    if ! ip netns list | grep -qw "$ns"; then
        ip netns add "$ns"
        ip link add "hpcsw-v$i" type veth peer name "hpcsw-p$i"
        ip link set "hpcsw-p$i" netns "$ns"
        ip link set "hpcsw-v$i" master "$BRIDGE" up
        ip -n "$ns" addr add "$(addr "$i")/24" dev "hpcsw-p$i"
        ip -n "$ns" link set "hpcsw-p$i" up
        ip -n "$ns" link set lo up
    fi
    put "$STATE/hosts-$(node "$i")" < <(hosts_file "$i")
done

if [ "$changed" = 1 ] && alive "$STATE/slurmctld.pid" /usr/sbin/slurmctld; then
    say "configuration changed: restarting its daemons"
    for i in $(seq 1 8); do stop_pid "slurmd $(node "$i")" "$STATE/slurmd-$(node "$i").pid" /usr/sbin/slurmd 15; done
    stop_pid slurmctld "$STATE/slurmctld.pid" /usr/sbin/slurmctld 15
fi

up=1
if ! ctl sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    ctl sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! alive "$STATE/slurmctld.pid" /usr/sbin/slurmctld; then
    up=0
    start-stop-daemon --start --background --make-pidfile --pidfile "$STATE/slurmctld.pid" \
        --output "$STATE/slurmctld.out" --exec /usr/sbin/slurmctld -- -D -f "$CONF"
    wait_for 60 slurmctld ctl scontrol ping
fi
for i in $(seq 1 "$N"); do
    name=$(node "$i")
    alive "$STATE/slurmd-$name.pid" /usr/sbin/slurmd && continue
    up=0
    install -d -m 0755 "$STATE/spool/$name"
    # nsenter: its network; unshare: its own mounts (the hosts file below bound over /etc/hosts) and
    # host name; each execs the next, so the recorded PID ends up being slurmd's. (Not `ip netns exec`:
    # it remounts /sys, which hides /sys/fs/cgroup, and slurmd will not start without it.)
    start-stop-daemon --start --background --make-pidfile --pidfile "$STATE/slurmd-$name.pid" \
        --output "$STATE/slurmd-$name.out" --startas /usr/bin/nsenter -- --net="/run/netns/$(netns "$i")" \
        unshare --mount --uts --propagation slave /bin/sh -c \
        "mount --bind $STATE/hosts-$name /etc/hosts && hostname $name && exec /usr/sbin/slurmd -D -N $name -f $CONF"
done

node_ready() { [ "$(ctl sinfo -h -N -p "$PARTITION" -o '%N %T' | grep -cE ' (idle|mixed|allocated|completing)$')" -ge "$N" ]; }
deadline=$(( $(date +%s) + 60 ))
until node_ready; do
    ctl sinfo -h -N -o '%N %T' 2>/dev/null | while read -r name state; do
        case $state in down*|drain*) ctl scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true;; esac
    done
    [ "$(date +%s)" -lt "$deadline" ] || die "not all $N nodes are idle: $(ctl sinfo -h -N -o '%N=%T' | tr '\n' ' '); see $STATE/log/"
    sleep 0.3
done

if [ "$up" = 0 ]; then
    # self-test: one job on every node, each answering with its own host name; accounting knows it
    out=$STATE/selftest.out
    jid=$(ctl sbatch --parsable --wait -p "$PARTITION" -N "$N" -t 1 -o "$out" --wrap 'srun hostname') \
        || die "the self-test job failed; see $STATE/log/"
    [ "$(sort -u "$out" | wc -l)" -eq "$N" ] || die "the self-test job saw host names '$(tr '\n' ' ' < "$out")', not $N"
    wait_for 30 "accounting (sacct)" bash -c "SLURM_CONF=$CONF sacct -n -X -P -o State -j $jid | grep -q COMPLETED"
    say "up: cluster $CLUSTER, partition $PARTITION, nodes node[1-$N] ($CPUS CPUs, $MEM_MB MB each) on bridge $BRIDGE ($NET.0/24); self-test job $jid ran on $(sort -u "$out" | tr '\n' ' ')"
else
    say "already running (cluster $CLUSTER); nothing to do"
fi
say "use it with: export SLURM_CONF=$CONF"
