"""From a sweep to jobs: prepare the sweep dir, pick what to submit, pack it, hand it to an executor.

    entry = submit(sweep, SweepDir.under("results", sweep.name), executor="local")   # returns at once
    run_states = states(sweep, sweep_dir)          # run_id -> RunState; reads, never writes
    cancel(sweep_dir)

Executors:
- `local`: packs run as real subprocesses through submitit's LocalExecutor, at most
  `resources.max_parallel` at once, kept going by a detached driver (jobs/sched/local.py), so
  `submit` returns at once and nothing depends on the shell that submitted.
- `slurm`: job arrays through submitit (jobs/sched/slurm.py).
- `debug`: in-process, one pack after another, for a debugger (pdb only at a terminal).

What is in flight is jobs/sched/liveness.py's answer (one squeue and one sacct call, the local
drivers, the run locks); a run that is done (result.json) is never submitted again unless named
with --force or stale (an upstream it consumed changed). `reconcile` is the one step that writes scheduler facts (a node failure, an
out-of-memory kill) into run dirs; submit and resume call it, `status` never does.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from filelock import FileLock

import jobs.spec.selection as selection
import jobs.spec.tasks as tasks
from jobs.sched import liveness, local, slurm
from jobs.sched.packing import pack_job
from jobs.spec.settings import Checkpoint, Resources
from jobs.store import RunState, SweepDir, atomic, now_iso, project_top

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("torch", "submitit", "PyYAML", "pandas", "matplotlib", "filelock", "numpy", "scikit-learn", "pydantic")
EXECUTORS = ("local", "debug", "slurm")


class SubmitError(Exception):
    pass


def resources_of(sweep, stage=None) -> Resources:
    """The resources of `stage` (a Stage; default the first), the sweep-wide ones merged in."""
    stage = stage or sweep.stages[0]
    return Resources.model_validate(stage.spec.get("resources") or {})


def checkpoint_of(sweep, stage=None) -> Checkpoint:
    stage = stage or sweep.stages[0]
    return Checkpoint.model_validate(stage.spec.get("checkpoint") or {})


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


# ---------------------------------------------------------------- the sweep dir

def prepare(sweep, sweep_dir: SweepDir, submission: str, runs=None, code=True) -> None:
    """Write the frozen spec, the plan, the code record (record_code; `code=False`: the caller records
    it once it knows something runs) and each run's config.yaml. `runs` (a command about some runs,
    e.g. `run --only`): their configs only, and the plan only where there is none."""
    for folder in (sweep_dir.runs, sweep_dir.logs, sweep_dir.code):
        folder.mkdir(parents=True, exist_ok=True)
    atomic.write_yaml(sweep_dir.spec, sweep.spec)
    if runs is None or not sweep_dir.plan.exists():
        atomic.write_json(sweep_dir.plan, {
            "name": sweep.name, "task": sweep.task, "spec": str(sweep.path), "submission": submission,
            "stages": [{"name": st.name, "task": st.task, "after": st.after, "from_manifest": st.from_manifest,
                        "runs": len(st.runs)} for st in sweep.stages],
            "runs": [{"run_id": r.run_id, "label": r.label, "config": r.config, "varied": r.varied, "stage": r.stage,
                      "task": r.task, **({"upstream": r.upstream} if r.upstream else {})} for r in sweep.runs]})
    if code:
        record_code(sweep, sweep_dir, submission)
    for r in sweep.runs if runs is None else runs:
        sweep_dir.write_run_config(r, r.task, stage=r.stage, **({"upstream": r.upstream} if r.upstream else {}))


UNTRACKED_MAX_BYTES = 1 << 20      # an untracked file larger than this is named in the diff, not copied


def record_code(sweep, sweep_dir: SweepDir, submission: str) -> None:
    """code/<submission>.json (and .diff): the state of the repository the sweep's task lives in, the
    task files and the modules they import from their own tree copied (what the jobs import), and
    hpcsweep's own version apart."""
    snapshot = snapshot_tasks(sweep, sweep_dir, submission)
    first = tasks.resolve(sweep.stages[0].task, Path(sweep.path).resolve().parent)
    version, diff = code_version(first.file.parent, exclude=sweep_dir.path.parent)
    version["tasks"] = snapshot
    atomic.write_json(sweep_dir.code_version(submission), version)
    if diff:
        atomic.write_text(sweep_dir.code_diff(submission), diff)


