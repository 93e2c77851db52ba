"""A cluster reached from a laptop: the same commands, run on its login host over one SSH connection.

    hpcsweep submit sweeps/x.yaml --cluster mycluster      # a profile with `ssh: me@login.cluster`
    hpcsweep status sweeps/x.yaml --cluster mycluster      # also resume, cancel, logs, watch
    hpcsweep aggregate sweeps/x.yaml --cluster mycluster   # pull, then tables and figures here
    hpcsweep pull sweeps/x.yaml --cluster mycluster        # only the copy: then analysis.runs(<its path>)

How it works (the laptop side is a thin proxy; the cluster side is an ordinary hpcsweep):
- One connection per command: every ssh call of a command goes through one OpenSSH ControlMaster
  (ControlPath ~/.cache/hpcsweep/ssh/%C, kept CONTROL_PERSIST_S after the last use, so commands in a
  row share it). BatchMode: the user's own ~/.ssh/config, keys and agent, never a password prompt.
- submit and resume first copy the project (the top of the spec's git checkout: its tracked and
  untracked files, ignored ones left out; else the spec's folder) to <remote_dir>/<project>-<hash> on
  the login host, as one tar stream, with the cluster profile beside it (PROFILES_FILE, without its
  ssh keys: the cluster side runs the commands as on a login node). What runs is what the laptop had.
- Then the login host's hpcsweep (remote_command) checks it is the laptop's version, and runs the
  command in that copy with the same arguments (each one shell-quoted), its output streamed back and
  its exit status returned. The sweep dir lives where the cluster side puts it (the profile's root).
- aggregate and pull ask the cluster side which files analysis reads (`hpcsweep files`: the spec,
  the plan, each run's config, result, error and metrics, with their sizes and mtimes) and copy the
  ones that changed since the last pull into a local mirror (one tar stream), then work on it as on
  any sweep dir. plan, run, export and init stay local.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from filelock import FileLock

from jobs.spec.settings import ClusterProfile
from jobs.store import SweepDir, atomic, project_top, root_dir

FORWARDED = ("submit", "resume", "status", "cancel", "logs", "watch")   # run on the login host
SYNCED = ("submit", "resume")                  # copy the project there first
MIRRORED = ("aggregate", "pull")               # copy results here first
PROFILES_FILE = ".hpcsweep-clusters.yaml"      # in the project's copy: the profile the cluster side uses
CONTROL_PERSIST_S = 60                          # the connection stays open this long after a command
CONNECT_TIMEOUT_S = 15
SKIPPED_DIRS = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache"}   # a folder without git


class RemoteError(Exception):
    """The login host could not be reached or used; the message says what to do."""


def profile_of(args):
    """The cluster profile of a command when it names a login host (`ssh:`), else None (the command runs here)."""
    from jobs.sched import slurm
    if args.command not in FORWARDED + MIRRORED:
        return None
    if not (getattr(args, "cluster", None) or os.environ.get("HPCSWEEP_CLUSTER")):
        return None
    spec = Path(args.spec) if Path(args.spec).is_file() else None
    try:
        profile = slurm.load_profile(args.cluster, args.profiles, spec=spec)
    except slurm.ProfileError as e:
        from jobs.spec import SpecError
        raise SpecError(str(e))
    return profile if profile.ssh else None


# ------------------------------------------------------------------ ssh

def control_dir() -> Path:
    """Where the ControlMaster sockets are (private to the user)."""
    folder = Path.home() / ".cache" / "hpcsweep" / "ssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def ssh_command(profile: ClusterProfile, *options) -> list:
    """The ssh command line for the profile's login host (its remote command appended by the caller)."""
    out = ["ssh"] + (["-F", os.path.expanduser(profile.ssh_config)] if profile.ssh_config else [])
    out += ["-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir()}/%C",
            "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=30", *options, profile.ssh]
    return out


def close(profile: ClusterProfile) -> None:
    """Close the shared connection to the profile's login host now, if one is open."""
    subprocess.run(ssh_command(profile, "-O", "exit"), capture_output=True, stdin=subprocess.DEVNULL, timeout=30)


