"""The sweep dir: every path of a sweep and of its runs, and the state a run is in.

This module is the only place that spells a file name of the on-disk format (docs/format.md, "The sweep
dir"). Everyone else asks a `SweepDir` or a `RunDir` for a path:

    sweep_dir = SweepDir.under(root, "depth_ladder")
    sweep_dir.plan, sweep_dir.journal, sweep_dir.run(run_id).result, ...

State is read from the files, never kept in memory between commands, and reading never writes.
"""
from __future__ import annotations

import functools
import hashlib
import os
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

import yaml

import jobs.store.atomic as atomic

DEFAULT_ROOT = "results"
# libyaml's parser where PyYAML has it: the same safe subset, ~10x faster (a run reads its config.yaml
# and the spec.yaml as it starts: a third of what a trivial run costs with the pure-Python parser)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RunState(StrEnum):
    """What a run is, as `status`, `plan`, `aggregate` and the DataFrames say it (one vocabulary)."""
    NEW = "new"                  # planned, never submitted (no config.yaml yet)
    PENDING = "pending"          # submitted before, unfinished, and no live job holds it
    IN_FLIGHT = "in flight"      # a live job (queued or running) holds it
    BLOCKED = "blocked"          # a downstream run whose upstream failed or was cancelled
    FAILED = "failed"            # error.txt and no result.json
    CORRUPT = "corrupt result"   # result.json exists but cannot be read: resume reruns the run
    STALE = "stale"              # done, but an upstream it consumed changed since (a rerun, a replaced
                                 # registry entry): resume sets its dir aside and reruns it
    UNREADABLE = "unreadable"    # the run dir's files may not be read here (permissions): RunDir.problem says why
    DONE = "done"                # result.json, readable: the run's last act


class Where(StrEnum):
    """Where a run that is `in flight` is, as `status`, `watch` and `status --json` show it.

    Sub-states of RunState.IN_FLIGHT, not states of their own: every decision (what submit and resume
    send, what a downstream run may consume) needs only "a live job holds it", while where the job is
    changes by the second and is read from the scheduler's queue, never from the run dir. Kept beside
    RunState so the words have one owner; RunState.IN_FLIGHT stays their sum."""
    QUEUED = "queued"            # a job holds it but the run has not started (squeue's reason says why)
    RUNNING = "running"          # its attempt runs (on a node, or in a local worker)
    REQUEUED = "requeued"        # an attempt of the same job ran, and the job waits in the queue again


class Outcome(StrEnum):
    """How one attempt of a run ended (attempts.jsonl's `outcome`)."""
    DONE = "done"
    INTERRUPTED = "interrupted"  # checkpointed on a stop request or time running out: requeue it
    FAILED = "failed"            # the task raised
    EXITED = "exited"            # the task called sys.exit / os._exit before returning
    BUSY = "busy"                # another process holds the run's lock
    CANCELLED = "cancelled"      # KeyboardInterrupt in-process
    SKIPPED = "skipped"          # not started: the submission's runs were failing alike (resources.fail_fast)
    BLOCKED = "blocked"          # not started: an upstream run it consumes is not done (attempts.jsonl says why)


def absolute(path) -> Path:
    """`path` made absolute against the current directory, now: a job runs elsewhere (another cwd,
    another node) and a task may chdir, so a path is fixed the moment a command reads it. Not
    resolved: a symlinked scratch path stays as the user spelled it."""
    return Path(os.path.abspath(os.fspath(path)))


def root_dir(root=None, profile_root=None, spec=None) -> Path:
    """Where sweep dirs live, absolute: --root, else $HPCSWEEP_ROOT, else the cluster profile's root,
    else results/ of the project the spec file belongs to (the top of its git checkout, else its
    folder), so a sweep is found whatever directory a command runs in; without a spec, ./results.
    A relative --root or $HPCSWEEP_ROOT is relative to the directory the command runs in."""
    chosen = root or os.environ.get("HPCSWEEP_ROOT") or profile_root
    if chosen:
        return absolute(os.path.expandvars(os.path.expanduser(str(chosen))))
    if spec is None:
        return absolute(DEFAULT_ROOT)
    return project_top(spec) / DEFAULT_ROOT


