"""Training throughput of the cotformer_train task on CPU: tokens/s of the real training loop.

    python bench/cotformer_cpu.py [--iterations 30] [--threads 1]

Runs the task (models/cotformer_train.py) in-process with a real RunContext in a temporary
directory, at the dimensions of sweeps/cotformer_smoke.yaml (4 layers of width 64, 5 repeats,
16 x 64-token sequences x 2 accumulation steps per step), on a 2 MB byte-level corpus, for each
model kind; prints tokens/s over the training steps (evaluation excluded: train_time_s counts only
the steps). The adaptive model trains with random length factors, so it runs fewer token-repeats.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.runtime.context import RunContext  # noqa: E402
from models import corpus, cotformer_train  # noqa: E402

SMOKE = {"n_layer": 4, "n_embd": 64, "n_head": 4, "sequence_length": 64, "n_repeat": 5, "n_layer_begin": 1,
         "n_layer_end": 1, "depth_embedding": "linear_learned", "batch_size": 16, "acc_steps": 2,
         "lr": 0.003, "warmup_percent": 0.1, "eval_batches": 1, "seed": 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=["base", "ln_cotformer", "adm"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        corpus.build(data, max_bytes=2_000_000)
        # a small validation split so the end-of-run full evaluation stays short
        val = corpus.open_split(data, "val")[:8192].copy()
        val.tofile(data / "val.bin")
        print(f"threads {args.threads}, {args.iterations} steps of "
              f"{SMOKE['batch_size'] * SMOKE['acc_steps'] * SMOKE['sequence_length']} tokens")
        for kind in args.models:
            cfg = {**cotformer_train.CONFIG, **SMOKE, "model": kind, "data_dir": str(data),
                   "iterations": args.iterations, "eval_freq": args.iterations}
            ctx = RunContext(Path(tmp) / kind, cfg, checkpoint={"every_min": None, "every_steps": None, "keep_last": 1})
            t0 = time.perf_counter()
            res = cotformer_train.train(cfg, ctx)
            tokens = args.iterations * SMOKE["batch_size"] * SMOKE["acc_steps"] * SMOKE["sequence_length"]
            print(f"{kind:>13}: {tokens / res['train_time_s']:8.0f} tokens/s  "
                  f"(train {res['train_time_s']:.1f} s, whole run {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
