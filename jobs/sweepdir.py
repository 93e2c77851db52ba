"""The sweep dir: where a sweep lives on shared storage, and what state each run is in.

Layout (README, "The sweep dir"): spec.yaml, plan.json, journal.jsonl, code/, logs/,
checkpoints_manifest.yaml, runs/<run_id>/{config.yaml, metrics.jsonl, checkpoints/,
attempts.jsonl, result.json, error.txt}. Everything here reads or writes those files and
nothing else; state is read from the files, never kept in memory between commands.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from jobs import atomic

DEFAULT_ROOT = "results"


def root_dir(root=None, profile_root=None) -> Path:
    """Where sweep dirs live: --root, else $HPCSWEEP_ROOT, else the cluster profile's root, else ./results."""
    chosen = root or os.environ.get("HPCSWEEP_ROOT") or profile_root or DEFAULT_ROOT
    return Path(os.path.expandvars(os.path.expanduser(str(chosen))))


def sweep_dir(root, name, profile_root=None) -> Path:
    return root_dir(root, profile_root) / name


def run_dir(sdir, run_id) -> Path:
    return Path(sdir) / "runs" / run_id


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(path, default=None):
    """The parsed JSON file, or `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_jsonl(path) -> list:
    """Every complete JSON line of a file; a torn last line (a killed writer) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_jsonl(path, obj, lock=True) -> None:
    """Append one JSON line under the file's lock (several login shells may submit at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, sort_keys=True) + "\n"
    with FileLock(str(path) + ".lock") if lock else _nolock():
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def journal(sdir) -> list:
    return read_jsonl(Path(sdir) / "journal.jsonl")


def previous_plan(sdir) -> dict:
    """run_id -> label of the runs as last submitted (empty before the first submit)."""
    plan = read_json(Path(sdir) / "plan.json", {}) or {}
    return {r["run_id"]: r.get("label", "") for r in plan.get("runs", []) if "run_id" in r}


def run_state(sdir, run_id, live_jobs=None) -> str:
    """done / failed / in flight / new, read from the run dir and the journal's live jobs.

    `live_jobs` maps run_id -> job id for runs whose latest submission has not ended; when
    None, a run counts as in flight if it was submitted and has neither result nor error.
    """
    rdir = run_dir(sdir, run_id)
    if (rdir / "result.json").exists():
        return "done"
    if (rdir / "error.txt").exists() and not (live_jobs and run_id in live_jobs):
        return "failed"
    if live_jobs is not None:
        return "in flight" if run_id in live_jobs else ("new" if not (rdir / "config.yaml").exists() else "pending")
    return "in flight" if (rdir / "config.yaml").exists() else "new"


def write_run_config(sdir, run, task) -> Path:
    """runs/<run_id>/config.yaml, written once: a run's config is frozen with its id."""
    rdir = run_dir(sdir, run.run_id)
    path = rdir / "config.yaml"
    if not path.exists():
        atomic.write_yaml(path, {"run_id": run.run_id, "label": run.label, "task": task,
                                 "varied": run.varied, "config": run.config})
    return path
