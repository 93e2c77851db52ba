"""From a sweep to jobs: prepare the sweep dir, pick what to submit, pack it, hand it to an executor.

    sub = submit(sweep, root="results", executor="local")   # returns at once; a driver runs the jobs

Executors:
- `local`: packs run as real subprocesses through submitit's LocalExecutor, at most
  `resources.max_parallel` at once. A detached driver process (`python -m jobs.launcher drive`)
  keeps that many jobs going, records them in the journal, and chains a pack whose job stopped
  with runs left (requeue budget spent) into a fresh job; so `submit` returns at once and
  nothing depends on the shell that submitted.
- `debug`: in-process, one pack after another, for a debugger (pdb only at a terminal).

What is in flight is read from the journal and the liveness of the drivers it names; a run
that is done (result.json) is never submitted again unless named with --force.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml
from filelock import FileLock

from jobs import atomic, sweepdir
from jobs.runner import PackJob

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "submitit", "PyYAML", "pandas", "matplotlib", "filelock", "numpy", "scikit-learn")
RESOURCE_DEFAULTS = {"gpus": 0, "cpus": 1, "mem_gb": 4, "time_min": 60, "pack": 1, "pack_concurrent": False,
                     "max_parallel": 4, "max_requeue": 3, "max_chain": 20}
CHECKPOINT_DEFAULTS = {"every_min": 10, "every_steps": None, "keep_last": 2, "keep_every": None}
LOCAL_MAX_REQUEUE = 5        # submitit's local controller restarts a job at most 6 times


class SubmitError(Exception):
    pass


def resources_of(sweep) -> dict:
    return {**RESOURCE_DEFAULTS, **(sweep.spec.get("resources") or {})}


def checkpoint_of(sweep) -> dict:
    return {**CHECKPOINT_DEFAULTS, **(sweep.spec.get("checkpoint") or {})}


def margin_of(res, ckpt) -> float:
    """Seconds before the wall clock at which a run saves and stops: the spec's, else 10% of the
    limit within [5 s, 120 s]."""
    if ckpt.get("margin_s") is not None:
        return float(ckpt["margin_s"])
    return float(min(120.0, max(5.0, 6.0 * res["time_min"])))


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


# ---------------------------------------------------------------- the sweep dir

def prepare(sweep, sdir: Path, submission: str) -> None:
    """Write the frozen spec, the plan, the code version and each run's config.yaml."""
    sdir.mkdir(parents=True, exist_ok=True)
    for sub in ("runs", "logs", "code"):
        (sdir / sub).mkdir(exist_ok=True)
    atomic.write_yaml(sdir / "spec.yaml", sweep.spec)
    atomic.write_json(sdir / "plan.json", {
        "name": sweep.name, "task": sweep.task, "spec": str(sweep.path), "submission": submission,
        "runs": [{"run_id": r.run_id, "label": r.label, "config": r.config, "varied": r.varied} for r in sweep.runs]})
    version, diff = code_version()
    atomic.write_json(sdir / "code" / f"{submission}.json", version)
    if diff:
        atomic.write_text(sdir / "code" / f"{submission}.diff", diff)
    for r in sweep.runs:
        sweepdir.write_run_config(sdir, r, sweep.task)


def code_version():
    """(git commit, dirty flag, package versions) and the diff of a dirty tree."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = git("rev-parse", "HEAD").strip() or None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    diff = git("diff", "HEAD") if dirty else ""
    packages = {}
    for p in PACKAGES:
        try:
            packages[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            packages[p] = None
    return {"commit": commit, "dirty": dirty, "python": sys.version.split()[0], "packages": packages,
            "host": socket.gethostname(), "time": sweepdir.now_iso()}, diff


# ---------------------------------------------------------------- what is in flight

def _alive(pid: int, marker: str) -> bool:
    """Is `pid` alive, not a zombie, and still the process we started (its command names `marker`)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except (OSError, IndexError):
        return False


