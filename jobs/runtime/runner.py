"""In the job: run a pack of runs, each with its own RunContext, and requeue what is unfinished.

A job (one submitit job, one SLURM array task) calls `PackJob(...)()`. For each run of its
pack that is not done it takes the run's lock (so no run ever executes twice at once), reads
its config.yaml, calls `models.<task>.train(cfg, ctx)` and writes result.json as the last act,
or error.txt with the traceback. SIGUSR2 (submitit's pre-timeout and preemption signal) and
SIGTERM only set a flag: the task notices it at its next `ctx.should_checkpoint`, saves, and
`ctx.save` raises Interrupted; then the job requeues itself while its budget lasts, else it
ends and reports the runs left for the launcher to chain into a fresh job.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

import jobs.spec.tasks as tasks
from jobs.spec.settings import Checkpoint, Resources
from jobs.store import Outcome, RunDir, SweepDir, atomic, now_iso

LOCAL_REQUEUE_RETURN_CODE = 144     # submitit's local controller restarts a job that exits with it
DONE, INTERRUPTED, FAILED, BUSY = Outcome.DONE, Outcome.INTERRUPTED, Outcome.FAILED, Outcome.BUSY
BLOCKED = Outcome.BLOCKED
EXIT_CODES = {DONE: 0, INTERRUPTED: 3, FAILED: 4, BUSY: 5, BLOCKED: 6}


def job_id() -> str:
    """This job's id as the scheduler knows it ("" outside a job)."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    for var in ("SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID", "SUBMITIT_DEBUG_JOB_ID"):
        if os.environ.get(var):
            return os.environ[var]
    return f"pid{os.getpid()}"


def _device(gpus: int, local_rank: int = 0) -> str:
    if gpus:
        import torch
        if torch.cuda.is_available():
            return f"cuda:{local_rank}" if local_rank else "cuda"
    return "cpu"


class RunLock:
    """The run's lock (run.lock) and, beside it, who holds it (pid, host, command), for --force to name."""

    def __init__(self, run_dir):
        self.run_dir, self.lock = run_dir, FileLock(str(run_dir.lock))

    def acquire(self) -> bool:
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            return False
        atomic.write_json(self.run_dir.holder, {"pid": os.getpid(), "host": socket.gethostname(),
                                                "process_started": psutil.Process().create_time(),
                                                "job_id": job_id(), "command": " ".join(sys.argv)[:300],
                                                "since": now_iso(),
                                                **({"scheduler": "slurm"} if os.environ.get("SLURM_JOB_ID") else {})},
                          durable=False)      # read only while its process lives: no fsync (2 per run)
        return True

    def release(self) -> None:
        try:
            self.run_dir.holder.unlink()
        except FileNotFoundError:
            pass
        self.lock.release()


def run_one(sdir, run_id, *, deadline=None, margin_s=60.0, gpus=0, cpus=0, checkpoint=None,
            on_ctx=None, reraise=False, submission="") -> str:
    """Run (or resume) one single-process run to its end or its next interruption; the outcome."""
    sweep_dir = SweepDir(sdir)
    run_dir = sweep_dir.run(run_id)
    if finished(run_dir):
        return DONE
    lock = RunLock(run_dir)
    if not lock.acquire():
        return BUSY                   # another job holds it: never run one run twice at once
    try:
        if finished(run_dir):
            return DONE
        if block(sweep_dir, run_dir, submission):
            return BLOCKED
        if cpus:
            limit_threads(cpus)
        return _attempt(sweep_dir, run_dir, deadline, margin_s, _device(gpus), checkpoint, on_ctx, reraise,
                        submission=submission)
    finally:
        lock.release()


