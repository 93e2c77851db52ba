"""The SLURM executor on a real cluster (env/slurm/start.sh): sbatch calls and seconds to submit
1,000 runs, sacct calls and seconds for `status` on them, and preemption-to-running-again latency.

    sudo bash env/slurm/start.sh
    .venv/bin/python bench/slurm.py [--runs 1000] [--single 100] [--preemptions 3]

Prints figures, asserts nothing. Calls are counted by PATH shims that log, then exec the real
sbatch / sacct. The 1,000 runs are submitted, measured, then cancelled before they do much.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from jobs.sched import slurm  # noqa: E402
from jobs.sched import submit as sched  # noqa: E402
from jobs.store import SweepDir, atomic  # noqa: E402
from jobs.runtime.runner import PackJob  # noqa: E402
from jobs.spec import Resources, load_sweep  # noqa: E402


def shims(tmp: Path) -> Path:
    """sbatch, sacct and scancel on PATH that count their calls in tmp/calls.txt."""
    bindir, count = tmp / "shims", tmp / "calls.txt"
    bindir.mkdir()
    for tool in ("sbatch", "sacct", "scancel"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bindir / tool).write_text(f'#!/bin/bash\necho {tool} >> "{count}"\nexec "{real}" "$@"\n')
        (bindir / tool).chmod(0o755)
    os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
    return count


def calls(count: Path, tool: str) -> int:
    return count.read_text().split().count(tool) if count.exists() else 0


def sweep_of(tmp: Path, name: str, runs: int, epochs: int, **resources) -> object:
    spec = {"name": name, "task": "resmlp",
            "base": {"d_hidden": 32, "num_blocks": 2, "k": 2, "dataset": "digits", "epochs": epochs},
            "seeds": {"range": [0, runs]}, "max_runs": max(runs, 1),
            "resources": {"time_min": 20, "mem_gb": 1, "pack": 1, "max_parallel": 4, **resources}}
    (tmp / f"{name}.yaml").write_text(json.dumps(spec))
    return load_sweep(tmp / f"{name}.yaml")


def scancel_all(job_ids, timeout=120):
    """Cancel the jobs and wait until the queue has none of them: a cancelled job's processes still
    write its logs for a moment, and the temporary directory is removed right after."""
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    for i in range(0, len(roots), 500):
        subprocess.run(["scancel", *roots[i:i + 500]], capture_output=True)
    for i in range(0, len(roots), 500):
        part = ",".join(roots[i:i + 500])
        wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", part], capture_output=True,
                                            text=True).stdout.strip(), timeout)


def wait_for(condition, timeout):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"gave up after {timeout} s")


def bench_submit(tmp, count, runs):
    sweep = sweep_of(tmp, "bench_submit", runs, epochs=1, max_parallel=4)
    sdir = tmp / "root" / sweep.name
    before = calls(count, "sbatch")
    t0 = time.perf_counter()
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    took = time.perf_counter() - t0
    n_sbatch = calls(count, "sbatch") - before
    print(f"submit {runs} runs as arrays (sched.submit, pack 1)")
    print(f"  sbatch calls       {n_sbatch:8d}")
    print(f"  seconds            {took:8.2f}   (sweep dir, {runs} config.yaml, journal, sbatch)")
    return sweep, sdir, entry


def bench_single(tmp, count, single, runs):
    """One executor.submit per run, as without arrays: `single` of them, extrapolated to `runs`."""
    sdir = (tmp / "root" / "bench_single").resolve()
    sdir.mkdir(parents=True)
    res, profile = Resources.model_validate({"cpus": 1, "mem_gb": 1, "time_min": 20, "max_parallel": 4}), slurm.load_profile("local")
    params = slurm.executor_params(slurm.resources_for(res, profile), res, profile, "bench_single")
    params.pop("array_parallelism")
    ex = slurm._executor_class()(folder=sdir / "logs" / "%j")
    ex.update_parameters(**params)
    before = calls(count, "sbatch")
    t0 = time.perf_counter()
    jobs = [ex.submit(PackJob(str(sdir), [f"none{i}"])) for i in range(single)]
    took = time.perf_counter() - t0
    n_sbatch = calls(count, "sbatch") - before
    scancel_all([j.job_id for j in jobs])
    print(f"one executor.submit per run: {single} runs")
    print(f"  sbatch calls       {n_sbatch:8d}   ({n_sbatch * runs // single} for {runs})")
    print(f"  seconds            {took:8.2f}   ({took * runs / single:.1f} s for {runs}, extrapolated)")


def bench_status(tmp, count, sweep, sdir, when):
    before = calls(count, "sacct")
    t0 = time.perf_counter()
    states = sched.states(sweep, SweepDir(sdir))
    took = time.perf_counter() - t0
    n_sacct = calls(count, "sacct") - before
    before = calls(count, "sacct")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(REPO / "main.py"), "status", str(sweep.path), "--root",
                          str(tmp / "root")], capture_output=True, text=True, cwd=REPO)
    cli = time.perf_counter() - t0
    n_cli = calls(count, "sacct") - before
    counts = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    print(f"status on {len(states)} runs, {when} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    print(f"  sacct calls        {n_sacct:8d}   (sched.states: target 1)")
    print(f"  seconds            {took:8.2f}   (sched.states, in-process; target < 2)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jobs.sched.submit, jobs.sched.progress"], cwd=REPO, check=True)
    imports = time.perf_counter() - t0
    print(f"  `main.py status`   {cli:8.2f} s, {n_cli} sacct call(s), exit {out.returncode} "
          f"(of which {imports:.2f} s Python start-up and imports)")


def bench_preemption(tmp, n):
    """USR2 to a running job -> the run checkpoints -> requeued -> running again, n times."""
    sweep = sweep_of(tmp, "bench_preempt", 1, epochs=400)
    sdir = tmp / "root" / sweep.name
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    job = entry["job_ids"][0]
    rdir = SweepDir(sdir).run(sweep.runs[0].run_id).path

    def events(kind):
        return [a for a in atomic.read_jsonl(rdir / "attempts.jsonl") if a["event"] == kind]

    def lines():
        return len(atomic.read_jsonl(rdir / "metrics.jsonl"))

    saved, again, training = [], [], []
    try:
        for i in range(1, n + 1):
            wait_for(lambda: len(events("start")) >= i and lines() >= 2 + (0 if i == 1 else seen), 180)
            t0 = time.time()
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            end = wait_for(lambda: len(events("end")) >= i and events("end")[i - 1], 60)
            saved.append(end["ended"] - t0)
            seen = lines()
            start = wait_for(lambda: len(events("start")) > i and events("start")[i], 120)
            again.append(start["started"] - t0)
            wait_for(lambda: lines() > seen, 120)
            training.append(time.time() - t0)
    finally:
        scancel_all([job])

    def fmt(xs):
        return f"median {statistics.median(xs):5.1f} s, min {min(xs):5.1f}, max {max(xs):5.1f}"
    print(f"preemption (scancel --signal=USR2 on a running job), {n} times")
    print(f"  USR2 -> checkpoint saved, attempt ended      {fmt(saved)}")
    print(f"  USR2 -> next attempt running (in the task)   {fmt(again)}")
    print(f"  USR2 -> training again (a new metrics line)  {fmt(training)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--single", type=int, default=100, help="runs submitted one sbatch each (extrapolated to --runs)")
    ap.add_argument("--preemptions", type=int, default=3)
    args = ap.parse_args()
    if not slurm.shutil.which("sbatch"):
        sys.exit("no sbatch on PATH: start the test cluster with `sudo bash env/slurm/start.sh`")
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as tmp:
        tmp = Path(tmp)
        count = shims(tmp)
        sweep, sdir, entry = bench_submit(tmp, count, args.runs)
        try:
            bench_status(tmp, count, sweep, sdir, "while queued and running")
        finally:
            scancel_all(entry.get("job_ids", []))
        bench_status(tmp, count, sweep, sdir, "after scancel: nothing on the CPUs")
        bench_single(tmp, count, args.single, args.runs)
        bench_preemption(tmp, args.preemptions)


if __name__ == "__main__":
    main()