def live_runs(sdir: Path) -> dict:
    """run_id -> submission id, for every run a live submission still holds."""
    entries = sweepdir.journal(sdir)
    ended = {e["submission"] for e in entries if e.get("event") == "driver_end"}
    live = _live_slurm_runs(entries, sdir)
    for e in entries:
        if e.get("event") != "submit" or e["submission"] in ended:
            continue
        if e.get("executor") == "local":
            if e.get("host") == socket.gethostname() and not _alive(e.get("driver_pid", -1), e["submission"]):
                continue
        elif e.get("executor") in ("debug", "slurm"):
            continue
        for rid in e.get("runs", []):
            live[rid] = e["submission"]
    return live


def slurm_jobs(entries) -> list:
    """(job id, runs, submission, since) of every SLURM job the journal names (submits and chains)."""
    out, since = [], {}
    for e in entries:
        if e.get("event") == "submit" and e.get("executor") == "slurm":
            since[e["submission"]] = e.get("since")
            for jid, pack in zip(e.get("job_ids", []), e.get("packs", [])):
                out.append((jid, pack, e["submission"], e.get("since")))
        elif e.get("event") == "chain":
            out.append((e["job_id"], e.get("runs", []), e["submission"], since.get(e["submission"])))
    return out


def _live_slurm_runs(entries, sdir=None) -> dict:
    jobs = slurm_jobs(entries)
    if not jobs:
        return {}
    from jobs import slurm
    states = slurm.sacct_states([j for j, *_ in jobs], min(s or "now-7days" for *_, s in jobs))
    if sdir is not None:
        slurm.note_infrastructure_failures(sdir, jobs, states)     # NODE_FAIL, OUT_OF_MEMORY: shown as such
    live = {}
    for jid, runs, sid, _ in jobs:
        # a job sacct does not know yet (just submitted) counts as live
        if slurm.is_live(states.get(jid, "PENDING")):
            for rid in runs:
                live[rid] = sid
    return live


def states(sweep, sdir: Path) -> dict:
    live = live_runs(sdir)
    return {r.run_id: sweepdir.run_state(sdir, r.run_id, live) for r in sweep.runs}


# ---------------------------------------------------------------- submit

def new_submission_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def submit(sweep, sdir: Path, *, executor=None, force=(), retry_failed=False, cluster=None, log=print) -> dict:
    """Submit every run that is neither done nor in flight (plus `force`d ones); the journal entry."""
    executor = executor or default_executor()
    if executor not in ("local", "debug", "slurm"):
        raise SubmitError(f"unknown executor {executor!r} (local, debug, slurm)")
    prof = None
    if executor == "slurm":
        from jobs import slurm
        if not shutil.which("sbatch"):
            raise SubmitError("executor slurm: no sbatch on PATH (use --executor local here)")
        try:
            prof = slurm.load_profile(cluster)
            slurm.check_path(Path(sdir).resolve())
        except (slurm.ProfileError, ValueError) as e:
            raise SubmitError(str(e))
    sdir = Path(sdir)
    sdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sdir / "submit.lock")):
        sid = new_submission_id()
        forced = _resolve_force(sweep, force)
        prepare(sweep, sdir, sid)
        st = states(sweep, sdir)
        busy = [r for r in forced if st[r.run_id] == "in flight"]
        if busy:
            raise SubmitError("cannot --force runs that are in flight: " + ", ".join(r.label for r in busy)
                              + " (cancel them first)")
        for r in forced:
            _set_aside(sdir, r)
            st[r.run_id] = "new"
        wanted = {"new", "pending"} | ({"failed"} if retry_failed else set())
        todo = [r for r in sweep.runs if st[r.run_id] in wanted]
        counts = _count(st.values())
        skipped = {s: n for s, n in counts.items() if s not in wanted or s == "in flight"}
        if not todo:
            log(f"nothing to submit: {_describe(counts)}")
            return {}
        res = resources_of(sweep)
        packs = [[r.run_id for r in todo[i:i + res["pack"]]] for i in range(0, len(todo), res["pack"])]
        entry = {"event": "submit", "submission": sid, "time": sweepdir.now_iso(), "executor": executor,
                 "host": socket.gethostname(), "runs": [r.run_id for r in todo], "packs": packs,
                 "force": [r.run_id for r in forced], "code": f"code/{sid}.json",
                 "spec_sha256": hashlib.sha256(json.dumps(sweep.spec, sort_keys=True, default=str).encode()).hexdigest()}
        if executor == "local":
            atomic.write_json(sdir / "logs" / f"{sid}.json", entry)     # what the driver reads
            entry["driver_pid"] = _start_driver(sdir, sid)
        elif executor == "slurm":
            entry.update(_submit_slurm(sweep, sdir, sid, packs, prof))
        sweepdir.append_jsonl(sdir / "journal.jsonl", entry)
        log(f"submitted {len(todo)} runs in {len(packs)} jobs ({executor}) as {sid}"
            + (f"; skipped {_describe(skipped)}" if skipped else ""))
    if executor == "debug":
        _run_debug(sweep, sdir, sid, packs, log)
    return entry