def run_rank(sdir, run_id, ranks, *, deadline=None, margin_s=60.0, gpus=0, cpus=0, checkpoint=None,
             on_ctx=None, submission="") -> str:
    """This process's part in a distributed run (jobs/runtime/distributed.py says which rank); the outcome.

    Rank 0 takes the run's lock and writes every file; the group agrees whether to go on at all."""
    from jobs.runtime import distributed
    sweep_dir = SweepDir(sdir)
    run_dir = sweep_dir.run(run_id)
    if cpus:
        limit_threads(cpus)
    device = _device(gpus, ranks.local_rank)
    attempt = len(run_dir.starts()) + 1          # read by every rank before rank 0 writes the start
    distributed.init(ranks, device)
    lock = RunLock(run_dir) if ranks.rank == 0 else None
    together = False
    try:
        verdict = EXIT_CODES[DONE] if (ranks.rank == 0 and finished(run_dir)) else 0
        if lock is not None and not verdict and not lock.acquire():
            lock, verdict = None, EXIT_CODES[BUSY]
        if lock is not None and not verdict and block(sweep_dir, run_dir, submission):
            verdict = EXIT_CODES[BLOCKED]
        verdict = distributed.broadcast_int(verdict, device)
        if verdict:
            outcome = {v: k for k, v in EXIT_CODES.items()}[verdict]
        else:
            outcome = _attempt(sweep_dir, run_dir, deadline, margin_s, device, checkpoint, on_ctx, False,
                               ranks=ranks, attempt=attempt, submission=submission)
        # done and interrupted are agreed outcomes: every rank gets here; a failed one may be alone
        together = outcome in (DONE, INTERRUPTED, BUSY, BLOCKED)
        return outcome
    finally:
        if lock is not None:
            lock.release()
        # tear the group down together: a rank that leaves while another still talks to it aborts
        # in gloo's C++ threads ("terminate called without an active exception")
        distributed.leave(together, device)


def unfinished_upstream(sweep_dir, run_dir) -> str:
    """Why the run may not start ("" : it may): an in-sweep upstream run it consumes has no readable
    result. A job's exit code says nothing of its runs (a pack exits 0 when a run raised or chained),
    so a SLURM dependency alone would let a downstream run take an intermediate checkpoint."""
    try:
        meta = run_dir.read_config()
    except (OSError, ValueError):
        return ""                          # unreadable: _attempt fails it with the reason
    for stage, record in (meta.get("upstream") or {}).items():
        if isinstance(record, dict) and record.get("run_id") and not record.get("run_dir"):
            if sweep_dir.run(record["run_id"]).read_result() is None:
                return (f"upstream run {record['run_id']} ({stage}) is not done: this run starts only "
                        "on a finished upstream; resume runs it once the upstream is")
    return ""


def block(sweep_dir, run_dir, submission="") -> bool:
    """Record and return whether the run is blocked by an unfinished upstream run (no result, no error)."""
    why = unfinished_upstream(sweep_dir, run_dir)
    if why:
        atomic.append_jsonl(run_dir.attempts, {"event": "blocked", "job_id": job_id(), "submission": submission,
                                               "time": time.time(), "reason": why}, lock=False)
        print(f"hpcsweep: run {run_dir.run_id} not started: {why}", file=sys.stderr, flush=True)
    return bool(why)


def finished(run_dir) -> bool:
    """A readable result.json: done. An unreadable one (a torn copy, a full disk) is moved aside and
    the run goes on from its newest valid checkpoint."""
    if not run_dir.result.exists():
        return False
    if run_dir.read_result() is not None:
        return True
    os.replace(run_dir.result, run_dir.corrupt_result(int(time.time())))
    return False


def limit_threads(cpus):
    """Use the cores the job asked for, no more: jobs side by side must not oversubscribe a node."""
    import torch
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)