def _failure(profile, stderr: str) -> RemoteError:
    """What ssh's own complaint (exit status 255) means, said for people."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "ssh exited with status 255"
    host = profile.ssh
    if "Permission denied" in text:
        why = (f"{host} refused the key (ssh runs with BatchMode: no password is asked). Load your key into the "
               f"agent (ssh-add) or name it with IdentityFile in ~/.ssh/config, and check `ssh {host} true` works")
    elif "Host key verification failed" in text or "No ED25519 host key is known" in text:
        why = f"{host}'s host key is not known here: connect once by hand (`ssh {host}`) and accept it"
    elif any(s in text for s in ("Could not resolve hostname", "Connection refused", "timed out", "No route to host",
                                 "Network is unreachable", "Connection closed by", "Connection reset")):
        why = f"{host} is unreachable ({last}); check the name, the network or VPN, and `ssh {host} true`"
    else:
        why = f"ssh to {host} failed: {last}"
    return RemoteError(f"cluster profile {profile.name}: {why}")


def run(profile: ClusterProfile, line: str, *, data=None, stream=False, tty=False):
    """Run one shell line on the login host through the shared connection: its CompletedProcess, the
    output captured (bytes), or with `stream` printed here as it comes. ssh's own failures (exit
    status 255) raise RemoteError."""
    command = ssh_command(profile, "-t" if tty else "-T") + [line]
    try:
        if stream:
            done = subprocess.run(command, stdin=None if tty else subprocess.DEVNULL)
        else:
            done = subprocess.run(command, input=data if data is not None else b"", capture_output=True)
    except FileNotFoundError:
        raise RemoteError("no `ssh` command on this machine (install OpenSSH's client)")
    if done.returncode == 255:
        if stream:
            raise RemoteError(f"cluster profile {profile.name}: the connection to {profile.ssh} broke (ssh exit 255)")
        raise _failure(profile, done.stderr.decode(errors="replace"))
    return done


def quoted(word: str) -> str:
    """A word for the remote shell: quoted, but a leading ~/ left to it (the home over there)."""
    if word.startswith("~/"):
        return "~/" + shlex.quote(word[2:]) if word[2:] else "~/"
    return shlex.quote(word)


# ------------------------------------------------------------------ the project's copy

def project_files(top: Path, spec: Path) -> list:
    """The project's files, relative to its top: a git checkout's tracked and untracked files (ignored
    ones left out), else every file of the folder but caches and the local results; the spec always."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=top, capture_output=True) \
        if (top / ".git").exists() else None
    if listed is not None and listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:
        skip = {root_dir(None, None, spec).resolve()}
        names = []
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and (Path(folder) / d).resolve() not in skip]
            names += [os.path.relpath(os.path.join(folder, f), top) for f in files]
    names = [n for n in names if (top / n).is_file() or (top / n).is_symlink()]
    spec_name = spec.resolve().relative_to(top).as_posix()
    return sorted(set(names) | {spec_name})


def copy_of(profile: ClusterProfile, top: Path) -> str:
    """Where the laptop's project `top` is copied on the login host (a word for its shell)."""
    key = hashlib.sha256(f"{socket.gethostname()}:{top}".encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.+\-]", "_", top.name) or "project"
    return quoted(f"{profile.remote_dir.rstrip('/')}/{name}-{key}")


def _profile_text(profile: ClusterProfile) -> str:
    """The profile as the cluster side reads it: without what only the laptop needs."""
    kept = profile.model_dump(exclude={"name", "ssh", "ssh_config", "remote_dir", "remote_command", "mirror"},
                              exclude_defaults=True)
    return yaml.safe_dump({profile.name: kept}, sort_keys=False)