def _resolve_force(sweep, force):
    out = []
    for name in force:
        r = next((r for r in sweep.runs if name in (r.run_id, r.label)), None)
        if r is None:
            raise SubmitError(f"--force {name}: no run of {sweep.name} has that label or run_id")
        out.append(r)
    return out


def _set_aside(sdir, run):
    """Move a forced run's old dir aside (never deleted) and start it anew."""
    rdir = sweepdir.run_dir(sdir, run.run_id)
    if rdir.exists():
        os.replace(rdir, rdir.with_name(f"{run.run_id}.before-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"))
    sweepdir.write_run_config(sdir, run, run_task(sdir))


def run_task(sdir):
    return json.loads((Path(sdir) / "plan.json").read_text())["task"]


def _count(values):
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _describe(counts):
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"


def pack_job(sdir, run_ids, res, ckpt, executor) -> PackJob:
    max_requeue = min(res["max_requeue"], LOCAL_MAX_REQUEUE) if executor == "local" else res["max_requeue"]
    return PackJob(str(sdir), list(run_ids), time_min=float(res["time_min"]),
                   margin_s=margin_of(res, ckpt), gpus=res["gpus"], cpus=res["cpus"],
                   checkpoint={k: ckpt[k] for k in CHECKPOINT_DEFAULTS}, concurrent=res["pack_concurrent"],
                   max_requeue=max_requeue,
                   reraise=executor == "debug" and sys.stdin.isatty())


def _submit_slurm(sweep, sdir, sid, packs, prof) -> dict:
    """Submit the packs as job arrays: {cluster, job_ids (one per pack), sbatch_calls, since}."""
    from jobs import slurm
    res = slurm.resources_for(resources_of(sweep), prof)
    ckpt = checkpoint_of(sweep)
    res["signal_delay_s"] = res.get("signal_delay_s") or int(margin_of(res, ckpt))
    params = slurm.executor_params({**res, "_pack": packs[0]}, prof, job_name=sweep.name)
    max_requeue = res["max_requeue"] if res.get("requeue", True) else 0
    jobs = []
    for pack in packs:
        pj = pack_job(sdir, pack, res, ckpt, "slurm")
        pj.max_requeue, pj.submission = max_requeue, sid
        pj.chain = {"params": params, "left": res["max_chain"]}
        jobs.append(pj)
    # sacct reads -S in the local time zone; a minute early covers clock skew with slurmctld
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    try:
        submitted = slurm.submit_packs(sdir, jobs, params)
    except Exception as e:          # sbatch refused: say what it said
        raise SubmitError(f"sbatch failed: {e}")
    return {"cluster": prof["name"], "job_ids": [str(j.job_id) for j in submitted], "since": since}


def _run_debug(sweep, sdir, sid, packs, log):
    import submitit
    res, ckpt = resources_of(sweep), checkpoint_of(sweep)
    ex = submitit.DebugExecutor(folder=sdir / "logs")
    for i, pack in enumerate(packs):
        job = ex.submit(pack_job(sdir, pack, res, ckpt, "debug"))
        out = job.result()
        log(f"pack {i + 1}/{len(packs)}: " + ", ".join(f"{o}" for o in out["outcomes"].values()))
    sweepdir.append_jsonl(sdir / "journal.jsonl", {"event": "driver_end", "submission": sid, "time": sweepdir.now_iso()})


# ---------------------------------------------------------------- the local driver

def _start_driver(sdir: Path, sid: str) -> int:
    log = open(sdir / "logs" / f"driver-{sid}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.launcher", "drive", str(sdir.resolve()), sid],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)     # survives the shell that submitted
    log.close()
    return proc.pid