@contextlib.contextmanager
def working_dir(path):
    """The task runs in its run dir: whatever directory the job started in (the submitter's, the
    repository), a relative path the task writes lands in its own run dir. Every file of the run is
    written through absolute paths, so a task's own os.chdir moves none of them; the process's
    directory is given back afterwards (the debug executor runs tasks in the CLI's process)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        try:
            os.chdir(before)
        except OSError:              # the directory went away meanwhile: somewhere that exists
            os.chdir(Path(path).anchor)


def load_task(ref: str, sweep_dir=None, submission=""):
    """The train function a run's config names (jobs/spec/tasks.py's forms). A task file of the user's
    is imported from the copy the submission snapshot (code/<submission>/), when there is one: the
    code that ran is the code that was recorded."""
    m = tasks.FILE_REF.match(ref)
    if tasks.SHORT.match(ref):
        return importlib.import_module(f"models.{ref}").train
    if m:
        path = Path(m["file"])
        if sweep_dir is not None and submission:
            copy = _snapshot_of(sweep_dir, submission, ref) or sweep_dir.code_snapshot(submission) / path.name
            path = copy if copy.is_file() else path
        name = "hpcsweep_task_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name not in sys.modules:
            # its sibling modules import as at home: from the snapshot beside the copy (taken with it)
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return getattr(sys.modules[name], m["func"])
    m = tasks.MODULE_REF.match(ref)
    return getattr(importlib.import_module(m["module"]), m["func"])


def as_written(text: str, sweep_dir, submission, ref) -> str:
    """A traceback with the snapshot's paths put back to the files the user edits (the same code:
    the snapshot is a copy of them as submitted)."""
    m = tasks.FILE_REF.match(ref or "")
    copy = _snapshot_of(sweep_dir, submission, ref) if (m and sweep_dir is not None and submission) else None
    if copy is None:
        return text
    return text.replace(str(copy.parent) + os.sep, str(Path(m["file"]).parent) + os.sep)


def _snapshot_of(sweep_dir, submission, ref):
    """The copy of task `ref` that the submission recorded (code/<submission>.json), or None: a
    submission from before copies were kept by place and content has them by bare file name."""
    version = atomic.read_json(sweep_dir.code_version(submission), {})
    tasks_of = version.get("tasks") if isinstance(version, dict) else None
    for task in (tasks_of or {}).values():
        if isinstance(task, dict) and task.get("ref") == ref and task.get("snapshot"):
            return sweep_dir.code / task["snapshot"]
    return None


def _attempt(sweep_dir, run_dir, deadline, margin_s, device, checkpoint, on_ctx, reraise, ranks=None, attempt=None,
             submission=""):
    from jobs.runtime.context import Interrupted, RunContext, UpstreamRun     # torch: only where a run executes
    run_id = run_dir.run_id
    main = ranks is None or ranks.rank == 0
    world = 1 if ranks is None else ranks.world_size
    attempt = attempt or len(run_dir.starts()) + 1
    started = time.time()
    used_before = own_usage()
    where = {}
    if world > 1:
        from jobs.runtime import distributed
        where = {"world_size": world, "rendezvous": f"{ranks.master_addr}:{ranks.master_port}",
                 "ranks": distributed.gather_places(ranks)}
        print(f"hpcsweep: run {run_id} attempt {attempt}: rank {ranks.rank} of {world} on {socket.gethostname()} "
              f"(local rank {ranks.local_rank}, {device}, pid {os.getpid()})", file=sys.stderr, flush=True)
    if main:
        atomic.append_jsonl(run_dir.attempts, {
            "event": "start", "attempt": attempt, "job_id": job_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": started, "submission": submission, **where}, lock=False)
        if run_dir.error.exists():     # an earlier attempt's failure: keep it beside, start clean
            os.replace(run_dir.error, run_dir.error_of_attempt(attempt - 1))
    if world > 1:
        distributed.barrier(device)    # error.txt is moved aside before any rank can fail
    outcome, detail = FAILED, ""
    try:
        meta = run_dir.read_config()
        upstream = {stage: UpstreamRun(stage, record, sweep_dir.runs) for stage, record in (meta.get("upstream") or {}).items()}
        ctx = RunContext(run_dir.path, meta["config"], run_id=run_id, device=device, checkpoint=checkpoint or {},
                         deadline=deadline, margin_s=margin_s, manifest=sweep_dir.manifest, attempt=attempt,
                         upstream=upstream, budget_key=(meta.get("search") or {}).get("key"),
                         **({} if ranks is None else {"rank": ranks.rank, "local_rank": ranks.local_rank,
                                                      "world_size": world}))
        if on_ctx:
            on_ctx(ctx)
        train = load_task(meta["task"], sweep_dir, submission)
        with working_dir(run_dir.path):
            metrics = train(tasks.nest(meta["config"]), ctx)
        if main and not run_dir.config.is_file():     # a result there now would be a run without a config
            raise RuntimeError(f"the task deleted its run dir's files ({run_dir.config} is gone): "
                               "a task writes inside its run dir, never removes it")
        if main:
            ended = time.time()
            wall = sum(a.get("ended", a["started"]) - a["started"]
                       for a in run_dir.read_attempts() if a.get("event") == "end") + (ended - started)
            from jobs.runtime import checkpoint as checkpoints
            final = checkpoints.newest(run_dir.checkpoints)
            atomic.write_json(run_dir.result, {
                "run_id": run_id, "label": meta.get("label", ""), "metrics": _plain(metrics or {}),
                "wall_time_s": round(wall, 3), "attempts": attempt, "finished": now_iso(),
                **({"world_size": world} if world > 1 else {}),
                # what a later stage consumes, and what this run consumed (lineage: stale when it changes)
                **({"checkpoint": final} if final else {}),
                **({"search": meta["search"]} if meta.get("search") else {}),     # a trial: its rung and budget
                **({"upstream": {stage: up.lineage() for stage, up in upstream.items()}} if upstream else {})})
        outcome = DONE
    except Interrupted:
        outcome = INTERRUPTED
    except SystemExit as e:          # the task left before returning: never taken for success
        outcome, detail = Outcome.EXITED, f"the task called sys.exit({e.code!r}) before returning its metrics"
        write_error(run_dir, as_written(f"{traceback.format_exc()}\n{detail}\n", sweep_dir, submission,
                                        locals().get("meta", {}).get("task")), ranks, where.get("ranks"))
    except Exception as e:  # a task's own exception (or an unreadable config): recorded, shown, not retried blindly
        detail = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        write_error(run_dir, as_written(traceback.format_exc(), sweep_dir, submission,
                                        locals().get("meta", {}).get("task")), ranks, where.get("ranks"))
        if reraise:
            raise
    except BaseException:            # KeyboardInterrupt in-process: resumable, not failed
        outcome = Outcome.CANCELLED
        raise
    finally:
        if "ctx" in locals():        # made: flush and close its TensorBoard / W&B backends (never raises)
            ctx.close()
        if main:
            atomic.append_jsonl(run_dir.attempts, {
                "event": "end", "attempt": attempt, "job_id": job_id(), "started": started, "submission": submission,
                "ended": time.time(), "outcome": outcome, **({"error": detail} if detail else {}),
                **measured(used_before)}, lock=False)
    return outcome


def own_usage() -> tuple:
    """(CPU seconds of this process and its ended children, its peak RSS in MB so far)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return cpu, max(me.ru_maxrss, children.ru_maxrss) / 1024       # ru_maxrss: KB on Linux


