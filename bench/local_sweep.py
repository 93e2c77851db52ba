"""A sweep of 32 runs of known length on the local executor, max_parallel=2: wall time over the ideal.

    python bench/local_sweep.py [--runs 32] [--epochs 600] [--pack 4]

Runs of known length: models/resmlp.py on digits, a narrow model (d_hidden 32, 2 blocks) for a
fixed number of epochs, one seed each.

The ideal is the sum of the runs' own wall times (result.json's wall_time_s, measured inside
the job) divided by max_parallel; the ratio says what the launcher, the driver, submitit's
controller and the Python/torch start-up of each job cost on top. Target: under 1.10.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jobs.runtime.runner import PackJob  # noqa: E402
from jobs.sched import submit as sched  # noqa: E402
from jobs.store import SweepDir, atomic  # noqa: E402
from jobs.spec import load_sweep  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=600, help="epochs per run (sets its length)")
    ap.add_argument("--pack", type=int, default=4)
    ap.add_argument("--max-parallel", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {"name": "bench_local", "task": "resmlp",
                "base": {"d_hidden": 32, "num_blocks": 2, "k": 2, "epochs": args.epochs},
                "seeds": {"range": [0, args.runs]},
                "resources": {"pack": args.pack, "max_parallel": args.max_parallel, "time_min": 60}}
        (tmp / "s.yaml").write_text(json.dumps(spec))
        sweep = load_sweep(tmp / "s.yaml")
        sdir = tmp / "root" / sweep.name
        t0 = time.perf_counter()
        sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="local", log=lambda *_: None)
        while "in flight" in sched.states(sweep, SweepDir(sdir)).values():
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        runs = [atomic.read_json(SweepDir(sdir).run(r.run_id).path / "result.json") for r in sweep.runs]
        missing = sum(r is None for r in runs)
        total = sum(r["wall_time_s"] for r in runs if r)
    ideal = total / args.max_parallel
    print(f"runs {args.runs} (pack {args.pack}, max_parallel {args.max_parallel}), {missing} unfinished")
    print(f"sum of run times     {total:8.1f} s   (mean {total / max(1, args.runs - missing):.2f} s a run)")
    print(f"ideal (sum / {args.max_parallel})      {ideal:8.1f} s")
    print(f"wall time            {wall:8.1f} s")
    print(f"wall / ideal         {wall / ideal:8.3f}   (target < 1.10)")


if __name__ == "__main__":
    main()