def about() -> dict:
    """hpcsweep's own version and, run from a git checkout, its commit and whether its tree is dirty
    (None from an installed wheel)."""
    try:
        version = metadata.version("hpcsweep")
    except metadata.PackageNotFoundError:
        import tomllib
        try:
            version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, ValueError):
            version = None
    commit = dirty = None
    if (REPO / ".git").exists():
        commit, dirty, _ = _git_state(REPO, with_diff=False)
    return {"version": version, "commit": commit, "dirty": dirty}


def _git_state(folder, exclude=None, with_diff=True):
    """(commit, dirty, diff) of the git repository `folder` lies in ((None, None, "") outside one). The
    diff holds untracked files; those under `exclude` (the sweeps' root, which hpcsweep itself writes
    into a project) count for nothing."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    top = git("rev-parse", "--show-toplevel").strip()
    if not top:
        return None, None, ""
    commit = git("rev-parse", "HEAD").strip() or None
    skip = str(Path(exclude).resolve()) + os.sep if exclude else None
    untracked = [n for n in git("ls-files", "--others", "--exclude-standard", "--full-name", ":/").splitlines()
                 if not (skip and (str(Path(top, n)) + os.sep).startswith(skip))]
    changed = git("diff", "HEAD", "--stat").strip()
    dirty = bool(changed or untracked)
    if not with_diff or not dirty:
        return commit, dirty, ""
    diff = git("diff", "HEAD")
    for name in untracked:
        path = Path(top, name)
        if path.is_file() and path.stat().st_size <= UNTRACKED_MAX_BYTES:
            diff += subprocess.run(["git", "diff", "--no-index", "--", "/dev/null", name], cwd=top,
                                   capture_output=True, text=True, timeout=30).stdout
        elif path.is_file():
            diff += f"# untracked, {path.stat().st_size} bytes, not copied: {name}\n"
    return commit, dirty, diff


def code_version(folder=REPO, exclude=None):
    """(the record, the diff): the git commit, dirty flag and repository of `folder` (the task's; by
    default hpcsweep's own), hpcsweep's version, package versions; the diff of a dirty tree, untracked
    files included (but those under `exclude`)."""
    commit, dirty, diff = _git_state(folder, exclude)
    packages = {}
    for p in PACKAGES:
        try:
            packages[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            packages[p] = None
    return {"commit": commit, "dirty": dirty, "repository": str(project_top(folder)) if commit else None,
            "python": sys.version.split()[0], "packages": packages,
            "hpcsweep": about(), "host": socket.gethostname(), "time": now_iso()}, diff


def snapshot_tasks(sweep, sweep_dir, submission) -> dict:
    """Copy each task file that lives outside the repository's models/ into code/<submission>/ (the job
    imports that copy); task -> {file, sha256, ref, snapshot (the copy, relative to code/)} of every task."""
    out = {}
    for stage in sweep.stages:
        spec_dir = Path(sweep.path).resolve().parent
        ref = tasks.resolve(stage.task, spec_dir)
        data = ref.file.read_bytes()
        out[stage.task] = {"file": str(ref.file), "sha256": hashlib.sha256(data).hexdigest(), "ref": ref.ref}
        if ref.kind == "file":
            digest = out[stage.task]["sha256"]
            copy = sweep_dir.task_snapshot(submission, tasks.in_project(ref.file, spec_dir), digest)
            atomic.write_bytes(copy, data)
            out[stage.task]["snapshot"] = copy.relative_to(sweep_dir.code).as_posix()
            # the modules it imports from its own folder go beside the copy: the job imports those too
            helpers = {}
            for module in tasks.local_imports(ref.file):
                helper = sweep_dir.task_snapshot(submission, tasks.in_project(module, spec_dir), digest)
                atomic.write_bytes(helper, module.read_bytes())
                helpers[str(module)] = helper.relative_to(sweep_dir.code).as_posix()
            if helpers:
                out[stage.task]["modules"] = helpers
    return out


# ---------------------------------------------------------------- what is in flight

BROKEN = (RunState.FAILED, RunState.CORRUPT, RunState.BLOCKED)


def states(sweep, sweep_dir: SweepDir, view=None) -> dict:
    """run_id -> RunState of every run of the sweep. Reads the sweep dir and the scheduler; writes nothing.

    What is in flight is jobs/sched/liveness.py's answer (`view`, when the caller has one). A
    downstream run whose upstream run failed (or is itself blocked, or is unfinished with nothing
    running it) is `blocked`, not failed: its own code never ran. A done downstream run whose
    upstream changed since it consumed it (a rerun, a replaced registry entry) is `stale`."""
    entries = sweep_dir.read_journal()
    live = (view or liveness.look(sweep_dir, [r.run_id for r in sweep.runs], entries)).live
    killed = scheduler_failures(sweep_dir, entries)
    out, results, consumed = {}, {}, _consumed(sweep)
    for r in sweep.runs:              # stage by stage: an upstream's state is known before its downstream's
        run_dir = sweep_dir.run(r.run_id)
        state = run_dir.state(r.run_id in live)
        if r.run_id in killed and state != RunState.DONE:
            state = RunState.FAILED
        if state not in (RunState.DONE, RunState.CORRUPT) and _held_up(r, out, live):
            state = RunState.BLOCKED
        if state == RunState.DONE and (r.upstream or r.run_id in consumed):
            results[r.run_id] = run_dir.read_result() or {}
            if r.upstream and stale_reason(r, results[r.run_id], out, results):
                state = RunState.STALE
        out[r.run_id] = state
    return out


def _consumed(sweep) -> set:
    """The in-sweep runs some later stage consumes."""
    return {u["run_id"] for r in sweep.runs for u in r.upstream.values() if "run_dir" not in u}


def stale_reason(run, result: dict, known: dict, results: dict) -> str:
    """Why a done downstream run no longer matches what it consumed ("" when it does): the upstream
    run is not done any more, or finished anew with another final checkpoint, or the registry
    entry it came from names another checkpoint now. A result written before runs recorded their
    lineage is taken as it is."""
    lineage = result.get("upstream")
    if not isinstance(lineage, dict):
        return ""
    for stage, record in run.upstream.items():
        used = lineage.get(stage)
        if not isinstance(used, dict):
            continue
        if "run_dir" in record:              # a registered checkpoint (from_manifest)
            now = {"step": record.get("step"), "sha256": record.get("sha256")}
            where = f"registry entry {record.get('name', '?')!r}"
        else:
            if known.get(record["run_id"]) != RunState.DONE:
                return f"upstream run {record['run_id']} ({stage}) is {known.get(record['run_id'])} now"
            now = (results.get(record["run_id"]) or {}).get("checkpoint") or {}
            where = f"upstream run {record['run_id']} ({stage})"
        if (now.get("step"), now.get("sha256")) != (used.get("step"), used.get("sha256")):
            return (f"{where} now names step {now.get('step')} (sha256 {str(now.get('sha256'))[:12]}); "
                    f"this run consumed step {used.get('step')} (sha256 {str(used.get('sha256'))[:12]})")
    return ""


def _held_up(run, known, live) -> bool:
    for up in run.upstream.values():
        st = known.get(up["run_id"])          # None: a registered checkpoint of another sweep
        if st in BROKEN or (st in (RunState.PENDING, RunState.STALE) and run.run_id not in live):
            return True
    return False


def scheduler_failures(sweep_dir: SweepDir, entries=None) -> dict:
    """run_id -> error text, for runs the scheduler says died of the machine (node failure, OOM, a
    job that died before its run started) and whose run dirs do not say so yet. Reads only."""
    jobs = slurm.jobs_in(sweep_dir.read_journal() if entries is None else entries)
    return slurm.infrastructure_failures(sweep_dir, jobs, slurm.job_states(jobs)) if jobs else {}


def scheduler_notes(sweep_dir: SweepDir, entries=None) -> dict:
    """run_id -> what the scheduler says stopped a run's last attempt (TIMEOUT, preemption, cancel)
    and what resume will do. Reads only."""
    jobs = slurm.jobs_in(sweep_dir.read_journal() if entries is None else entries)
    return slurm.interruptions(sweep_dir, jobs, slurm.job_states(jobs)) if jobs else {}


def reconcile(sweep_dir: SweepDir) -> list:
    """Write scheduler facts into the sweep dir: the failures of scheduler_failures into the runs'
    error.txt (so they stay failed once sacct forgets the jobs), and the jobs of a submit that died
    between sbatch and its journal entry (found by the names its intents gave them) into the
    journal. The run_ids whose error was written. Submit, resume and cancel call it, holding the
    submit lock; `status` never does."""
    orphans = slurm.orphans_in(sweep_dir.read_journal())
    if orphans:
        found = slurm.recover(orphans)
        for submission in dict.fromkeys(e["submission"] for e in orphans):
            jobs = [j for j in found if j.submission == submission]
            first = next(e for e in orphans if e["submission"] == submission)
            sweep_dir.append_journal({"event": "submit", "submission": submission, "executor": "slurm",
                                      "time": first.get("time"), "since": first.get("since"), "recovered": True,
                                      "runs": [r for j in jobs for r in j.runs],
                                      "job_ids": [j.job_id for j in jobs], "packs": [j.runs for j in jobs]})
    found = scheduler_failures(sweep_dir)
    for run_id, text in found.items():
        atomic.write_text(sweep_dir.run(run_id).error, text)
    return list(found)


# ---------------------------------------------------------------- submit

def new_submission_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def submit(sweep, sweep_dir: SweepDir, *, job_class, executor=None, force=(), retry_failed=False, cluster=None,
           profiles=None, log=print, only=None) -> dict:
    """Submit every run that is neither done nor in flight (plus `force`d ones); the journal entry.

    `job_class` is what a job executes (jobs.runtime.runner.PackJob: the CLI hands it in).
    `only`: a set of run ids (--only / --stage): submit none but these and the runs downstream of them
    (a downstream run still waits for its upstream runs, which are not submitted unless named too).
    """
    executor = executor or default_executor()
    if executor not in EXECUTORS:
        raise SubmitError(f"unknown executor {executor!r} ({', '.join(EXECUTORS)})")
    profile = None
    if executor == "slurm":
        if not shutil.which("sbatch"):
            raise SubmitError("executor slurm: no sbatch on PATH (use --executor local here)")
        try:
            profile = slurm.load_profile(cluster, profiles, spec=sweep.path)
            slurm.check_path(sweep_dir.path.resolve())
        except (slurm.ProfileError, ValueError) as e:
            raise SubmitError(str(e))
    sweep_dir.path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_dir.submit_lock)):
        submission = new_submission_id()
        forced = _resolve_force(sweep, force)
        prepare(sweep, sweep_dir, submission, code=False)
        reconcile(sweep_dir)
        view = liveness.settle(sweep_dir, [r.run_id for r in sweep.runs], log=log)
        for run_id, job in view.ending.items():        # still completing after the wait: not twice at once
            view.live[run_id] = job
        if view.ending:
            log(f"{len(view.ending)} runs are still held by ending jobs ({', '.join(sorted(set(view.ending.values()))[:5])}): "
                "left for the next resume")
        run_states = states(sweep, sweep_dir, view)
        busy = [r for r in forced if run_states[r.run_id] == RunState.IN_FLIGHT]
        if busy:
            said = [r.label or r.run_id for r in busy]
            said = [f"{x} (held by pid {h['pid']} on {h['host']}: {h.get('command', '')[:80]})"
                    if isinstance(h := view.live.get(r.run_id), dict) else x for x, r in zip(said, busy)]
            raise SubmitError("cannot --force runs that are in flight: " + ", ".join(said) + " (cancel them first)")
        for r in forced + [r for r in sweep.runs if run_states[r.run_id] == RunState.STALE
                           and (only is None or r.run_id in only)]:
            _set_aside(sweep_dir, r)      # a stale run's result is kept beside, as a forced one's
            run_states[r.run_id] = RunState.NEW
        wanted = {RunState.NEW, RunState.PENDING, RunState.CORRUPT} | ({RunState.FAILED} if retry_failed else set())
        todo = _todo(sweep, run_states, wanted)
        if only is not None:
            named = _with_downstream(sweep, set(only) | {f.run_id for f in forced})
            todo = [r for r in todo if r.run_id in named]
        todo = _search_todo(sweep, sweep_dir, run_states, todo)
        if executor == "slurm":
            todo = _rewire(sweep, run_states, wanted, todo, view, log)
        counts = count(run_states.values())
        going = {r.run_id for r in todo}
        skipped = count(st for rid, st in run_states.items() if rid not in going)
        if not todo:
            log(f"nothing to submit: {describe(counts)}" + _hint(counts, retry_failed))
            return {}
        record_code(sweep, sweep_dir, submission)          # a snapshot only of what is submitted
        waves = _waves(sweep, todo)
        entry = {"event": "submit", "submission": submission, "time": now_iso(), "executor": executor,
                 "host": socket.gethostname(), "runs": [r.run_id for r in todo],
                 "packs": [pack for _, packs in waves for pack in packs],
                 "force": [r.run_id for r in forced], "code": str(sweep_dir.code_version(submission).relative_to(sweep_dir.path)),
                 "spec_sha256": hashlib.sha256(json.dumps(sweep.spec, sort_keys=True, default=str).encode()).hexdigest()}
        if executor == "local":
            # intent before action: the driver journals its pid itself, so a submit killed before
            # its entry leaves a driver that status, resume and cancel still find (SLURM: per sbatch call)
            sweep_dir.append_journal({"event": "intent", "submission": submission, "time": entry["time"],
                                      "executor": executor, "host": entry["host"], "runs": entry["runs"]})
        if executor == "local":
            jobs = [_job(job_class, sweep, sweep_dir, stage, pack, "local", submission, slot)
                    for stage, packs in waves for slot, pack in enumerate(packs)]
            entry["driver_pid"] = local.start_driver(sweep_dir, submission, jobs,
                                                     max(resources_of(sweep, st).parallel_jobs("local") for st, _ in waves),
                                                     max(resources_of(sweep, st).max_chain for st, _ in waves))
        elif executor == "slurm":
            entry.update(_submit_slurm(job_class, sweep, sweep_dir, submission, waves, profile))
        sweep_dir.append_journal(entry)
        log(f"submitted {len(todo)} runs in {len(entry['packs'])} jobs ({executor}) as {submission}"
            + (f" ({', '.join(f'{st.name}: {sum(map(len, packs))}' for st, packs in waves)})" if len(sweep.stages) > 1 else "")
            + (f"; skipped {describe(skipped)}" if skipped else ""))
    if executor == "debug":
        _run_debug(job_class, sweep, sweep_dir, submission, waves, log)
    return entry


def _todo(sweep, run_states, wanted) -> list:
    """The runs to submit now, stage by stage. A blocked run goes too once every upstream run of
    it is done, in flight, or submitted now (resume after fixing the upstream: fresh dependencies)."""
    todo, going = [], set()
    for r in sweep.runs:
        state = run_states[r.run_id]
        ready = all(run_states.get(u["run_id"]) in (None, RunState.DONE, RunState.IN_FLIGHT) or u["run_id"] in going
                    for u in r.upstream.values())
        if (state in wanted and ready) or (state == RunState.BLOCKED and ready):
            todo.append(r)
            going.add(r.run_id)
    return todo


def _with_downstream(sweep, run_ids) -> set:
    """`run_ids` and every run that consumes one of them, transitively: resuming a run whose job was
    cancelled brings back the downstream runs its cancel left without an upstream job to wait on."""
    out = set(run_ids)
    for r in sweep.runs:              # stage order: an upstream is decided before its downstream
        if any(u["run_id"] in out for u in r.upstream.values()):
            out.add(r.run_id)
    return out


def _rewire(sweep, run_states, wanted, todo, view, log) -> list:
    """Downstream runs queued behind a job of an upstream run that is submitted again now (its job was
    cancelled or failed) wait on a dependency that can never be met: cancel those pending jobs and
    submit their runs again, after the new upstream jobs. The runs to submit."""
    for _ in sweep.stages:
        going = {r.run_id for r in todo}
        doomed = {view.jobs[r.run_id][0] for r in sweep.runs
                  if run_states[r.run_id] == RunState.IN_FLIGHT and view.jobs.get(r.run_id, ("", ""))[1] == "PENDING"
                  and any(u["run_id"] in going for u in r.upstream.values() if "run_dir" not in u)}
        if not doomed:
            break
        slurm.cancel(sorted(doomed))
        log(f"cancelled {len(doomed)} pending downstream jobs that waited on replaced upstream jobs: "
            f"{', '.join(sorted(doomed)[:5])}; their runs go again with the new ones")
        for r in sweep.runs:
            if view.jobs.get(r.run_id, ("", ""))[0] in doomed:
                run_states[r.run_id] = RunState.PENDING
                view.live.pop(r.run_id, None)
        todo = _todo(sweep, run_states, wanted)
    return todo


def _search_todo(sweep, sweep_dir, run_states, todo) -> list:
    """A search stage goes as a whole (its workers pick the trials) when it has work left and no
    worker of it is live: a trial unfinished, or a decision the journal allows (an open claim of a
    worker that died, a promotion); else none of its trials goes."""
    from jobs.search.engine import Engine
    going = {r.run_id for r in todo}
    out = [r for r in todo if not sweep.stage_of(r).search]
    for st in sweep.stages:
        if not st.search:
            continue
        live = any(run_states[r.run_id] == RunState.IN_FLIGHT for r in st.runs)
        if not live and (any(r.run_id in going for r in st.runs)
                         or Engine(sweep_dir, st.name, st.search, [r.run_id for r in st.runs]).unfinished()):
            out.extend(st.runs)
    order = {r.run_id: i for i, r in enumerate(sweep.runs)}
    return sorted(out, key=lambda r: order[r.run_id])


def search_job(stage, slot) -> dict:
    """What a search's worker job carries (jobs/runtime/runner.py PackJob.search)."""
    return {"stage": stage.name, "slot": slot, "settings": stage.search.model_dump()}


