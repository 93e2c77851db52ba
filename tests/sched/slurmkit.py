"""What the real-SLURM tests share: specs of a small real task, the CLI, polling, sbatch/sacct shims, readers.

    from tests.sched.slurmkit import cli, wait_for, write_spec, ...
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from jobs.store import SweepDir, atomic

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
SMALL = {"d_hidden": 32, "num_blocks": 2, "k": 2, "dataset": "digits"}    # models/resmlp.py, cheap on a CPU


def write_spec(where: Path, name, grid, *, epochs, seeds=(1,), resources=None, checkpoint=None) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    p = where / f"{name}.yaml"
    p.write_text(json.dumps({
        "name": name, "task": "resmlp", "base": {**SMALL, "epochs": epochs}, "grid": grid, "seeds": list(seeds),
        "resources": {"time_min": 20, "mem_gb": 1, "max_parallel": 4, **(resources or {})},
        "checkpoint": {"every_min": 10, **(checkpoint or {})}}))
    return p


def cli(*args, env=None, timeout=300, cwd=REPO):
    return subprocess.run([PY, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def wait_for(condition, timeout, what):
    """Poll `condition` until it returns something true; its value. Fails saying `what` after `timeout` s."""
    end = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def shims(tmp_path, *tools, rewrite=None) -> tuple:
    """A PATH whose `tools` count their calls (one line each in the returned file) and exec the real ones.

    `rewrite`: a sed expression applied to the output (a fake sacct state on top of the real one).
    """
    bindir, count = tmp_path / "shims", tmp_path / "calls.txt"
    bindir.mkdir(exist_ok=True)
    for tool in tools:
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        body = f'#!/bin/bash\necho {tool} >> "{count}"\n'
        body += f'"{real}" "$@" | sed -e "{rewrite}"\nexit ${{PIPESTATUS[0]}}\n' if rewrite else f'exec "{real}" "$@"\n'
        (bindir / tool).write_text(body)
        (bindir / tool).chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", count


def calls(count: Path, tool) -> int:
    return count.read_text().split().count(tool) if count.exists() else 0


def rdir(sdir, run):
    return SweepDir(sdir).run(run.run_id).path


def metric_lines(sdir, run) -> int:
    return len(atomic.read_jsonl(rdir(sdir, run) / "metrics.jsonl"))


def attempts(sdir, run, event="start") -> list:
    return [a for a in atomic.read_jsonl(rdir(sdir, run) / "attempts.jsonl") if a["event"] == event]


def all_done(sdir, runs) -> bool:
    return all((rdir(sdir, r) / "result.json").exists() for r in runs)


def model_metrics(sdir, run) -> dict:
    result = json.loads((rdir(sdir, run) / "result.json").read_text())
    return {k: v for k, v in result["metrics"].items() if not k.endswith("time_s")}


def job_ids(sdir) -> list:
    out = []
    for e in SweepDir(sdir).read_journal():
        out += e.get("job_ids", []) if e["event"] == "submit" else [e["job_id"]] if e["event"] == "chain" else []
    return out


def squeue_states(job) -> set:
    out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True).stdout
    return set(out.split())


def reference(tmp_path, spec_path) -> subprocess.Popen:
    """The same runs uninterrupted, in-process (debug executor), started now in the background.

    Resources are no part of a run's identity: a copy of the spec in another root gives the same run_ids.
    """
    ref = tmp_path / "reference"
    ref.mkdir()
    copy = ref / spec_path.name
    copy.write_text(spec_path.read_text())
    return subprocess.Popen([PY, str(REPO / "main.py"), "submit", str(copy), "--executor", "debug",
                             "--root", str(ref / "root")], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def reference_metrics(tmp_path, proc, sweep) -> dict:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    sdir = tmp_path / "reference" / "root" / sweep.name
    return {r.run_id: model_metrics(sdir, r) for r in sweep.runs}
