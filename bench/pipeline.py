"""Submitting a 3-stage pipeline on a real SLURM (env/slurm/start.sh): prepare (1 run) -> train
(10 runs) -> eval (100 points per trained run: 1,000 runs), every stage at once from the login
node, downstream arrays held by dependencies. Prints sbatch calls and seconds, side by side with
the plain 1,011-run sweep of the same size (one stage, no dependencies); asserts nothing.

    sudo bash env/slurm/start.sh
    .venv/bin/python bench/pipeline.py [--seeds 10] [--points 100]

The jobs are cancelled right after submission (the figure is the submission).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tests" / "fixtures" / "pipeline_tasks"


def shims(tmp: Path) -> Path:
    bindir, count = tmp / "shims", tmp / "calls.txt"
    bindir.mkdir()
    for tool in ("sbatch",):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bindir / tool).write_text(f'#!/bin/bash\necho {tool} >> "{count}"\nexec "{real}" "$@"\n')
        (bindir / tool).chmod(0o755)
    return count


def submit(tmp: Path, spec: dict, name: str):
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    count = tmp / "calls.txt"
    count.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{tmp / 'shims'}:{os.environ['PATH']}"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(REPO / "main.py"), "submit", str(path), "--executor", "slurm",
                          "--cluster", "local", "--root", str(tmp / "root")], capture_output=True, text=True, env=env)
    took = time.perf_counter() - started
    if out.returncode:
        sys.exit(out.stderr)
    journal = tmp / "root" / name / "journal.jsonl"
    ids = [j for line in journal.read_text().splitlines() for j in json.loads(line).get("job_ids", [])]
    subprocess.run(["scancel", *sorted({j.split("_")[0] for j in ids})], capture_output=True)
    calls = count.read_text().split().count("sbatch") if count.exists() else 0
    return calls, took, out.stdout.strip().splitlines()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--points", type=int, default=100)
    args = p.parse_args()
    if not shutil.which("sbatch"):
        sys.exit("no sbatch on PATH: start the test cluster with `sudo bash env/slurm/start.sh`")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        shims(tmp)
        for f in TASKS.glob("*.py"):
            shutil.copy(f, tmp / f.name)
        n = args.seeds * args.points
        pipeline = {"name": "pipe", "max_runs": n + args.seeds + 1, "stages": [
            {"name": "prepare", "task": "prep.py:train"},
            {"name": "train", "after": "prepare", "task": "fit.py:train", "seeds": {"range": [0, args.seeds]}},
            {"name": "eval", "after": "train", "task": "score.py:train",
             "grid": {"scale.factor": {"linspace": [0.5, 2.0, args.points]}}}],
            "resources": {"time_min": 5, "mem_gb": 1}}
        flat = {"name": "flat", "task": "score.py:train", "max_runs": n + args.seeds + 1,
                "grid": {"scale.factor": {"linspace": [0.5, 2.0, n + args.seeds + 1]}}, "resources": {"time_min": 5, "mem_gb": 1}}
        calls, took, said = submit(tmp, pipeline, "pipe")
        flat_calls, flat_took, _ = submit(tmp, flat, "flat")
    print(said)
    print(f"{'':34}{'pipeline':>12}{'one stage':>12}")
    print(f"{'runs':34}{n + args.seeds + 1:>12,}{n + args.seeds + 1:>12,}")
    print(f"{'sbatch calls':34}{calls:>12}{flat_calls:>12}")
    print(f"{'seconds (main.py submit, end to end)':34}{took:>12.2f}{flat_took:>12.2f}")
    print(f"ratio pipeline / one stage: {took / flat_took:.2f}x the time, {calls} vs {flat_calls} sbatch calls "
          f"(one array per trained run's evals: each waits on its own training job)")


if __name__ == "__main__":
    main()