def _waves(sweep, todo) -> list:
    """[(stage, packs)] in stage order; a stage's packs hold runs that wait on the same upstream runs.
    A search stage: one pack per worker (search.parallel), each over every trial."""
    out = []
    for st in sweep.stages:
        runs = [r for r in todo if r.stage == st.name]
        if not runs:
            continue
        if st.search:
            out.append((st, [[r.run_id for r in runs] for _ in range(st.search.parallel)]))
            continue
        size = resources_of(sweep, st).pack
        groups = {}
        for r in runs:
            groups.setdefault(tuple(sorted(u["run_id"] for u in r.upstream.values())), []).append(r.run_id)
        out.append((st, [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]))
    return out


def _needs(sweep, pack) -> list:
    """The in-sweep upstream runs a pack's runs wait for."""
    ids = set(pack)
    return sorted({u["run_id"] for r in sweep.runs if r.run_id in ids for u in r.upstream.values() if "run_dir" not in u})


def _job(job_class, sweep, sweep_dir, stage, pack, executor, submission="", slot=0):
    job = pack_job(job_class, sweep_dir, pack, resources_of(sweep, stage), checkpoint_of(sweep, stage), executor)
    job.needs, job.submission = _needs(sweep, pack), submission
    if stage.search:
        job.search = search_job(stage, slot)
    return job


