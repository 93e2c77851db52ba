"""Sweeps of trivial runs, size by size: CPU per run in a pack, runs per second, the watcher's CPU share.

    .venv/bin/python bench/scale.py                                  # 300, 3,000, 10,000 runs; local, and SLURM where sbatch is
    .venv/bin/python bench/scale.py --sizes 300,3000 --executors slurm --pack 100

The task returns at once, so what is timed is hpcsweep's own work around each run. For each size and
executor a sweep is submitted in packs of --pack runs, `main.py status SPEC --wait` watches it to the
end (a watcher that submits nothing), then `main.py status` runs once on the finished sweep. Figures:
- in-pack ms/run: each run reports its process's CPU time; within a pack, the CPU from one run to the
  next is what the runner spends per run (the job's start-up is left out).
- all ms/run (local only): the CPU of every process of the submission (driver, jobs, start-ups
  included), reaped by this process, over the runs. On SLURM the jobs are slurmstepd's children.
- runs/s: the runs over the wall time from submit to the watcher's end.
- watcher %: the watcher's CPU (its start-up and sacct calls included) over its wall time.
- status s: `main.py status` on the finished sweep (wall time, Python start-up included).
Each figure is also given as a ratio to the smallest size, so growth with the sweep shows.
Targets on this 2-core machine: in-pack flat and under ~10 ms; 10,000 on SLURM in packs of 100 under
4 minutes; watcher under 3 %; status under 1 s. Prints figures, asserts nothing.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from jobs.runtime.runner import PackJob  # noqa: E402
from jobs.sched import submit as sched  # noqa: E402
from jobs.spec import load_sweep  # noqa: E402
from jobs.store import SweepDir  # noqa: E402

TASK = '''import os, time
CONFIG = {"i": 0}


def train(cfg, ctx):
    return {"cpu": time.process_time(), "pid": os.getpid()}
'''


def cpu_of(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_child(cmd, timeout):
    """Run `cmd` to its end; (wall s, CPU s of it and its reaped children, exit code, output tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    out = b""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    out = proc.stdout.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, cpu_of(usage), proc.returncode, out[-2000:]


def one(tmp: Path, n: int, executor: str, pack: int, timeout: float) -> dict:
    where = tmp / f"{executor}{n}"
    where.mkdir()
    (where / "trivial.py").write_text(TASK)
    resources = {"pack": pack, "time_min": 30, "mem_gb": 0.5}
    spec = where / "scale.yaml"
    spec.write_text(json.dumps({"name": f"scale{n}", "task": "trivial.py:train", "grid": {"i": {"range": [0, n]}},
                                "max_runs": n, "resources": resources, "checkpoint": {"every_min": None}}))
    sweep = load_sweep(spec)
    root = where / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    before = cpu_of(resource.getrusage(resource.RUSAGE_CHILDREN))
    t0 = time.perf_counter()
    entry = sched.submit(sweep, sweep_dir, job_class=PackJob, executor=executor,
                         cluster="local" if executor == "slurm" else None, log=lambda *_: None)
    submitted = time.perf_counter() - t0
    flags = ["--root", str(root)] + (["--cluster", "local"] if executor == "slurm" else [])
    watch_wall, watch_cpu, code, out = run_child([sys.executable, "main.py", "status", str(spec), "--wait", *flags], timeout)
    wall = time.perf_counter() - t0
    if code:
        print(f"  the watcher exited {code}:\n{out}", file=sys.stderr)
    status_wall, status_cpu, _, _ = run_child([sys.executable, "main.py", "status", str(spec), *flags], 120)
    if executor == "local":
        try:
            os.waitpid(entry["driver_pid"], 0)         # the driver is ours: reaping it counts its jobs' CPU
        except ChildProcessError:
            pass           # already reaped by subprocess's own clean-up of dropped Popen objects: counted too
    every = cpu_of(resource.getrusage(resource.RUSAGE_CHILDREN)) - before - watch_cpu - status_cpu
    by_pid, done = {}, 0
    for r in sweep.runs:
        result = sweep_dir.run(r.run_id).read_result()
        if result is not None:
            done += 1
            by_pid.setdefault(result["metrics"]["pid"], []).append(result["metrics"]["cpu"])
    spans = [(max(c) - min(c), len(c) - 1) for c in by_pid.values() if len(c) > 1]
    in_pack = sum(s for s, _ in spans) / max(1, sum(k for _, k in spans))
    return {"n": n, "done": done, "in_pack_ms": 1000 * in_pack, "all_ms": 1000 * every / n if executor == "local" else None,
            "runs_s": n / wall, "wall_s": wall, "submit_s": submitted, "watch_pct": 100 * watch_cpu / watch_wall,
            "status_s": status_wall}


def table(executor, pack, rows) -> str:
    base = rows[0]

    def ratio(key, r):
        return f"{r[key] / base[key]:5.2f}x" if r[key] and base[key] else "     -"

    lines = [f"{executor}, packs of {pack}:",
             f"{'runs':>7} {'done':>7} {'in-pack ms/run':>15} {'ratio':>6} {'all ms/run':>11} {'ratio':>6} "
             f"{'runs/s':>8} {'ratio':>6} {'wall s':>7} {'submit s':>8} {'watcher %':>9} {'status s':>8}"]
    for r in rows:
        all_ms = f"{r['all_ms']:11.2f}" if r["all_ms"] is not None else f"{'-':>11}"
        lines.append(f"{r['n']:>7} {r['done']:>7} {r['in_pack_ms']:15.2f} {ratio('in_pack_ms', r)} {all_ms} "
                     f"{ratio('all_ms', r)} {r['runs_s']:8.1f} {ratio('runs_s', r)} {r['wall_s']:7.1f} "
                     f"{r['submit_s']:8.1f} {r['watch_pct']:9.2f} {r['status_s']:8.2f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="300,3000,10000", help="comma list of sweep sizes (runs)")
    ap.add_argument("--executors", default=None, help="comma list of local,slurm (default: local, and slurm where sbatch is)")
    ap.add_argument("--pack", type=int, default=100, help="runs per job")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one sweep may take")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    executors = args.executors.split(",") if args.executors else ["local"] + (["slurm"] if shutil.which("sbatch") else [])
    with tempfile.TemporaryDirectory(prefix="bench_scale_", dir=os.environ.get("HPCSWEEP_BENCH_TMP")) as tmp:
        for executor in executors:
            rows = []
            for n in sizes:
                rows.append(one(Path(tmp), n, executor, args.pack, args.timeout))
                print(f"  {executor} {n}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()})}",
                      file=sys.stderr, flush=True)
            print(table(executor, args.pack, rows), flush=True)


if __name__ == "__main__":
    main()