def drive(sdir: Path, sid: str) -> None:
    """Run a submission's packs through submitit's LocalExecutor, at most max_parallel at once."""
    import submitit
    sdir = Path(sdir)
    entry = json.loads((sdir / "logs" / f"{sid}.json").read_text())
    spec = yaml.safe_load((sdir / "spec.yaml").read_text())
    res = {**RESOURCE_DEFAULTS, **(spec.get("resources") or {})}
    ckpt = {**CHECKPOINT_DEFAULTS, **(spec.get("checkpoint") or {})}
    ex = submitit.LocalExecutor(folder=sdir / "logs")
    ex.update_parameters(timeout_min=float(res["time_min"]), signal_delay_s=int(margin_of(res, ckpt)),
                         gpus_per_node=res["gpus"])
    os.environ.setdefault("OMP_NUM_THREADS", str(res["cpus"]))     # jobs inherit it
    queue = [(i, pack, 0) for i, pack in enumerate(entry["packs"])]     # (pack index, runs, chain number)
    running = {}
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGTERM, on_term)

    def record(event, **kw):
        sweepdir.append_jsonl(sdir / "journal.jsonl", {"event": event, "submission": sid,
                                                       "time": sweepdir.now_iso(), **kw})
    try:
        while (queue or running) and not stopping:
            while queue and len(running) < res["max_parallel"]:
                i, pack, chain = queue.pop(0)
                job = ex.submit(pack_job(sdir, pack, res, ckpt, "local"))
                running[job.job_id] = (job, i, pack, chain)
                record("job", job_id=job.job_id, pack=i, runs=pack, chain=chain)
            for jid, (job, i, pack, chain) in list(running.items()):
                if not job.done():
                    continue
                del running[jid]
                try:
                    out = job.result()
                    left = out["unfinished"]
                except Exception as e:            # the job itself died (killed, out of memory)
                    out, left = {"error": f"{type(e).__name__}: {str(e)[-500:]}"}, []
                record("job_end", job_id=jid, pack=i, **out)
                if left and chain < res["max_chain"]:
                    queue.append((i, left, chain + 1))     # the requeue budget is spent: chain a fresh job
            time.sleep(0.2)
    finally:
        if stopping:
            for job, *_ in running.values():
                job._interrupt()         # USR2: each run checkpoints and stops
            deadline = time.time() + 60
            while any(not j.done() for j, *_ in running.values()) and time.time() < deadline:
                time.sleep(0.2)
            for job, *_ in running.values():
                if not job.done():
                    job.cancel()
        record("driver_end", cancelled=bool(stopping))


def cancel(sdir: Path, log=print) -> int:
    """Stop every live submission of the sweep: its runs checkpoint and stay resumable."""
    entries = sweepdir.journal(sdir)
    ended = {e["submission"] for e in entries if e.get("event") == "driver_end"}
    n = 0
    for e in entries:
        if e.get("event") == "submit" and e["submission"] not in ended and e.get("executor") == "local":
            pid = e.get("driver_pid", -1)
            if _alive(pid, e["submission"]):
                os.kill(pid, signal.SIGTERM)
                n += 1
                log(f"cancelling {e['submission']} (driver pid {pid}): its runs checkpoint and stop")
    jobs = slurm_jobs(entries)
    if jobs:
        from jobs import slurm
        states = slurm.sacct_states([j for j, *_ in jobs], min(s or "now-7days" for *_, s in jobs))
        live = [jid for jid, *_ in jobs if slurm.is_live(states.get(jid, "PENDING"))]
        if live:
            # scancel sends SIGTERM (SIGKILL KillWait later): each run checkpoints and stays resumable.
            # No USR2 first: that would make the jobs requeue or chain themselves.
            subprocess.run(["scancel", *live], capture_output=True, timeout=60)
            log(f"cancelled {len(live)} SLURM jobs: {', '.join(live[:10])}{' ...' if len(live) > 10 else ''}")
            n += len(live)
    if not n:
        log("nothing in flight to cancel")
    return n


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drive":
        drive(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python -m jobs.launcher drive SWEEP_DIR SUBMISSION_ID")
