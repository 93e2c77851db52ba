"""What checkpointing costs a training run, as a fraction of its time.

    python bench/checkpoint_overhead.py [--hidden 512] [--steps 300] [--saves 6] [--threads 1]

One run of a small MLP (about 2.7 MB of weights, 8 MB checkpointed with its Adam state) trained
on random data on the CPU, saving through RunContext every few dozen steps exactly as a task does
(RNG capture, torch.save, fsync, sha256 sidecar, retention, manifest entry). Prints the median
time of one save, the checkpoint's size, the time per training step, and the overhead
save_time / interval for the default interval (every_min=10) beside a far more frequent one
(every 100 steps) and every 10 steps. Takes well under 30 s.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jobs.runtime.context import RunContext  # noqa: E402


def build(hidden: int):
    """An MLP for 784-dim inputs, 10 classes, and its Adam optimizer."""
    model = torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def run(hidden: int, steps: int, saves: int, batch: int = 128):
    """(seconds per step, [seconds per save], checkpoint bytes, parameter count) from one run."""
    torch.manual_seed(0)
    model, opt = build(hidden)
    x, y = torch.randn(4096, 784), torch.randint(0, 10, (4096,))
    every = max(1, steps // saves)
    step_times, save_times, size = [], [], 0
    with tempfile.TemporaryDirectory() as root:
        ctx = RunContext(Path(root) / "runs" / "bench", {}, run_id="bench", manifest=Path(root) / "manifest.yaml",
                         checkpoint={"every_min": None, "every_steps": every, "keep_last": 2})
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            idx = torch.randint(0, len(y), (batch,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            if step > 10:                  # the first steps warm up allocators and threads
                step_times.append(t1 - t0)
            if ctx.should_checkpoint(step):
                path = ctx.save(step, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
                save_times.append(time.perf_counter() - t1)
                size = path.stat().st_size
    return statistics.median(step_times), save_times, size, sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512, help="MLP width (512: about 0.67M parameters)")
    ap.add_argument("--steps", type=int, default=300, help="training steps in the run")
    ap.add_argument("--saves", type=int, default=6, help="checkpoints taken during the run")
    # one thread, as a cpus=1 job runs; on a shared machine more threads than free cores make
    # OpenMP spin and single steps take 30x longer, which would measure the neighbours, not us
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    step_s, save_times, size, n_params = run(args.hidden, args.steps, args.saves)
    save_s = statistics.median(save_times)
    print(f"model: MLP 784-{args.hidden}-{args.hidden}-10, {n_params / 1e6:.2f}M parameters "
          f"({n_params * 4 / 2**20:.1f} MiB of weights), Adam, batch 128, {torch.get_num_threads()} CPU thread(s)")
    print(f"checkpoint: {size / 2**20:.1f} MiB ({size} bytes); one save (median of {len(save_times)}): "
          f"{save_s * 1e3:.1f} ms  [min {min(save_times) * 1e3:.1f}, max {max(save_times) * 1e3:.1f}]")
    print(f"training: {step_s * 1e3:.2f} ms per step (median of {args.steps - 10})")
    print()
    print(f"{'checkpoint interval':<28}{'run time between saves':>24}{'overhead':>12}")
    for label, interval_s in [("every_min: 10 (default)", 600.0),
                              ("every_steps: 100", 100 * step_s),
                              ("every_steps: 10", 10 * step_s)]:
        print(f"{label:<28}{interval_s:>22.2f} s{save_s / interval_s:>11.3%}")
    print(f"\n(bench took {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
