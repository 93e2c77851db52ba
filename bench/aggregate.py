"""Time `aggregate` on a synthetic 10,000-run sweep whose runs each logged 1,000 lines
(targets: tables under 5 s, figures under 10 s more), and the curves side by side with DuckDB.

    python bench/aggregate.py                      # 10,000 runs x 1,000 lines, in a temp dir
    python bench/aggregate.py --runs 1000 --keep   # smaller; keep the sweep dir to look at

Builds the sweep dir first (not timed): spec.yaml with an analysis block of six figures, plan.json,
and per run config.yaml, result.json and a metrics.jsonl written the way ctx.log writes it
({"step", "time", loss, lr} every step, {"step", "time", val_acc} every 50 steps, a router-weight
list every 250); PENDING more runs are planned whose jobs have not run yet. First the curves, for
each DataFrame backend (numpy, pyarrow): analysis.curves with an empty cache against DuckDB's
read_json of the same files into a DataFrame (ratio), then again after one more run of the plan
finished (its log alone converted). Then one full aggregate, timed by phase: "tables" is runs.csv
and the summary (CSV, Markdown, LaTeX); "figures" is the six figures as PNG and PDF. A second call
(nothing new) shows the cost of finding that nothing changed (the figures are not drawn again: a
hash of their inputs says so). Wall and CPU seconds are both printed (CPU includes worker
processes): on a shared machine the wall time also holds the time other processes took.
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.aggregate import aggregate  # noqa: E402

METHODS = ["bp", "fa", "dfa", "pc"]
ANALYSIS = {
    "group_by": ["method", "d_hidden", "k", "ponder_coef", "lambda_sparse"],
    "metrics": ["test_acc", "mean_ponder_steps", "macs"],
    "units": {"macs": "MACs", "wall_time_s": "s"},
    "labels": {"test_acc": "Test accuracy", "mean_ponder_steps": "Mean ponder steps", "k": "Trainable blocks k",
               "ponder_coef": "Ponder cost", "lambda_sparse": "Sparsity weight", "loss": "Training loss",
               "method": "Method", "d_hidden": "Width", "router_weights": "Router weight"},
    "figures": [
        {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "facet": "d_hidden",
         "where": {"ponder_coef": 0.001, "lambda_sparse": 0.0001}},
        {"kind": "line", "x": "ponder_coef", "y": "test_acc", "hue": "method", "logx": True,
         "where": {"d_hidden": 256, "k": 2, "lambda_sparse": 0.0001}},
        {"kind": "pareto", "x": "mean_ponder_steps", "y": "test_acc", "x_dir": "min", "y_dir": "max", "hue": "method"},
        {"kind": "curves", "x": "step", "y": "loss", "hue": "method",
         "where": {"d_hidden": 256, "k": 2, "ponder_coef": 0.001, "lambda_sparse": 0.0001}},
        {"kind": "heatmap", "x": "lambda_sparse", "y": "ponder_coef", "z": "test_acc",
         "where": {"method": "bp", "d_hidden": 256, "k": 2}},
        {"kind": "hist", "y": "router_weights", "hue": "method"},
    ],
}


def configs(n_runs):
    """A grid of method x d_hidden x k x ponder_coef x lambda_sparse x seed with about n_runs points."""
    axes = {"method": METHODS, "d_hidden": [256, 512], "k": list(range(5)),
            "ponder_coef": [0.0001, 0.001, 0.01, 0.1, 1.0], "lambda_sparse": [0.0001, 0.001, 0.01, 0.1, 1.0]}
    per_seed = math.prod(len(v) for v in axes.values())
    seeds = max(1, round(n_runs / per_seed))
    out = []
    for m in axes["method"]:
        for d in axes["d_hidden"]:
            for k in axes["k"]:
                for p in axes["ponder_coef"]:
                    for lam in axes["lambda_sparse"]:
                        for s in range(seeds):
                            out.append({"method": m, "d_hidden": d, "k": k, "ponder_coef": p,
                                        "lambda_sparse": lam, "seed": s})
    return out[:n_runs] if len(out) > n_runs else out


def log_text(rng, lines, quality):
    """One metrics.jsonl as ctx.log writes it."""
    t = 1.7e9 + rng.random() * 1e6
    out = []
    for step in range(lines):
        t += 0.05 + 0.01 * rng.random()
        if step % 250 == 249:
            out.append(json.dumps({"step": step, "time": t, "router_weights": [rng.random() for _ in range(8)]}))
        elif step % 50 == 49:
            out.append(json.dumps({"step": step, "time": t, "val_acc": quality * (1 - math.exp(-step / 200))}))
        else:
            loss = 2.3 * math.exp(-step / (150 + 300 * quality)) + 0.2 * (1 - quality) + 0.03 * rng.gauss(0, 1)
            out.append(json.dumps({"step": step, "time": t, "loss": loss, "lr": 1e-3 * (1 - step / lines)}))
    return ("\n".join(out) + "\n").encode()


PENDING = 4        # runs planned and not finished yet: two finish during each backend's curve timing


def build(sdir: Path, n_runs, lines):
    rng = random.Random(0)
    cfgs = configs(n_runs)
    # 64 distinct logs, shared round-robin: what is timed depends on their size and shape, not values
    variants = [log_text(random.Random(i), lines, 0.5 + 0.4 * i / 64) for i in range(64)]
    runs = []
    (sdir / "runs").mkdir(parents=True)
    for i, cfg in enumerate(cfgs + [dict(cfgs[0], seed=1000 + j) for j in range(PENDING)]):
        rid = f"{i:012x}"
        label = ",".join(f"{k}={v}" for k, v in cfg.items())
        runs.append({"run_id": rid, "label": label, "config": cfg, "varied": cfg})
        rdir = sdir / "runs" / rid
        rdir.mkdir()
        (rdir / "config.yaml").write_text(json.dumps({"run_id": rid, "label": label, "task": "bench",
                                                      "varied": cfg, "config": cfg}) + "\n")
        if i >= len(cfgs):
            continue                   # pending: its job has not run yet
        quality = 0.6 + 0.05 * METHODS.index(cfg["method"]) + 0.03 * cfg["k"] - 0.02 * math.log10(cfg["ponder_coef"])
        metrics = {"test_acc": quality + rng.gauss(0, 0.01), "mean_ponder_steps": 2 + cfg["k"] + rng.random(),
                   "macs": 1e6 * cfg["d_hidden"] * (1 + cfg["k"]), "router_weights": [rng.random() for _ in range(8)]}
        (rdir / "result.json").write_text(json.dumps({"run_id": rid, "label": label, "metrics": metrics,
                                                      "wall_time_s": 60 + rng.random() * 10, "attempts": 1,
                                                      "finished": "2026-01-01T00:00:00+00:00"}))
        (rdir / "metrics.jsonl").write_bytes(variants[i % len(variants)])
    (sdir / "plan.json").write_text(json.dumps({"name": "bench", "task": "bench", "runs": runs}))
    spec = {"name": "bench", "task": "bench", "seeds": sorted({c["seed"] for c in cfgs}), "analysis": ANALYSIS}
    (sdir / "spec.yaml").write_text(json.dumps(spec) + "\n")      # JSON is YAML
    return len(cfgs)


def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def show(t):
    for k, v in t.items():
        if not k.endswith(" cpu"):
            print(f"    {k:<18} wall {v:6.2f} s   cpu {t.get(k + ' cpu', 0):6.2f} s")


def timed(sdir, out):
    timings, lines = {}, []
    t0, c0 = time.perf_counter(), cpu()
    aggregate(sdir, out=out, timings=timings, log=lines.append)
    from analysis import curve_store
    curve_store.settle()               # (a process exiting would wait for it too)
    return time.perf_counter() - t0, cpu() - c0, timings, lines


def finish_run(sdir, rid, lines):
    """A pending run finishes, as its job leaves it: metrics.jsonl, then result.json (the plan is unchanged)."""
    rdir = sdir / "runs" / rid
    (rdir / "metrics.jsonl").write_bytes(log_text(random.Random(rid), lines, 0.7))
    (rdir / "result.json").write_text(json.dumps({"run_id": rid, "label": rid, "metrics": {
        "test_acc": 0.7, "mean_ponder_steps": 3.0, "macs": 2.56e8, "router_weights": [0.125] * 8}}))


def curves_side_by_side(sdir, lines, repeats=2):
    """First load of every curve (nothing cached) vs DuckDB read_json of the same files into a
    DataFrame, alternated `repeats` times (best of each: the machine is shared); then the load
    after one more run finished (its log alone is converted), best of as many runs finishing one
    after another. For both DataFrame backends."""
    import duckdb
    from analysis import curve_store
    import analysis
    pending = [r["run_id"] for r in json.loads((sdir / "plan.json").read_text())["runs"]][-PENDING:]
    for n, backend in enumerate(curve_store.BACKENDS):
        files = sorted(str(p) for p in (sdir / "runs").glob("*/metrics.jsonl"))
        duck, ours, behind = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = duckdb.connect().sql("SELECT * FROM read_json($f, format='newline_delimited', ignore_errors=true)",
                                       params={"f": files}).df()
            duck.append(time.perf_counter() - t0)
            del ref
            shutil.rmtree(curve_store.cache_dir(sdir), ignore_errors=True)
            t0 = time.perf_counter()
            first = analysis.curves(sdir, dtype_backend=backend)
            ours.append(time.perf_counter() - t0)
            curve_store.settle()       # the cache's last writes, left to the background: done before the next timing
            behind.append(time.perf_counter() - t0 - ours[-1])
        ours_s, duck_s = min(ours), min(duck)
        print(f"\ncurves (dtype_backend={backend!r}), first load of {len(files):,} logs ({len(first):,} rows x "
              f"{first.shape[1]} columns), best of {repeats}:\n  analysis.curves {ours_s:6.2f} s   "
              f"DuckDB read_json -> DataFrame {duck_s:6.2f} s   ratio {ours_s / duck_s:5.2f} (target <= 1.0)   "
              f"[each try: {' '.join(f'{x:.2f}' for x in ours)} vs {' '.join(f'{x:.2f}' for x in duck)}]\n"
              f"  (the DataFrame is returned while the cache's new parts are still being written; that "
              f"finished {' '.join(f'{x:.2f}' for x in behind)} s later, before anything else was timed)")
        del first
        more = []
        for rid in pending[n * repeats:(n + 1) * repeats]:       # as many runs finishing as first-load tries
            finish_run(sdir, rid, lines)
            t0 = time.perf_counter()
            again = analysis.curves(sdir, dtype_backend=backend)
            more.append(time.perf_counter() - t0)
            curve_store.settle()
            rows = len(again)
            del again
        print(f"  after one more run of the plan finished ({rows:,} rows at the last; its log alone converted), best of "
              f"{repeats}: {min(more):6.2f} s = {100 * min(more) / ours_s:4.1f}% of the first load (target < 10%)   "
              f"[each: {' '.join(f'{x:.2f}' for x in more)}]")
        t0 = time.perf_counter()
        analysis.curves(sdir, dtype_backend=backend)
        print(f"  and again, nothing new: {time.perf_counter() - t0:6.2f} s")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--lines", type=int, default=1_000)
    p.add_argument("--keep", action="store_true", help="keep the sweep dir (its path is printed)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpcsweep_bench_"))
    try:
        sdir = tmp / "bench"
        t0 = time.perf_counter()
        n = build(sdir, args.runs, args.lines)
        size = sum(f.stat().st_size for f in (sdir / "runs").glob("*/metrics.jsonl"))
        print(f"sweep dir: {n:,} runs x {args.lines:,} lines ({size / 1e6:,.0f} MB of metrics.jsonl), "
              f"built in {time.perf_counter() - t0:.1f} s (not timed)  [{sdir}]")
        print(f"cores: {len(os.sched_getaffinity(0))}, load average now {os.getloadavg()[0]:.1f}")

        curves_side_by_side(sdir, args.lines)
        wall, cpu_s, t, lines = timed(sdir, tmp / "out")
        print(f"\nfirst aggregate (everything written)   wall {wall:6.2f} s   cpu {cpu_s:6.2f} s")
        show(t)
        tables = t.get("load", 0) + t.get("summary tables", 0)
        print(f"  tables: runs.csv, summary.csv/md/tex (target < 5 s)   {tables:6.2f} s wall")
        print(f"  figures: 6 x PNG + PDF (target < 10 s more)          {t.get('figures', 0):6.2f} s wall")
        warn = [x for x in lines if x.startswith("  - ")]
        if warn:
            print("  warnings:", *warn, sep="\n")

        wall, cpu_s, t, lines = timed(sdir, tmp / "out")
        print(f"\nsecond aggregate (no new results)      wall {wall:6.2f} s   cpu {cpu_s:6.2f} s   [{lines[-1]}]")
        show(t)
        print(f"\nload average now {os.getloadavg()[0]:.1f} (wall > cpu / cores: other processes had the cores)")
    finally:
        if args.keep:
            print(f"\nkept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
