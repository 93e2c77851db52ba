"""What `logging: {system: N}` costs a run (target: under 1 % of its time at N = 1 s).

    python bench/system_metrics.py [--seconds 20] [--every 1]

Prints the time one sample takes (psutil, NVML where present, and the ctx.log line it becomes),
that time as a share of the sampling interval, and a run's own figure side by side with the
reference: the same fixed CPU work (matrix products on one thread) timed with the sampler on and
without it, best of 3 each, and their ratio.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from jobs.runtime.context import RunContext  # noqa: E402
from jobs.runtime.sysmetrics import Sampler  # noqa: E402


def work(ctx, steps, a):
    """The task's loop: `steps` matrix products, a metric line every 10."""
    for step in range(steps):
        (a @ a).sum().item()
        if step % 10 == 0:
            ctx.log(step, loss=float(step))


def timed(folder, every, steps, a) -> float:
    ctx = RunContext(folder, {}, logging={"system": every} if every else {})
    t0 = time.perf_counter()
    work(ctx, steps, a)
    elapsed = time.perf_counter() - t0
    ctx.close()
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of the timed work (about)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    args = p.parse_args()
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        work(RunContext(tmp / "probe", {}), 50, a)
        steps = max(50, int(args.seconds / ((time.perf_counter() - t0) / 50)))
        ctx = RunContext(tmp / "one", {})
        sampler = Sampler(lambda **s: ctx.log(0, **s), 3600)          # its thread idles; we sample by hand
        n, t0 = 200, time.perf_counter()
        for _ in range(n):
            ctx.log(0, **sampler.sample())
        per_sample = (time.perf_counter() - t0) / n
        sampler.stop()
        figures = sorted(sampler.sample())
        on = min(timed(tmp / f"on{i}", args.every, steps, a) for i in range(3))
        off = min(timed(tmp / f"off{i}", None, steps, a) for i in range(3))
        lines = sum(1 for line in (tmp / "on0" / "metrics.jsonl").read_text().splitlines() if "sys_rss_mb" in line)
    print(f"figures per sample                       {len(figures)} ({', '.join(figures)})")
    print(f"one sample (psutil + NVML + ctx.log)     {per_sample * 1e3:.3f} ms")
    print(f"its share of a {args.every:g} s interval             {per_sample / args.every:.4%}  (target < 1 %)")
    print(f"work with sampling every {args.every:g} s          {on:.3f} s  ({lines} samples in the first run)")
    print(f"reference: the same work, no sampling    {off:.3f} s  (ratio {on / off:.3f})")


if __name__ == "__main__":
    main()