def _tar(top: Path, names: list, extra: dict) -> bytes:
    """One tar stream of the project's files (owners left out) and the `extra` {name: text} files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            info = tar.gettarinfo(str(top / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(top / name, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        for name, text in extra.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def where(args) -> tuple:
    """(project top, the SPEC argument as the cluster side reads it, in the project's copy): a spec
    file goes as its path in the project; a local mirror as the sweep dir it copies (of the project it
    was pulled for); anything else (a sweep dir's path on the cluster) as it is, for the project the
    command runs in."""
    target = Path(args.spec)
    if target.is_file():
        top = project_top(target)
        return top, target.resolve().relative_to(top).as_posix()
    index = atomic.read_json(SweepDir(target).mirror_index) if target.is_dir() else None
    if isinstance(index, dict) and index.get("sweep_dir"):
        return Path(index.get("project") or project_top()), str(index["sweep_dir"])
    return project_top(), str(args.spec)


# ------------------------------------------------------------------ the commands

def _version_check(profile, done, cmd) -> None:
    """Refuse a login host whose hpcsweep is missing or of another version than this one."""
    from jobs.sched.submit import about
    out = (done.stdout or b"").decode(errors="replace").strip()
    err = (done.stderr or b"").decode(errors="replace").strip()
    if done.returncode == 97:
        raise RemoteError(f"cluster profile {profile.name}: nothing of this project is on {profile.ssh} yet "
                          "(submit copies it there first)")
    if done.returncode in (126, 127) or (done.returncode and "No such file" in err):
        raise RemoteError(f"cluster profile {profile.name}: hpcsweep is not found on {profile.ssh} "
                          f"(remote_command: {' '.join(cmd)}: {err.splitlines()[-1] if err else 'not found'}); "
                          "install it there (pip install hpcsweep, in the environment jobs run in) or set "
                          "remote_command in the profile")
    mine = about()["version"]
    theirs = out.split()[1] if out.startswith("hpcsweep ") and len(out.split()) > 1 else None
    if done.returncode or theirs is None:
        raise RemoteError(f"cluster profile {profile.name}: `{' '.join(cmd)} --version` on {profile.ssh} failed "
                          f"(exit {done.returncode}): {(err or out).splitlines()[-1] if (err or out) else 'no output'}")
    if theirs != mine:
        raise RemoteError(f"cluster profile {profile.name}: {profile.ssh} runs hpcsweep {theirs}, this machine "
                          f"{mine}: install the same version on both (the commands and the sweep dir's format "
                          "must agree)")


def _prepare(profile, args, sync: bool) -> tuple:
    """(the copy's folder, the remote hpcsweep command line, SPEC there) after the version check;
    with `sync`, the project is copied there first (in the same ssh session)."""
    top, spec = where(args)
    folder = copy_of(profile, top)
    cmd = " ".join(quoted(w) for w in profile.remote_command)
    if sync:
        names = project_files(top, Path(args.spec))
        sizes = {n: (top / n).lstat().st_size for n in names}
        if sum(sizes.values()) > profile.sync_max_mb * 1e6:
            largest = ", ".join(f"{n} ({sizes[n] / 1e6:.1f} MB)" for n in sorted(sizes, key=sizes.get)[::-1][:3])
            raise RemoteError(f"the project {top} holds {sum(sizes.values()) / 1e6:.1f} MB, more than cluster profile "
                              f"{profile.name}'s sync_max_mb ({profile.sync_max_mb:g}); the largest: {largest}. Keep "
                              "data out of it (or in .gitignore), or raise sync_max_mb")
        data = _tar(top, names, {PROFILES_FILE: _profile_text(profile)})
        done = run(profile, f"mkdir -p -- {folder} && cd -- {folder} && tar -xf - || exit 96; {cmd} --version", data=data)
        if done.returncode == 96:
            raise RemoteError(f"cluster profile {profile.name}: copying the project to {profile.ssh}:{folder} "
                              f"failed: {done.stderr.decode(errors='replace').strip()[-400:]}")
    else:
        done = run(profile, f"cd -- {folder} 2>/dev/null || exit 97; {cmd} --version")
    _version_check(profile, done, profile.remote_command)
    return folder, cmd, spec


def argv_of(command, parser, args, spec: str, profile) -> list:
    """The command's arguments again, from what `parser` parsed into `args` (SPEC replaced by `spec`,
    the cluster by the profile's name: the cluster side reads it from PROFILES_FILE, see `_on_host`)."""
    out = [command]
    for action in parser._actions:
        if not action.option_strings:
            if action.dest == "spec":
                out.append(spec)
            continue
        if action.dest in ("help", "cluster", "profiles", "version"):
            continue
        value = getattr(args, action.dest, None)
        flag = max(action.option_strings, key=len)
        if value is None or value is False or value == action.default:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out + ["--cluster", profile.name]


def _on_host(folder, cmd, words) -> str:
    """The shell line that runs hpcsweep in the project's copy, with the profile copied beside it
    ($HPCSWEEP_CLUSTERS: the hints it prints name no file of ours)."""
    return f"cd -- {folder} && HPCSWEEP_CLUSTERS={PROFILES_FILE} exec {cmd} {words}"


def forward(profile, args, parser) -> int:
    """Run the command on the login host, its output streamed here; its exit status."""
    folder, cmd, spec = _prepare(profile, args, sync=args.command in SYNCED)
    words = " ".join(shlex.quote(w) for w in argv_of(args.command, parser, args, spec, profile))
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    sys.stdout.flush()
    return run(profile, _on_host(folder, cmd, words), stream=True, tty=tty).returncode


def mirror_root(profile, args) -> Path:
    """Where this laptop keeps copies of the profile's sweep dirs."""
    if profile.mirror:
        return Path(os.path.expanduser(profile.mirror)).resolve()
    spec = Path(args.spec) if Path(args.spec).is_file() else None
    return root_dir(None, None, spec) / profile.name


def pull(profile, args, files_parser) -> SweepDir:
    """Bring the local mirror of the sweep up to date (only the files that changed); the mirror."""
    folder, cmd, spec = _prepare(profile, args, sync=False)
    top = where(args)[0]
    words = " ".join(shlex.quote(w) for w in argv_of("files", files_parser, args, spec, profile))
    done = run(profile, _on_host(folder, cmd, words))
    try:
        listing = json.loads(done.stdout)
        remote, files = str(listing["sweep_dir"]), dict(listing["files"])
    except (ValueError, KeyError, TypeError):
        err = done.stderr.decode(errors="replace").strip()
        raise RemoteError(f"cluster profile {profile.name}: {profile.ssh} could not list the sweep: "
                          f"{err.splitlines()[-1] if err else done.stdout[:200]!r}")
    mirror = SweepDir(mirror_root(profile, args) / Path(remote).name)
    mirror.path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(mirror.mirror_lock)):
        _update(profile, remote, files, mirror, top)
    return mirror


def _update(profile, remote: str, files: dict, mirror: SweepDir, top: Path) -> None:
    """Copy into the mirror what changed of `files` ({name: [bytes, mtime_ns]} there), drop what went."""
    old = atomic.read_json(mirror.mirror_index) if mirror.mirror_index.exists() else None
    if old is None and any(p.name != mirror.mirror_lock.name for p in mirror.path.iterdir()):
        raise RemoteError(f"{mirror.path} exists and is not a copy of a cluster's sweep dir: set `mirror:` in "
                          f"cluster profile {profile.name} to another folder")
    if old is not None and (old.get("ssh"), old.get("sweep_dir")) != (profile.ssh, remote):
        old = None                                   # another cluster's or sweep's copy: fetched anew
    had = (old or {}).get("files") or {}
    if old is None:             # claimed before anything is copied: a pull cut short leaves a mirror, not a stranger
        atomic.write_json(mirror.mirror_index, {"ssh": profile.ssh, "cluster": profile.name, "project": str(top), "sweep_dir": remote,
                                                "files": {}})
    wanted = {name for name, stat in files.items() if _safe(name) and (had.get(name) != stat
                                                                       or not (mirror.path / name).exists())}
    fetched = _fetch(profile, remote, mirror, sorted(wanted)) if wanted else set()
    for name in had:
        if name not in files and _safe(name):        # gone there (a run set aside): gone here
            (mirror.path / name).unlink(missing_ok=True)
    kept = {name: stat for name, stat in files.items() if name in fetched or (name not in wanted and name in had)}
    atomic.write_json(mirror.mirror_index, {"ssh": profile.ssh, "cluster": profile.name, "project": str(top), "sweep_dir": remote,
                                            "files": kept})
    print(f"pulled {len(fetched)} changed files of {len(files)} from {profile.ssh}:{remote} into {mirror.path}",
          file=sys.stderr)


def _safe(name: str) -> bool:
    """A relative path inside the sweep dir (a listing never names anything else)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "" not in parts


def _fetch(profile, remote: str, mirror: SweepDir, names: list) -> set:
    """Copy `names` (relative to the remote sweep dir) into the mirror in one tar stream; those copied."""
    line = f"cd -- {shlex.quote(remote)} && exec tar -cf - --null --ignore-failed-read -T -"
    command = ssh_command(profile, "-T") + [line]
    listing = b"".join(n.encode() + b"\0" for n in names)
    wanted, copied = set(names), set()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(listing)
    proc.stdin.close()
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue               # only what was asked for, only plain files
                data = tar.extractfile(member).read()
                target = mirror.path / member.name
                atomic.write_bytes(target, data, durable=False)
                os.utime(target, (member.mtime, member.mtime))
                copied.add(member.name)
    except tarfile.TarError as e:
        proc.kill()
        proc.wait()
        raise RemoteError(f"cluster profile {profile.name}: copying from {profile.ssh}:{remote} failed ({e}): "
                          f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}")
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() == 255:
        raise _failure(profile, err)
    return copied