def measured(before: tuple) -> dict:
    """The attempt's own measurement for its end record (`usage` falls back to it where the cluster's
    accounting gathers nothing, and uses it for local runs): CPU seconds the attempt used and the
    process's peak RSS (the peak since the process started: in a pack run one after another, a run's
    figure is at least its predecessors')."""
    cpu, rss = own_usage()
    return {"cpu_s": round(cpu - before[0], 3), "max_rss_mb": round(rss, 1)}


def write_error(run_dir, text, ranks=None, places=None) -> None:
    """error.txt; in a distributed run the first rank to fail writes it (its traceback is the cause;
    the others fail after it, in a collective with a rank that is gone). A rank killed outright writes
    nothing: when the traceback shows the address of a peer's host, its last line names that peer
    (`places`: the attempt's ranks, for their hosts)."""
    if ranks is None:
        atomic.write_text(run_dir.error, text)
        return
    from jobs.runtime import distributed
    text = f"rank {ranks.rank} of {ranks.world_size} failed:\n{text}"
    gone = distributed.gone_peers(text, places, ranks.rank)
    if gone:
        text = f"{text.rstrip()}\n{gone}\n"     # the last line: what status shows
    tmp = run_dir.path / f".error.rank{ranks.rank}.tmp"
    atomic.write_text(tmp, text)
    try:
        os.link(tmp, run_dir.error)           # atomic, and refuses to replace a rank's earlier report
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def run_any(sdir, run_id, *, world_size=1, stop=None, **kw) -> str:
    """Run one run: in this process, as this process's rank (srun started the ranks), or by spawning
    world_size local processes. The outcome (rank 0's; failed when any rank failed)."""
    if world_size == 1:
        return run_one(sdir, run_id, on_ctx=stop.attach if stop else None, **kw)
    from jobs.runtime import distributed
    kw.pop("reraise", None)
    ranks = distributed.from_scheduler(world_size)
    if ranks is not None:
        return run_rank(sdir, run_id, ranks, on_ctx=stop.attach if stop else None, **kw)
    by_code = {v: k for k, v in EXIT_CODES.items()}
    codes, first = distributed.spawn(world_size, _rank_child, (sdir, run_id, kw), ok_codes={EXIT_CODES[o] for o in (DONE, INTERRUPTED, BUSY, BLOCKED)},
                              started=(lambda pids: setattr(stop, "children", pids)) if stop else None)
    if stop:
        stop.children = []
    failed = [(r, c) for r, c in enumerate(codes) if c not in EXIT_CODES.values() or by_code[c] == FAILED]
    if not failed:
        return by_code[codes[0]]
    _close_attempt(SweepDir(sdir).run(run_id), failed, first, codes[first])
    return FAILED