def project_top(path=None) -> Path:
    """The top of the project a spec (or any file or folder; default: the working directory) belongs
    to: its git checkout's top, else its own folder. Where a project keeps its clusters.yaml, its
    checkpoint registry and, by default, its results/."""
    here = Path(path if path is not None else ".").resolve()
    folder = here if here.is_dir() else here.parent
    return next((p for p in (folder, *folder.parents) if (p / ".git").exists()), folder)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """runs/<run_id>/ and its files."""

    def __init__(self, path):
        # kept as a str, made a Path only when asked: status makes one per run of a sweep and stats two
        # of its files (10,000 Path objects cost a third of a second); absolute from the start
        self._where = os.path.abspath(os.fspath(path))
        self.run_id = os.path.basename(self._where.rstrip(os.sep))

    @functools.cached_property
    def path(self) -> Path:
        return Path(self._where)

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    METRICS, CONFIG, RESULT, ERROR = "metrics.jsonl", "config.yaml", "result.json", "error.txt"
    config = property(lambda self: self.path / RunDir.CONFIG)
    metrics = property(lambda self: self.path / RunDir.METRICS)
    checkpoints = property(lambda self: self.path / "checkpoints")
    attempts = property(lambda self: self.path / "attempts.jsonl")
    result = property(lambda self: self.path / RunDir.RESULT)
    error = property(lambda self: self.path / RunDir.ERROR)
    tensorboard = property(lambda self: self.path / "tensorboard")   # with `logging: {tensorboard: true}`
    wandb = property(lambda self: self.path / "wandb")               # W&B's own folder, with `logging: {wandb: ...}`
    HOLDER = "run.lock.holder"
    lock = property(lambda self: self.path / "run.lock")
    holder = property(lambda self: self.path / RunDir.HOLDER)         # who holds the lock (pid, host, command)

    def rung_result(self, rung: int) -> Path:
        """A search trial's result at an earlier rung, kept when promotion lets it train on."""
        return self.path / f"result.rung{int(rung)}.json"

    def corrupt_result(self, stamp) -> Path:
        """Where an unreadable result.json is kept when the run is rerun."""
        return self.path / f"result.corrupt-{stamp}.json"

    def read_holder(self):
        """Who holds the run's lock ({pid, host, job_id, command, since}), or None."""
        holder = atomic.read_json(self.holder)
        return holder if isinstance(holder, dict) else None

    def error_of_attempt(self, attempt: int) -> Path:
        return self.path / f"error.attempt{attempt}.txt"

    SET_ASIDE = ".before-"

    def set_aside_name(self, stamp: str) -> Path:
        """Where a forced or stale run's old dir is kept (never deleted, never taken for a run)."""
        return self.path.with_name(f"{self.run_id}{RunDir.SET_ASIDE}{stamp}")

    def read_config(self) -> dict:
        """config.yaml: {run_id, label, task, varied, config, ...}. Raises on a missing or corrupt file."""
        try:
            meta = yaml.load(self.config.read_text(encoding="utf-8"), Loader=YAML_LOADER)
        except yaml.YAMLError as e:
            raise ValueError(f"{self.config}: unreadable run config ({str(e).splitlines()[0]}); "
                             "`submit --force` the run to write it anew") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "task" not in meta:
            raise ValueError(f"{self.config}: not a run config (expected a mapping with task and config)")
        return meta

    def _file(self, name) -> str:
        """A file of the run as a str: what state() asks of every run of a sweep at every status
        costs a stat or two, and a Path object more than the stat (10,000 runs: a third of a second)."""
        return self._where + os.sep + name

    def read_result(self):
        """result.json parsed, or None when missing or unreadable."""
        result = atomic.read_json(self._file(RunDir.RESULT))
        return result if isinstance(result, dict) else None

    def read_attempts(self) -> list:
        return atomic.read_jsonl(self.attempts)

    def starts(self) -> list:
        """The attempts' start records, in order."""
        return [a for a in self.read_attempts() if a.get("event") == "start"]

    def state(self, in_flight: bool) -> RunState:
        """The run's state from its files, given whether a live job holds it."""
        try:
            os.stat(self._file(RunDir.RESULT))
            has_result = True
        except FileNotFoundError:
            has_result = False
        except OSError:                  # a run dir this user may not enter
            return RunState.UNREADABLE
        if has_result and self.read_result() is not None:
            return RunState.DONE
        if in_flight:                    # an unreadable result.json a live job is about to replace included
            return RunState.IN_FLIGHT
        if has_result:
            # not corrupt, only not ours to read: resume must not move it aside and rerun the run
            return RunState.CORRUPT if os.access(self._file(RunDir.RESULT), os.R_OK) else RunState.UNREADABLE
        if os.path.exists(self._file(RunDir.ERROR)):
            return RunState.FAILED
        return RunState.PENDING if os.path.exists(self._file(RunDir.CONFIG)) else RunState.NEW

    def problem(self) -> str:
        """Why the run's files cannot be read here ("" : they can), for `status` to show."""
        for path in (self.path, self.result, self.config):
            try:
                if path.is_dir():
                    os.listdir(path)
                elif path.exists():
                    open(path, "rb").close()
            except OSError as e:
                return f"{e.filename or path}: {e.strerror or e}"
        return ""


