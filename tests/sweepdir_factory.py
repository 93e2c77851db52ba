"""Synthetic sweep dirs in the on-disk format of docs/format.md, for analysis tests.

    from tests.sweepdir_factory import grid, write_sweep
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2, 3])
    for r in runs:
        r["metrics"] = {"test_acc": 0.5 + 0.1 * r["config"]["k"]}
    sdir = write_sweep(tmp_path / "sweep", runs, analysis={"group_by": ["method", "k"]})

Each run is a dict: config (required), and optionally state ("done" | "failed" | "pending" |
"corrupt" | "missing": no run dir), metrics, log (a list of dicts, or raw bytes, for
metrics.jsonl), attempts, wall_time_s, planned (False: a run dir that plan.json does not list).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import yaml

from jobs.store import atomic


def run_id_of(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def grid(axes: dict, seeds=(1,), base=None) -> list:
    """Runs for the cartesian product of `axes` and `seeds` (seed last), each {config, varied}."""
    runs = []
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        for seed in seeds:
            varied = dict(zip(keys, values), seed=seed)
            runs.append({"config": {**(base or {}), **varied}, "varied": varied})
    return runs


def label_of(varied: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in varied.items())


def write_sweep(sdir, runs, analysis=None, name="synthetic", seeds=None, plan=True, spec_extra=None) -> Path:
    """Write spec.yaml, plan.json and runs/<id>/ for `runs`; returns the sweep dir."""
    sdir = Path(sdir)
    (sdir / "runs").mkdir(parents=True, exist_ok=True)
    axes = {}
    for r in runs:
        r.setdefault("varied", {k: v for k, v in r["config"].items()})
        r["run_id"] = r.get("run_id") or run_id_of(r["config"])
        r["label"] = r.get("label") or label_of(r["varied"])
        for k, v in r["varied"].items():
            axes.setdefault(k, [])
            if v not in axes[k]:
                axes[k].append(v)
    spec = {"name": name, "task": "synthetic", "grid": {k: v for k, v in axes.items() if k != "seed"},
            "seeds": seeds if seeds is not None else axes.get("seed", [1]), **(spec_extra or {})}
    if analysis is not None:
        spec["analysis"] = analysis
    atomic.write_yaml(sdir / "spec.yaml", spec)
    if plan:
        atomic.write_json(sdir / "plan.json", {"name": name, "task": "synthetic", "runs": [
            {"run_id": r["run_id"], "label": r["label"], "config": r["config"], "varied": r["varied"]}
            for r in runs if r.get("planned", True)]})
    for r in runs:
        write_run(sdir, r)
    return sdir


def write_run(sdir, r) -> Path:
    state = r.get("state", "done")
    rdir = Path(sdir) / "runs" / r["run_id"]
    if state == "missing":
        return rdir
    rdir.mkdir(parents=True, exist_ok=True)
    atomic.write_yaml(rdir / "config.yaml", {"run_id": r["run_id"], "label": r["label"], "task": "synthetic",
                                             "varied": r["varied"], "config": r["config"]})
    log = r.get("log")
    if isinstance(log, (bytes, bytearray)):
        (rdir / "metrics.jsonl").write_bytes(bytes(log))
    elif log is not None:
        (rdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log))
    if state == "done":
        atomic.write_json(rdir / "result.json", {
            "run_id": r["run_id"], "label": r["label"], "metrics": r.get("metrics", {}),
            "wall_time_s": r.get("wall_time_s", 1.0), "attempts": r.get("attempts", 1),
            "finished": "2026-01-01T00:00:00+00:00"})
    elif state == "corrupt":
        (rdir / "result.json").write_text('{"run_id": "' + r["run_id"] + '", "metrics": {"test_')
    elif state == "failed":
        (rdir / "error.txt").write_text("Traceback (most recent call last):\nValueError: diverged\n")
    return rdir


def read_yaml(path):
    return yaml.safe_load(Path(path).read_text())