def _close_attempt(run_dir, failed, first, first_code) -> None:
    """After ranks died: say which died first in error.txt and end rank 0's attempt.

    A rank that raised wrote its own traceback; one killed by a signal wrote nothing, and the ranks
    that failed after it (a collective with a dead peer) did: their text follows the headline."""
    died = [f"rank {r} {'was killed by signal ' + str(-c) if c < 0 else 'exited with code ' + str(c)}"
            for r, c in failed]
    if first_code < 0 or not run_dir.error.exists():
        after = run_dir.error.read_text(errors="replace") if run_dir.error.exists() else ""
        headline = (f"rank {first} was killed by signal {-first_code} (no traceback: killed, out of memory?)"
                    if first_code < 0 else f"rank {first} exited with code {first_code}")
        # the headline last: status shows an error file's last line
        atomic.write_text(run_dir.error, (f"the other ranks failed after rank {first}:\n{after}\n" if after else "")
                          + headline + "\n")
    starts, ends = run_dir.starts(), {a.get("attempt") for a in run_dir.read_attempts() if a.get("event") == "end"}
    if starts and starts[-1].get("attempt") not in ends:
        atomic.append_jsonl(run_dir.attempts, {"event": "end", "attempt": starts[-1]["attempt"], "job_id": job_id(),
                                               "started": starts[-1].get("started"), "ended": time.time(),
                                               "outcome": FAILED, "error": "; ".join(died)}, lock=False)