class SweepDir:
    """<root>/<sweep name>/ and its files; every path absolute (see `absolute`)."""

    def __init__(self, path):
        self.path = absolute(path)

    @classmethod
    def under(cls, root, name, profile_root=None, spec=None) -> "SweepDir":
        return cls(root_dir(root, profile_root, spec) / name)

    def __repr__(self):
        return f"SweepDir({str(self.path)!r})"

    def __str__(self):
        return str(self.path)

    spec = property(lambda self: self.path / "spec.yaml")
    plan = property(lambda self: self.path / "plan.json")
    journal = property(lambda self: self.path / "journal.jsonl")
    code = property(lambda self: self.path / "code")
    logs = property(lambda self: self.path / "logs")
    runs = property(lambda self: self.path / "runs")
    manifest = property(lambda self: self.path / "checkpoints_manifest.yaml")
    submit_lock = property(lambda self: self.path / "submit.lock")
    analysis = property(lambda self: self.path / "analysis")
    failures = property(lambda self: self.path / "failures")
    usage = property(lambda self: self.path / "usage.json")   # what `usage` / `aggregate` last read of the accounting

    search = property(lambda self: self.path / "search")

    def search_journal(self, stage) -> Path:
        """search/<stage>.jsonl: a search's decisions (claims of a trial at a rung, rung results), in order."""
        return self.search / f"{stage}.jsonl"

    def search_lock(self, stage) -> Path:
        """Held while a decision is taken: one decision at a time, whichever job lands a result."""
        return self.search / f"{stage}.lock"

    def search_optuna(self, stage) -> Path:
        """search/<stage>.optuna.log: Optuna's journal storage of a TPE search."""
        return self.search / f"{stage}.optuna.log"

    def failures_of(self, submission) -> Path:
        """failures/<submission>/: the submission's failed runs, one small file each under a folder per
        error, and stop.json once fail-fast stopped it. Only failures are written here, so a run that
        asks whether to start reads one file, however large the sweep."""
        return self.failures / submission

    def fail_fast_stop(self, submission) -> Path:
        return self.failures_of(submission) / "stop.json"

    def record_failure(self, submission, run_id, error) -> int:
        """Record that `run_id` of `submission` failed with `error`; how many of its runs failed with
        that error so far (this one included). A file per run, not a shared counter: packs that fail at
        the same moment never lose a count, and no lock is needed."""
        folder = self.failures_of(submission) / hashlib.sha256(error.encode("utf-8")).hexdigest()[:16]
        atomic.write_text(folder / run_id, error + "\n")
        return sum(1 for name in os.listdir(folder) if not name.startswith("."))   # "." : atomic's temp files

    def read_fail_fast(self, submission) -> str:
        """Why fail-fast stopped `submission` ("" : it did not)."""
        stop = atomic.read_json(self.fail_fast_stop(submission))
        return str(stop.get("reason", "")) if isinstance(stop, dict) else ""

    def write_fail_fast(self, submission, reason, error, count) -> None:
        atomic.write_json(self.fail_fast_stop(submission), {"reason": reason, "error": error, "failed": count,
                                                            "time": now_iso()})

    def run(self, run_id) -> RunDir:
        return RunDir(self._runs + os.sep + run_id)

    @functools.cached_property
    def _runs(self) -> str:
        return os.fspath(self.runs)

    def holders(self, run_ids) -> dict:
        """run_id -> its lock holder's record ({pid, host, job_id, ...}), for the runs whose lock is taken."""
        out = {}
        for run_id in run_ids:
            where = self._runs + os.sep + run_id + os.sep + RunDir.HOLDER
            if os.path.exists(where):
                holder = atomic.read_json(where)
                if isinstance(holder, dict):
                    out[run_id] = holder
        return out

    def metrics_files(self, run_ids) -> dict:
        """{run_id: its metrics.jsonl as a str}: RunDir.metrics for many runs at once (10,000 Path
        objects cost a third of a second; a cached curve load needs nothing else)."""
        head, tail = os.fspath(self.runs) + os.sep, os.sep + RunDir.METRICS
        return {rid: head + rid + tail for rid in run_ids}

    def code_version(self, submission) -> Path:
        return self.code / f"{submission}.json"

    def code_diff(self, submission) -> Path:
        return self.code / f"{submission}.diff"

    def code_snapshot(self, submission) -> Path:
        """Copies of the task's own source files as submitted (tasks that live outside the repository)."""
        return self.code / submission

    def task_snapshot(self, submission, in_project, sha256) -> Path:
        """The copy of one task file: code/<submission>/<sha256[:16]>/<its path in its project>. Keyed
        by content and place, so dirA/task.py and dirB/task.py of two stages never share one copy."""
        return self.code_snapshot(submission) / sha256[:16] / in_project

    def submission_file(self, submission) -> Path:
        """What the local driver of a submission reads: its job objects, pickled by the submitting command."""
        return self.logs / f"{submission}.jobs.pkl"

    def cancelled_runs(self, submission) -> Path:
        """The runs `cancel --only` took out of a local submission (one {"run_id"} line each): its driver
        starts and chains none of them."""
        return self.logs / f"{submission}.cancelled.jsonl"

    def driver_log(self, submission) -> Path:
        return self.logs / f"driver-{submission}.log"

    def slurm_logs(self) -> Path:
        """submitit's folder pattern for SLURM jobs (one folder per job)."""
        return self.logs / "%j"

    def job_stderr(self, job_id) -> Path:
        """submitit's stderr log of a SLURM job (array task `A_i` or plain id)."""
        return self.logs / job_id / f"{job_id}_0_log.err"

    def job_log(self, job_id, err=False) -> Path:
        """submitit's stdout (or stderr) log of a job: logs/<id>/ for a SLURM job (one file across its
        requeues: sbatch appends), logs/ itself for a local one (submitit's LocalExecutor folder)."""
        name = f"{job_id}_0_log.{'err' if err else 'out'}"
        slurm = self.logs / str(job_id) / name
        return slurm if slurm.exists() or not (self.logs / name).exists() else self.logs / name

    # a laptop's copy of a sweep dir that lives on a cluster (jobs/sched/remote.py): where it came from and
    # the size and mtime each copied file had there
    mirror_index = property(lambda self: self.path / ".mirror.json")
    mirror_lock = property(lambda self: self.path / ".mirror.lock")     # one pull at a time into a mirror

    def analysis_inputs(self) -> dict:
        """{path relative to the sweep dir: [bytes, mtime_ns]} of the files analysis reads: the spec, the
        plan, and each run's config, result, error and metrics (what a laptop's mirror copies; checkpoints,
        job logs and code copies stay where they are)."""
        out = {}
        head = str(self.path) + os.sep

        def add(relative):
            try:
                st = os.stat(head + relative)
            except OSError:
                return
            out[relative] = [st.st_size, st.st_mtime_ns]
        add(self.spec.name)
        add(self.plan.name)
        for run_id in self.run_dirs():
            for name in (RunDir.CONFIG, RunDir.RESULT, RunDir.ERROR, RunDir.METRICS):
                add(f"{self.runs.name}/{run_id}/{name}")
        return out

    def exists(self) -> bool:
        """Was anything ever submitted here?"""
        return self.plan.exists() or self.journal.exists()

    def is_sweep_dir(self) -> bool:
        return self.spec.exists() or self.plan.exists() or self.runs.is_dir()

    def run_dirs(self) -> list:
        """The run ids that have a run dir, sorted."""
        try:
            return sorted(e.name for e in os.scandir(self.runs)
                          if e.is_dir() and not e.name.startswith(".") and RunDir.SET_ASIDE not in e.name)
        except FileNotFoundError:
            return []

    def planned_run_ids(self) -> list:
        """The run ids plan.json lists, in plan order."""
        return [r["run_id"] for r in self.read_plan().get("runs") or [] if isinstance(r, dict) and r.get("run_id")]

    def run_ids(self, planned=None) -> list:
        """Every run the sweep dir knows: the plan's in plan order (`planned`, when the caller
        already has them), then run dirs no plan lists."""
        planned = self.planned_run_ids() if planned is None else list(planned)
        known = set(planned)
        return planned + [rid for rid in self.run_dirs() if rid not in known]

    def read_journal(self, bad=None) -> list:
        return atomic.read_jsonl(self.journal, bad)

    def append_journal(self, entry: dict) -> None:
        atomic.append_jsonl(self.journal, entry)

    def read_plan(self) -> dict:
        plan = atomic.read_json(self.plan, {})
        return plan if isinstance(plan, dict) else {}

    def read_spec(self) -> dict:
        try:
            spec = yaml.load(self.spec.read_text(encoding="utf-8"), Loader=YAML_LOADER)
        except (OSError, yaml.YAMLError):
            return {}
        return spec if isinstance(spec, dict) else {}

    def previous_plan(self) -> dict:
        """run_id -> label of the runs as last submitted (empty before the first submit)."""
        runs = self.read_plan().get("runs", [])
        return {r["run_id"]: r.get("label", "") for r in runs if isinstance(r, dict) and "run_id" in r}

    def write_run_config(self, run, task, **extra) -> Path:
        """runs/<run_id>/config.yaml, written once: a run's config is frozen with its id."""
        path = self.run(run.run_id).config
        if not path.exists():
            atomic.write_yaml(path, {"run_id": run.run_id, "label": run.label, "task": task,
                                     "varied": run.varied, "config": run.config, **extra})
        return path
