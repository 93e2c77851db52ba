"""The depth-ladder reference sweep's 72 runs (sweeps/depth_ladder.yaml without its 24 vanilla-FA
runs, which the reference did not run) on one GPU: estimated time at
100 epochs when several runs share the GPU as concurrent processes (what `pack_concurrent: true`
does in a job), against the reference's ~7 hours one run at a time.

    python bench/resmlp_gpu.py                                # CUDA, concurrency 1, 4, 8, 12; ~5 min on an H100
    python bench/resmlp_gpu.py --concurrency 8 --epochs 3
    python bench/resmlp_gpu.py --device cpu --n-train 2048 --n-test 512 --concurrency 1,2 --distinct 2   # smoke

Data: a CIFAR-shaped random tensor (n_train x 3,072, 10 classes; 50,000 + 10,000 by default) made
on the device by each worker, as models.data puts a real dataset there. The configs are the sweep's
24 distinct (method, d_hidden, num_blocks, k) points; seeds cost the same, so each counts 3 times.
For each concurrency c, c worker processes share the device and take the configs from one queue;
each trains its config for `--epochs` epochs through models.resmlp.fit (the real loop: batches are
index slices, per-epoch test evaluation, cosine lr) and reports the seconds of its epochs after the
first (which pays CUDA start-up and allocation). The estimate for the sweep at 100 epochs is

    sum over configs of 3 seeds x 100 x (steady seconds per epoch at concurrency c) / c

(c runs progress at once, each at the per-epoch pace measured while c shared the device), plus
nothing for start-up: one start per job of the real sweep is seconds against hours. Prints figures;
asserts nothing.
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

REFERENCE_HOURS = 7.0
SEEDS, EPOCHS_REAL = 3, 100


def ladder_configs():
    """The distinct (method, d_hidden, num_blocks, k) points of sweeps/depth_ladder.yaml's 72 reference
    runs (FA with the exact output gradient; its vanilla-FA repeat, fa_head: random, left out)."""
    from jobs.spec import load_sweep
    sweep = load_sweep(os.path.join(REPO, "sweeps", "depth_ladder.yaml"))
    runs = [r.config for r in sweep.runs if r.config["fa_head"] == "exact"]
    seen = {}
    for c in runs:
        seen.setdefault((c["method"], c["d_hidden"], c["num_blocks"], c["k"]), None)
    assert len(runs) == 72, len(runs)
    return list(seen)


def worker(device, n_train, n_test, epochs, threads, todo, done):
    import torch
    from bench.resmlp_cpu import EpochClock
    from models import resmlp
    torch.set_num_threads(threads)
    g = torch.Generator(device=device).manual_seed(os.getpid())
    data = {"x_train": torch.randn(n_train, 3072, device=device, generator=g),
            "y_train": torch.randint(0, 10, (n_train,), device=device, generator=g),
            "x_test": torch.randn(n_test, 3072, device=device, generator=g),
            "y_test": torch.randint(0, 10, (n_test,), device=device, generator=g),
            "in_dim": 3072, "n_classes": 10, "name": "random"}
    while True:
        item = todo.get()
        if item is None:
            return
        method, d, L, k = item
        clock = EpochClock(device)
        start = time.perf_counter()
        resmlp.fit({"method": method, "d_hidden": d, "num_blocks": L, "k": k, "epochs": epochs, "seed": 0},
                   clock, data)
        steady = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
        done.put((item, sum(steady) / len(steady), clock.ends[0] - start))


def measure(configs, c, args):
    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for cfg in configs:
        todo.put(cfg)
    for _ in range(c):
        todo.put(None)
    procs = [ctx.Process(target=worker, args=(args.device, args.n_train, args.n_test, args.epochs,
                                               args.threads, todo, done)) for _ in range(c)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [done.get() for _ in configs]
    for p in procs:
        p.join()
    return results, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--concurrency", default="1,4,8,12", help="comma list of runs sharing the device at once")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measured config (the first is not counted)")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=0, help="measure only the first N distinct configs (smoke)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is not counted)")
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run this where a GPU is, or pass --device cpu for a smoke run")
    configs = ladder_configs()
    weight = len(configs) / (args.distinct or len(configs))      # scale a partial measurement to all 24
    configs = configs[:args.distinct] if args.distinct else configs
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__} on {name}; {len(configs)} distinct configs x {SEEDS} seeds, "
          f"n_train {args.n_train}, n_test {args.n_test}, {args.epochs} epochs each (first not counted)")
    print(f"{'runs at once':>12} {'s/epoch (mean)':>15} {'start-up s':>11} {'bench wall s':>13} "
          f"{'72 runs x 100 epochs':>21} {'vs 7 h':>8}")
    for c in [int(x) for x in args.concurrency.split(",")]:
        results, wall = measure(configs, c, args)
        per_epoch = [s for _, s, _ in results]
        startup = max(s for *_, s in results)
        sweep_s = weight * sum(SEEDS * EPOCHS_REAL * s for s in per_epoch) / c
        print(f"{c:>12} {sum(per_epoch) / len(per_epoch):>15.3f} {startup:>11.1f} {wall:>13.1f} "
              f"{sweep_s / 60:>17.1f} min {REFERENCE_HOURS * 3600 / sweep_s:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