def _hint(counts, retry_failed) -> str:
    if counts.get(RunState.FAILED) and not retry_failed:
        return "; add --retry-failed to rerun the failed ones"
    if counts.get(RunState.BLOCKED):
        return "; the blocked runs wait on failed upstream runs: --retry-failed reruns those, then them"
    return ""


def _resolve_force(sweep, force):
    """The runs `force` names: Runs (the CLI selects them), or run ids / labels / key=value pairs."""
    out = {}
    for name in force:
        if hasattr(name, "run_id"):
            out[name.run_id] = name
            continue
        found = [r for r in sweep.runs if selection.matches(r, name)]
        if not found:
            raise SubmitError(f"--force {name}: no run of {sweep.name} has that label or run_id "
                              "(or matches those key=value pairs)")
        out.update((r.run_id, r) for r in found)
    return list(out.values())


def _set_aside(sweep_dir, run):
    """Move a forced run's old dir aside (never deleted) and start it anew."""
    run_dir = sweep_dir.run(run.run_id)
    if run_dir.path.exists():
        os.replace(run_dir.path, run_dir.set_aside_name(f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"))
    sweep_dir.write_run_config(run, run.task, stage=run.stage, **({"upstream": run.upstream} if run.upstream else {}))


def count(values) -> dict:
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def describe(counts) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"


def _submit_slurm(job_class, sweep, sweep_dir, submission, waves, profile) -> dict:
    """Submit every stage's packs as job arrays, downstream ones held by SLURM dependencies on the
    upstream jobs (afterok; --kill-on-invalid-dep, so a failed upstream removes what waits on it)."""
    since = slurm.since_now()
    holder = {}                                      # run_id -> the job (A_i) that runs it
    for job in slurm.jobs_in(sweep_dir.read_journal()):
        for run_id in job.runs:
            holder[run_id] = job.job_id
    live = liveness.look(sweep_dir, list(holder)).live
    job_ids, calls, place = [], 0, {}
    chunk = max(1, slurm.max_array_size() - 1)          # the array *index* must stay below MaxArraySize
    for stage, packs in waves:
        res, ckpt = resources_of(sweep, stage), checkpoint_of(sweep, stage)
        job_res = slurm.resources_for(res, profile)
        signal_delay = job_res.get("signal_delay_s") or int(ckpt.margin_s_for(job_res["time_min"]))
        params = slurm.executor_params({**job_res, "signal_delay_s": signal_delay}, res, profile,
                                       job_name=sweep.name if len(sweep.stages) == 1 else f"{sweep.name}.{stage.name}",
                                       pack_size=1 if stage.search else len(packs[0]))
        max_requeue = res.max_requeue if job_res["requeue"] else 0
        by_deps = {}
        for slot, pack in enumerate(packs):
            needs = _needs(sweep, pack)
            deps = tuple(sorted({holder[u] for u in needs
                                 if u in holder and (u in live or u in {x for p in job_ids for x in p[1]})}))
            job = pack_job(job_class, sweep_dir, pack, res.model_copy(update={"time_min": job_res["time_min"]}), ckpt, "slurm")
            job.max_requeue, job.submission, job.needs = max_requeue, submission, needs
            job.chain = {"params": params, "left": res.max_chain}
            job.chain_submit = slurm.submit_chained
            if stage.search:
                job.search = search_job(stage, slot)
            place[id(job)] = (stage.name, slot)
            by_deps.setdefault(deps, []).append(job)
        for deps, group in by_deps.items():
            group_params = dict(params)
            if deps:
                group_params["dependency"] = "afterok:" + ":".join(deps)
                group_params["additional_parameters"] = {**params["additional_parameters"], "kill_on_invalid_dep": "yes"}
            for i in range(0, len(group), chunk):
                jobs = group[i:i + chunk]
                name = slurm.chunk_name(params["job_name"], submission, calls)
                sweep_dir.append_journal({"event": "intent", "submission": submission, "executor": "slurm",
                                          "time": now_iso(), "since": since, "name": name,
                                          "packs": [j.run_ids for j in jobs]})
                try:
                    submitted = slurm.submit_packs(sweep_dir, jobs, {**group_params, "job_name": name}, chunk=len(jobs))
                except Exception as e:          # sbatch refused: say what it said
                    raise SubmitError(f"sbatch failed: {e}")
                calls += 1
                for job, sub in zip(jobs, submitted):
                    for run_id in job.run_ids:
                        holder[run_id] = str(sub.job_id)
                    job_ids.append((str(sub.job_id), job.run_ids, place[id(job)]))
    # the journal's packs are in wave order, as job_ids are (a search's packs are alike: by place, not content)
    order = {at: jid for jid, _, at in job_ids}
    return {"cluster": profile.name, "job_ids": [order[stage.name, i] for stage, packs in waves for i in range(len(packs))],
            "since": since}


def _run_debug(job_class, sweep, sweep_dir, submission, waves, log):
    import submitit
    ex = submitit.DebugExecutor(folder=sweep_dir.logs)
    for stage, packs in waves:
        for i, pack in enumerate(packs):
            job = _job(job_class, sweep, sweep_dir, stage, pack, "debug", submission, i)
            if not all(sweep_dir.run(u).result.exists() for u in job.needs):
                log(f"{stage.name} pack {i + 1}/{len(packs)}: blocked (an upstream run did not finish)")
                continue
            out = ex.submit(job).result()
            log(f"{stage.name} pack {i + 1}/{len(packs)}: " + ", ".join(f"{o}" for o in out["outcomes"].values()))
    sweep_dir.append_journal({"event": "driver_end", "submission": submission, "time": now_iso()})


# ---------------------------------------------------------------- cancel

def cancel(sweep_dir: SweepDir, log=print, runs=None) -> int:
    """Stop every live submission of the sweep, or (`runs`: run ids) the jobs of exactly those runs:
    their runs checkpoint and stay resumable. How many jobs (or drivers) were told to stop."""
    if not sweep_dir.exists():
        log("nothing in flight to cancel (nothing was submitted here)")
        return 0
    with FileLock(str(sweep_dir.submit_lock)):
        reconcile(sweep_dir)          # the jobs of an interrupted submit are journaled, so cancelled too
    entries = sweep_dir.read_journal()
    if runs is not None:
        return _cancel_runs(sweep_dir, entries, list(runs), log)
    n = local.cancel(entries, log)
    jobs = slurm.jobs_in(entries)
    if jobs:
        queue, acct = slurm.queue_states(jobs), slurm.job_states(jobs)
        seen = liveness.answered(queue, acct)
        live = list(dict.fromkeys(job.job_id for job in jobs if liveness.verdict(job, queue, acct, seen=seen) == liveness.LIVE))
        if live:
            slurm.cancel(live)
            log(f"cancelled {len(live)} SLURM jobs: {', '.join(live[:10])}{' ...' if len(live) > 10 else ''}")
            n += len(live)
    if not n:
        log("nothing in flight to cancel")
    return n


def _cancel_runs(sweep_dir, entries, run_ids, log) -> int:
    """scancel the live jobs (array tasks) that hold `run_ids`, and nothing else. A job whose pack
    holds other runs too is refused: cancelling it would stop those as well."""
    view = liveness.look(sweep_dir, run_ids, entries)
    packs = {job.job_id: job.runs for job in liveness.slurm_jobs(entries)}
    wanted, idle, local_runs = {}, [], []
    for run_id in run_ids:
        if run_id in view.jobs:
            wanted.setdefault(view.jobs[run_id][0], []).append(run_id)
        elif run_id in view.live:
            local_runs.append(run_id)
        else:
            idle.append(run_id)
    stopped = _cancel_local_runs(sweep_dir, entries, local_runs, view, log) if local_runs else 0
    shared = {job: sorted(set(packs.get(job, ())) - set(mine)) for job, mine in wanted.items()}
    shared = {job: others for job, others in shared.items() if others}
    if shared:
        job, others = next(iter(shared.items()))
        raise SubmitError(f"job {job} runs a pack of runs: cancelling it would also stop {', '.join(others[:5])}"
                          f"{' ...' if len(others) > 5 else ''}; name those with --only too, or cancel the sweep")
    if idle:
        log(f"not in flight, nothing to stop: {', '.join(idle[:10])}{' ...' if len(idle) > 10 else ''}")
    if wanted:
        slurm.cancel(sorted(wanted))
        log(f"cancelled {len(wanted)} SLURM jobs: " + ", ".join(f"{job} ({', '.join(rids)})" for job, rids in
                                                                 sorted(wanted.items())[:10]))
    return len(wanted) + stopped


def _cancel_local_runs(sweep_dir, entries, run_ids, view, log) -> int:
    """Take runs out of their local submissions: the driver starts and chains none of them, and a run
    executing now is told to stop (SIGTERM to its process: it checkpoints and stays resumable). A run
    packed with others that keep going is refused, as on SLURM. How many runs were stopped or dropped."""
    import signal
    by_submission, running = {}, []
    packs = {}                       # run_id -> the runs of the local job that holds it now (the driver's "job" events)
    for e in entries:
        if e.get("event") == "job" and isinstance(e.get("runs"), list):
            for rid in e["runs"]:
                packs[rid] = e["runs"]
    for run_id in run_ids:
        who = view.live[run_id]
        holder = sweep_dir.run(run_id).read_holder() if sweep_dir.run(run_id).holder.exists() else None
        submission = who if isinstance(who, str) else None
        if holder:
            others = sorted(set(packs.get(run_id, [run_id])) - set(run_ids))
            if others:
                raise SubmitError(f"{run_id} runs in one local job with {', '.join(others[:5])}: stopping it would "
                                  "stop those too; name them with --only as well, or cancel the sweep")
            running.append(holder)
        submission = submission or next((e.get("submission") for e in reversed(entries) if e.get("event") == "job"
                                         and run_id in (e.get("runs") or [])), None)
        if submission:
            by_submission.setdefault(submission, []).append(run_id)
    for submission, rids in by_submission.items():
        for rid in rids:
            atomic.append_jsonl(sweep_dir.cancelled_runs(submission), {"run_id": rid, "time": now_iso()})
    for holder in running:
        if holder.get("host") == socket.gethostname() and local.process_alive(holder.get("pid", -1), holder.get("process_started")):
            os.kill(holder["pid"], signal.SIGTERM)
    log(f"cancelled {len(run_ids)} runs of the local executor ({', '.join(run_ids[:10])}): "
        f"{len(running)} stopping (they checkpoint), the rest will not start; resume brings them back")
    return len(run_ids)