def _rank_child(ranks, sdir, run_id, kw):
    stop = Stop()
    stop.install()
    code = EXIT_CODES[run_rank(sdir, run_id, ranks, on_ctx=stop.attach, **kw)]
    sys.stdout.flush()
    sys.stderr.flush()
    # every file is written (atomically, fsynced); skip the interpreter's teardown, where the C++
    # threads of the communication library can abort the process after the run ended well
    os._exit(code)


def _plain(obj):
    """Metrics as JSON-able Python values (tensors and numpy scalars become numbers)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return obj


# ---------------------------------------------------------------- the pack

@dataclass
class PackJob:
    """What a job executes: the runs of one pack, sequentially or side by side."""
    sweep_dir: str
    run_ids: list
    time_min: float = 0.0            # the job's wall-time limit (0: none)
    margin_s: float = 60.0           # save when less than this is left
    gpus: int = 0
    cpus: int = 0                    # torch threads per run (0: torch's default)
    checkpoint: dict = field(default_factory=dict)
    concurrent: bool = False
    max_requeue: int = 3             # attempts of this job beyond the first before it stops requeuing
    reraise: bool = False            # the debug executor at a terminal: let pdb see a task's exception
    submission: str = ""             # the journal's submission id
    chain: dict = field(default_factory=dict)   # SLURM: {"params": executor params, "left": chains left}
    # how to go on in a fresh job once the requeue budget is spent: handed in by the scheduler layer
    # (a module-level function, so the job pickles it by name): chain_submit(sweep_dir, pack_job) -> job id
    chain_submit: object = None
    world_size: int = 1              # processes per run: nodes x tasks_per_node (> 1: a distributed run)
    needs: list = field(default_factory=list)   # upstream runs (of an earlier stage) that must be done first
    fail_fast: int = 0               # start no run once this many of the submission failed alike (0: never)
    # a search's worker: {"stage", "slot", "settings"}; run_ids are every trial of the stage, and the
    # job trains whichever the search hands it (jobs/search/engine.py) until it has nothing left
    search: dict = field(default_factory=dict)

    def __call__(self) -> dict:
        started = time.time()
        deadline = started + 60 * self.time_min if self.time_min else None
        stop = Stop()
        stop.install()
        if self.search:
            outcomes = self._search(deadline, stop)
        elif self.concurrent and len(self.run_ids) > 1:
            outcomes = self._run_concurrently(deadline, stop)
        else:
            outcomes = {}
            sweep_dir = SweepDir(self.sweep_dir)
            for rid in self.run_ids:
                if stop.requested:
                    outcomes[rid] = INTERRUPTED
                    continue
                why = failing_fast(sweep_dir, self.submission, self.fail_fast)
                if why:
                    atomic.append_jsonl(sweep_dir.run(rid).attempts, {
                        "event": "skipped", "submission": self.submission, "time": time.time(), "reason": why}, lock=False)
                    outcomes[rid] = Outcome.SKIPPED
                    continue
                outcomes[rid] = run_any(self.sweep_dir, rid, world_size=self.world_size, stop=stop,
                                        deadline=deadline, margin_s=self.margin_s, gpus=self.gpus, cpus=self.cpus,
                                        checkpoint=self.checkpoint, reraise=self.reraise, submission=self.submission)
                stop.detach()
                if outcomes[rid] in (FAILED, Outcome.EXITED):
                    note_failure(sweep_dir, self.submission, rid, self.fail_fast)
                if outcomes[rid] == INTERRUPTED:
                    stop.requested = True    # out of time: start no further run in this attempt
        left = [rid for rid, o in outcomes.items() if o == INTERRUPTED]
        if self.world_size > 1 and int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return {"outcomes": outcomes, "unfinished": left}      # rank 0 requeues or chains for the run
        if left and stop.signum == signal.SIGTERM:
            # a cancel (scancel, `main.py cancel`), `scontrol requeue` or preemption: the scheduler itself
            # ends or requeues this job; requeuing or chaining here would run the runs again after a cancel
            return {"outcomes": outcomes, "unfinished": left}
        if left and self._may_requeue():
            requeue()
        if left and self.chain.get("left", 0) > 0 and self.chain_submit is not None:
            self._chain(left)
        return {"outcomes": outcomes, "unfinished": left}

    def _search(self, deadline, stop) -> dict:
        """A search's worker: ask the search, train the trial it hands over to its rung's budget
        (resuming from its checkpoint), record the rung result, ask again; until the search has nothing
        for a free worker, or time runs out (the claim stays this slot's: requeued or chained, the job
        takes it up first)."""
        from jobs.search.engine import Engine
        from jobs.spec.settings import Search
        engine = Engine(self.sweep_dir, self.search["stage"], Search.model_validate(self.search["settings"]),
                        self.run_ids)
        sweep_dir, outcomes, me = SweepDir(self.sweep_dir), {}, job_id()
        while not stop.requested:
            claim = engine.next(self.search["slot"], me)
            if claim is None:
                break
            outcome = run_any(self.sweep_dir, claim.run_id, world_size=self.world_size, stop=stop,
                              deadline=deadline, margin_s=self.margin_s, gpus=self.gpus, cpus=self.cpus,
                              checkpoint=self.checkpoint, reraise=self.reraise, submission=self.submission)
            stop.detach()
            outcomes[claim.run_id] = outcome
            run_dir = sweep_dir.run(claim.run_id)
            if outcome == DONE:
                engine.landed(claim, engine.value_of(run_dir, run_dir.read_result()), job=me)
            elif outcome in (FAILED, Outcome.EXITED):
                ends = [a for a in run_dir.read_attempts() if a.get("event") == "end"]
                engine.landed(claim, error=str((ends[-1].get("error") if ends else "") or outcome), job=me)
            else:                        # interrupted, busy, blocked: this slot's claim waits for its next attempt
                if outcome != INTERRUPTED:
                    print(f"hpcsweep: search worker {self.search['slot']}: run {claim.run_id} {outcome}; "
                          "the claim stays open for resume", file=sys.stderr, flush=True)
                break
        return outcomes

    def _chain(self, left):
        """The requeue budget is spent (or the site forbids requeue): go on in a fresh job."""
        if self.search:
            left = self.run_ids          # a search's worker goes on as the same slot, over every trial
        nxt = replace(self, run_ids=list(left), chain={**self.chain, "left": self.chain["left"] - 1})
        new_id = self.chain_submit(self.sweep_dir, nxt)
        SweepDir(self.sweep_dir).append_journal({
            "event": "chain", "submission": self.submission, "job_id": str(new_id), "from": job_id(),
            "runs": list(left), "time": now_iso()})

    def _may_requeue(self) -> bool:
        me = job_id()
        sweep_dir = SweepDir(self.sweep_dir)
        if self.search:      # a worker starts many trials: count only its interrupted attempts
            mine = 1 + sum(1 for rid in self.run_ids for a in sweep_dir.run(rid).read_attempts()
                           if a.get("event") == "end" and a.get("job_id") == me and a.get("outcome") == INTERRUPTED)
            return mine <= self.max_requeue + 1 and requeue_supported()
        mine = max(sum(1 for a in sweep_dir.run(rid).starts() if a.get("job_id") == me)
                   for rid in self.run_ids)
        return mine <= self.max_requeue and requeue_supported()

    def _run_concurrently(self, deadline, stop) -> dict:
        ctx = multiprocessing.get_context("spawn")   # a fresh interpreter each: RNG states stay per run
        procs = {}
        for rid in self.run_ids:
            p = ctx.Process(target=_child, args=(self.sweep_dir, rid, deadline, self.margin_s, self.gpus,
                                                 self.cpus, self.checkpoint), daemon=False)
            p.start()
            procs[rid] = p
        stop.children = [p.pid for p in procs.values()]
        codes = {}
        for rid, p in procs.items():
            p.join()
            codes[rid] = p.exitcode
        by_code = {v: k for k, v in EXIT_CODES.items()}
        return {rid: by_code.get(code, FAILED) for rid, code in codes.items()}


def failing_fast(sweep_dir, submission, threshold) -> str:
    """Why no further run of `submission` should start ("" : go on): `threshold` of its runs already
    failed with the same error (a bug that hits every run is found once, not run by run). One small
    file, absent until note_failure writes it: the check costs the same in a sweep of any size."""
    if not threshold or not submission:
        return ""
    return sweep_dir.read_fail_fast(submission)


def note_failure(sweep_dir, submission, run_id, threshold) -> None:
    """Count a run of `submission` that just failed under its error; at `threshold` alike, stop the submission."""
    if not threshold or not submission:
        return
    ends = [a for a in sweep_dir.run(run_id).read_attempts() if a.get("event") == "end" and a.get("error")]
    if not ends:
        return
    error = str(ends[-1]["error"])
    n = sweep_dir.record_failure(submission, run_id, error)
    if n >= threshold:
        sweep_dir.write_fail_fast(submission, (
            f"not started: {n} runs of submission {submission} failed with the same error ({error[:160]}); "
            "fix it, then resume --retry-failed (resources.fail_fast sets how many)"), error, n)


def _child(sdir, rid, deadline, margin_s, gpus, cpus, checkpoint):
    stop = Stop()
    stop.install()
    sys.exit(EXIT_CODES[run_one(sdir, rid, deadline=deadline, margin_s=margin_s, gpus=gpus, cpus=cpus,
                           checkpoint=checkpoint, on_ctx=stop.attach)])


class Stop:
    """Turns SIGUSR2/SIGTERM into a stop request on the running ctx (and forwards it to child processes).

    stop = Stop(); stop.install()   # then run_any(..., stop=stop): the run checkpoints and stops on a signal
    """

    def __init__(self):
        self.requested = False
        self.signum = None
        self.ctx = None
        self.children = []

    def install(self):
        if hasattr(signal, "SIGUSR2"):
            signal.signal(signal.SIGUSR2, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def attach(self, ctx):
        self.ctx = ctx
        if self.requested:
            ctx.request_stop()

    def detach(self):
        self.ctx = None

    def _handle(self, signum, frame):
        self.requested = True
        self.signum = signum
        if self.ctx is not None:
            self.ctx.request_stop()
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass


def requeue_supported() -> bool:
    return bool(os.environ.get("SUBMITIT_LOCAL_JOB_ID") or os.environ.get("SLURM_JOB_ID"))


def requeue():
    """Hand the job back to its scheduler to run again, then leave."""
    if os.environ.get("SLURM_JOB_ID"):
        import subprocess
        jid = job_id()      # A_i in an array: a bare SLURM_JOB_ID can be the array's id and requeue every task
        subprocess.run(["scontrol", "requeue", jid], check=True, timeout=60)
        sys.exit(0)
    sys.exit(LOCAL_REQUEUE_RETURN_CODE)


def main(argv=None):
    """`python -m jobs.runtime.runner SWEEP_DIR RUN_ID`: one run from this process (what `main.py run` uses)."""
    sdir, rid = (argv or sys.argv[1:])[:2]
    # as a job of this sweep would run it: its cpus (torch threads change float sums), ranks and checkpoints
    spec = SweepDir(sdir).read_spec()
    res = Resources.model_validate(spec.get("resources") or {})
    ckpt = Checkpoint.model_validate(spec.get("checkpoint") or {})
    stop = Stop()
    stop.install()
    print(json.dumps({"outcome": run_any(sdir, rid, world_size=res.world_size, stop=stop, gpus=res.gpus,
                                         cpus=res.cpus, checkpoint=ckpt.for_context(),
                                         margin_s=ckpt.margin_s_for(res.time_min))}))


if __name__ == "__main__":
    main()
