#!/usr/bin/env bash
# Start a real single-node SLURM with accounting on this machine, for tests and development.
#
#     sudo bash env/slurm/start.sh      # install (Debian packages) if needed, configure, start; idempotent
#     sudo bash env/slurm/stop.sh       # stop exactly the daemons this script started
#
# Debian 12 (Slurm 22.05, munge, MariaDB), no systemd: each of the five daemons (munged, mariadbd,
# slurmdbd, slurmctld, slurmd) runs in the foreground under start-stop-daemon, its PID recorded in
# $STATE/<daemon>.pid; stop.sh ends only those PIDs. Running it again while everything is up and the
# configuration unchanged does nothing; a changed configuration restarts the daemons.
#
# What it creates is the `local` profile of env/clusters.yaml: partition `debug` (MaxTime 60 min),
# requeue allowed, MaxArraySize 1001. Settings chosen for fast tests (measured on this kind of machine):
# cred_expire=10 and a 5 s scheduling interval (a requeued job runs again after ~10 s, not ~3 min),
# KillWait=5, DefMemPerCPU (else one job takes the node), more CPUs advertised than exist (small
# test jobs side by side). Accounting gathers as real clusters do (jobacct_gather/linux: sacct's
# MaxRSS and TotalCPU are filled), sampling every 2 s so that short test jobs are measured.
set -euo pipefail

# HPCSWEEP_SLURM_NODES=N (N > 1): a second, N-node cluster beside this one (env/slurm/multinode.sh)
if [ "${HPCSWEEP_SLURM_NODES:-1}" != 1 ]; then exec bash "$(dirname "$0")/multinode.sh" start; fi

STATE=${HPCSWEEP_SLURM_STATE:-/var/lib/hpcsweep-slurm}
CLUSTER=hpcsweep
PARTITION=debug
MAX_TIME_MIN=60
HOST=$(hostname -s)
CPUS=${HPCSWEEP_SLURM_CPUS:-$(( $(nproc) * 4 ))}
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
PACKAGES="munge slurm-wlm slurmdbd mariadb-server"

say() { echo "env/slurm/start.sh: $*"; }
die() { echo "env/slurm/start.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root: sudo bash env/slurm/start.sh"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu machine (apt-get)"

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v mariadbd >/dev/null; then
    say "installing $PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null; } \
        || die "apt-get install $PACKAGES failed"
fi

# ---------------------------------------------------------------- directories and keys
install -d -m 0755 "$STATE"
install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
install -d -o slurm -g slurm -m 0755 /run/slurm /var/log/slurm /var/lib/slurm /var/lib/slurm/slurmctld
install -d -o mysql -g mysql -m 0755 /run/mysqld
install -d -m 0755 /var/spool/slurmd /etc/slurm
if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if [ ! -s "$STATE/db.secret" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE/db.secret")
fi
DBPASS=$(cat "$STATE/db.secret")

# ---------------------------------------------------------------- configuration
changed=0
put() {     # put PATH OWNER MODE: stdin to PATH if its content differs; notes the change
    local path=$1 owner=$2 mode=$3 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat > "$tmp"
    chown "$owner" "$tmp"; chmod "$mode" "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; else mv -f "$tmp" "$path"; changed=1; fi
}

put /etc/slurm/slurm.conf root:root 0644 <<EOF
# written by env/slurm/start.sh: a single-node test cluster (see env/clusters.yaml, profile local)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
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
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
JobRequeue=1
MailProg=/bin/true
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=$MAX_TIME_MIN State=UP
EOF

put /etc/slurm/slurmdbd.conf slurm:slurm 0600 <<EOF
# written by env/slurm/start.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF

# ---------------------------------------------------------------- daemons
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"     # in start order; stop.sh stops them in reverse
bin_of() { echo "/usr/sbin/$1"; }

alive() {   # alive NAME: the recorded PID runs NAME's binary and is not a zombie
    local pidfile="$STATE/$1.pid" pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(bin_of "$1")")" ]   # Debian: slurmctld -> slurmctld-wlm
}

all_alive() { local d; for d in $DAEMONS; do alive "$d" || return 1; done; }

if all_alive && [ "$changed" = 0 ]; then
    up=1
else
    up=0
    if [ "$changed" = 1 ]; then
        for d in $DAEMONS; do
            if alive "$d"; then say "configuration changed: restarting"; bash "$(dirname "$0")/stop.sh"; break; fi
        done
    fi
fi

launch() {  # launch NAME [--chuid USER] -- ARGS: start NAME in the background, record its PID
    local name=$1; shift
    alive "$name" && return 0
    local chuid=()
    if [ "$1" = --chuid ]; then chuid=(--chuid "$2"); shift 2; fi
    shift   # --
    start-stop-daemon --start --background --make-pidfile --pidfile "$STATE/$name.pid" \
        --output "$STATE/$name.out" "${chuid[@]}" --exec "$(bin_of "$name")" -- "$@"
}

wait_for() {   # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
    local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$what did not come up in time; see $STATE/*.out and /var/log/slurm/"
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ "$up" = 0 ]; then
    launch munged --chuid munge -- --foreground
    wait_for 20 munged bash -c 'munge -n | unmunge'

    launch mariadbd -- --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/mysqld.pid --log-error="$STATE/mariadb.log"
    wait_for 60 mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    mariadb --socket=/run/mysqld/mysqld.sock -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

    launch slurmdbd -- -D
    wait_for 60 slurmdbd port_open 6819
    # register the cluster once (slurm.conf already names slurmdbd)
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi

    launch slurmctld -- -D
    wait_for 60 slurmctld scontrol ping
    launch slurmd -- -D
fi

node_ready() { sinfo -h -n "$HOST" -o %T | grep -Eq '^(idle|mixed|allocated|completing)'; }
deadline=$(( $(date +%s) + 60 ))
until node_ready; do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    case $state in down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true;; esac
    [ "$(date +%s)" -lt "$deadline" ] || die "node $HOST is '$state', not idle; see /var/log/slurm/slurmd.log"
    sleep 0.3
done

if [ "$up" = 0 ]; then
    # self-test: a job runs, and accounting (sacct) knows it
    jid=$(sbatch --parsable --wait -p "$PARTITION" -t 1 -o /dev/null --wrap true) \
        || die "the self-test job failed; see /var/log/slurm/"
    wait_for 30 "accounting (sacct)" bash -c "sacct -n -X -P -o State -j $jid | grep -q COMPLETED"
    say "up: cluster $CLUSTER, partition $PARTITION (MaxTime ${MAX_TIME_MIN} min), node $HOST with $CPUS CPUs, ${MEM_MB} MB; self-test job $jid completed"
else
    say "already running (cluster $CLUSTER, partition $PARTITION); nothing to do"
fi
