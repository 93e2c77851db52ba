#!/usr/bin/env bash
# A "cluster login node" over SSH on this machine, for the tests of the laptop commands (jobs/sched/remote.py).
#
#     sudo bash env/ssh/start.sh STATE_DIR [PYTHON]     # prints the ssh config file to use: ssh -F STATE_DIR/ssh_config hpcsweep-rig
#     sudo bash env/ssh/stop.sh STATE_DIR
#
# The distribution's OpenSSH server (installed if absent) runs as its own daemon on 127.0.0.1, on a free
# port, with its own config, host key and log in STATE_DIR (the system's /etc/ssh config and any system
# sshd are left alone). It lets in one user, $HPCSWEEP_SSH_USER (default hpcremote, created if absent),
# with a key made for it here; no password is ever asked. That user's home holds the "cluster" side:
# a copy of this checkout in ~/hpcsweep, run with PYTHON (default: the python3 on PATH), which must be
# readable by that user. Jobs it submits go to the SLURM of env/slurm/start.sh (no associations are
# enforced there: any user may submit). STATE_DIR/rig.env says what the tests need (port, user, paths).
set -euo pipefail
say() { echo "env/ssh/start.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (a second user, and sshd letting it in): sudo bash env/ssh/start.sh STATE_DIR"
[ $# -ge 1 ] || die "usage: env/ssh/start.sh STATE_DIR [PYTHON]"
STATE=$(realpath -m "$1")
PY=${2:-$(command -v python3)}
USER_NAME=${HPCSWEEP_SSH_USER:-hpcremote}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
[[ "$USER_NAME" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "HPCSWEEP_SSH_USER=$USER_NAME is not a user name"

if [ ! -x /usr/sbin/sshd ]; then
    say "installing the OpenSSH server (openssh-server)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server >/dev/null \
        || die "apt-get install openssh-server failed"
fi
id "$USER_NAME" >/dev/null 2>&1 || { say "creating user $USER_NAME"; useradd -m -s /bin/bash "$USER_NAME"; }
# useradd leaves the password locked ("!"), and sshd lets no locked account in, keys or not: "*" is no
# password at all (none can be typed), but not locked
[ "$(getent shadow "$USER_NAME" | cut -d: -f2)" != "!" ] || usermod -p '*' "$USER_NAME"
HOME_DIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
[ -d "$HOME_DIR" ] || die "$USER_NAME has no home ($HOME_DIR)"

mkdir -p "$STATE" /run/sshd      # /run/sshd: sshd's privilege-separation directory, which it requires
chmod 755 "$STATE"      # sshd reads authorized_keys as the user it lets in; the private keys stay 0600
[ -s "$STATE/sshd.pid" ] && kill -0 "$(cat "$STATE/sshd.pid")" 2>/dev/null && die "an sshd of this rig runs already ($STATE/sshd.pid): stop it first"
rm -f "$STATE"/host_ed25519* "$STATE"/id_ed25519* "$STATE/known_hosts"
ssh-keygen -q -t ed25519 -N '' -C hpcsweep-rig-host -f "$STATE/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C hpcsweep-rig-client -f "$STATE/id_ed25519"
cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
chmod 644 "$STATE/authorized_keys"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat > "$STATE/sshd_config" <<CONF
# the test rig's own sshd (env/ssh/start.sh): 127.0.0.1 only, keys only, one user
Port $PORT
ListenAddress 127.0.0.1
HostKey $STATE/host_ed25519
PidFile $STATE/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
AllowUsers $USER_NAME
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the keys live in a temporary folder (under /tmp, world-writable) that StrictModes would refuse
StrictModes no
# VERBOSE: one "Accepted publickey" line per connection, which the tests count
LogLevel VERBOSE
MaxSessions 64
PrintMotd no
CONF
/usr/sbin/sshd -t -f "$STATE/sshd_config" || die "sshd refuses its config ($STATE/sshd_config)"
/usr/sbin/sshd -f "$STATE/sshd_config" -E "$STATE/sshd.log"
for _ in $(seq 100); do [ -s "$STATE/sshd.pid" ] && break; sleep 0.05; done
[ -s "$STATE/sshd.pid" ] || die "sshd did not start (see $STATE/sshd.log)"
trap '[ $? -eq 0 ] || bash "$REPO/env/ssh/stop.sh" "$STATE"' EXIT     # a later step failed: no sshd left behind

echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$STATE/host_ed25519.pub")" > "$STATE/known_hosts"
# the client side is whoever asked for the rig (sudo's user, else root): its key must be that user's own
CLIENT=${SUDO_USER:-root}
chown "$CLIENT" "$STATE/id_ed25519" "$STATE/id_ed25519.pub" "$STATE/known_hosts"
cat > "$STATE/ssh_config" <<CONF
Host hpcsweep-rig
    HostName 127.0.0.1
    Port $PORT
    User $USER_NAME
    IdentityFile $STATE/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    StrictHostKeyChecking yes
CONF

# the cluster side's hpcsweep: this checkout's files as they are now (tracked and untracked, not ignored)
CHECKOUT=$HOME_DIR/hpcsweep
rm -rf "$CHECKOUT"
mkdir -p "$CHECKOUT"
(cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 -r -I{} sh -c 'test -f "{}" && printf "%s\0" "{}"' \
    | tar -c --null -T - -f -) | tar -x -C "$CHECKOUT" -f -
chown -R "$USER_NAME:" "$CHECKOUT"
# its python: PYTHON itself where that user may run it, else a venv of the system's python3 (the same
# major.minor) in its home that sees PYTHON's packages (a .pth line), so nothing is downloaded
runs_as_user() { su -s /bin/sh "$USER_NAME" -c "cd '$CHECKOUT' && '$1' main.py --version" >/dev/null 2>"$STATE/python.err"; }
REMOTE_PY=$PY
if ! runs_as_user "$REMOTE_PY"; then
    want=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    packages=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    system=$(ls /usr/bin/python$want /usr/local/bin/python$want 2>/dev/null | head -1 || true)   # not a per-user (pyenv) one
    [ -n "$system" ] || die "$USER_NAME cannot run $PY ($(tail -1 "$STATE/python.err")), and there is no system python$want to make a venv of"
    VENV=$HOME_DIR/venv
    rm -rf "$VENV"
    su -s /bin/sh "$USER_NAME" -c "'$system' -m venv --without-pip '$VENV'"
    site=$(su -s /bin/sh "$USER_NAME" -c "'$VENV/bin/python' -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    echo "$packages" > "$site/hpcsweep-rig.pth"
    REMOTE_PY=$VENV/bin/python
    runs_as_user "$REMOTE_PY" || die "$USER_NAME cannot run hpcsweep with $REMOTE_PY: $(tail -3 "$STATE/python.err")"
fi

cat > "$STATE/rig.env" <<ENV
HOST=hpcsweep-rig
PORT=$PORT
SSH_USER=$USER_NAME
REMOTE_HOME=$HOME_DIR
REMOTE_CHECKOUT=$CHECKOUT
PYTHON=$REMOTE_PY
SSH_CONFIG=$STATE/ssh_config
SSHD_LOG=$STATE/sshd.log
ENV
say "sshd (pid $(cat "$STATE/sshd.pid")) on 127.0.0.1:$PORT lets in $USER_NAME; try: ssh -F $STATE/ssh_config hpcsweep-rig hostname"
echo "$STATE/ssh_config"
