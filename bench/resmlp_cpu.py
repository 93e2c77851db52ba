"""Training samples per second on CPU: models.resmlp's own loop vs a plain PyTorch loop, side by side.

    python bench/resmlp_cpu.py                      # both shapes, about 30 s on 2 idle cores
    python bench/resmlp_cpu.py --shape cifar --epochs 4 --repeats 3 --threads 1

Ours: resmlp.fit with a ctx that never checkpoints (the real loop: whole dataset as tensors,
batches are index slices of a per-epoch permutation, cosine lr set each step). Plain: the same
ResMLP (same init), AdamW and batch size, fed by DataLoader(TensorDataset(x, y), shuffle=True),
the loop most people write. Random data shaped like the dataset. Throughput is n_train divided by
the fastest epoch after the first (which warms up), over `repeats` interleaved runs of each side:
the minimum is what survives other processes sharing the cores.
fa and dfa are timed for information (the plain loop has no counterpart for them).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import resmlp  # noqa: E402
from models.blocks import cosine_lr  # noqa: E402

SHAPES = {   # name: (in_dim, n_train, d_hidden, num_blocks)
    "digits": (64, 4096, 64, 4),
    "cifar": (3072, 2560, 256, 4),
}


class EpochClock:
    """A ctx that never checkpoints and notes when each epoch ends (ctx.log is called once per epoch;
    on CUDA after the queued work is done). bench/resmlp_gpu.py uses it too."""

    rank, world_size, rank_state = 0, 1, None      # one process: what a task asks of a distributed run's ctx

    def __init__(self, device="cpu"):
        self.device = device
        self.ends = []

    def sum_over_ranks(self, value):
        return value

    def restore(self):
        return None

    def should_checkpoint(self, step):
        return False

    def save(self, step, state, rank_state=None):     # the end-of-budget save: timed as no save
        return None

    def log(self, step, **metrics):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def time_left(self):
        return math.inf


def fake_data(in_dim, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x_train": torch.randn(n, in_dim, generator=g), "y_train": torch.randint(0, 10, (n,), generator=g),
            "x_test": torch.randn(128, in_dim, generator=g), "y_test": torch.randint(0, 10, (128,), generator=g),
            "in_dim": in_dim, "n_classes": 10, "name": "random"}


def ours(cfg, data):
    clock = EpochClock()
    resmlp.fit({**cfg, "eval_every": 10**6}, clock, data)
    return len(data["y_train"]) / min(b - a for a, b in zip(clock.ends, clock.ends[1:]))


def plain(cfg, data):
    cfg = resmlp.resolve(cfg)
    model = resmlp.build_model(cfg, data["in_dim"], data["n_classes"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    loader = DataLoader(TensorDataset(data["x_train"], data["y_train"]), batch_size=cfg["batch_size"], shuffle=True)
    total, step, ends = cfg["epochs"] * len(loader), 0, []
    model.train()
    for _ in range(cfg["epochs"]):
        for xb, yb in loader:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg["lr"])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        ends.append(time.perf_counter())
    return len(data["y_train"]) / min(b - a for a, b in zip(ends, ends[1:]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["digits", "cifar", "both"], default="both")
    p.add_argument("--epochs", type=int, default=0, help="epochs per measurement, at least 2: the first warms up "
                                                         "(default: 6 digits, 3 cifar)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.epochs == 1:
        p.error("--epochs: at least 2 (the first epoch warms up and is not timed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128, AdamW, cosine lr; "
          f"samples/s of the fastest epoch after the first, over {args.repeats} runs each")
    for shape in (["digits", "cifar"] if args.shape == "both" else [args.shape]):
        in_dim, n, d, L = SHAPES[shape]
        epochs = args.epochs or (6 if shape == "digits" else 3)
        data = fake_data(in_dim, n)
        cfg = {"d_hidden": d, "num_blocks": L, "k": L, "epochs": epochs, "seed": 0}
        best = {}
        for _ in range(args.repeats):
            best["plain"] = max(best.get("plain", 0), plain({**cfg, "method": "bp"}, data))
            for method in ("bp", "fa", "dfa"):
                best[method] = max(best.get(method, 0), ours({**cfg, "method": method}, data))
        print(f"\n{shape}-shaped: in_dim={in_dim}, n_train={n}, d_hidden={d}, num_blocks={L}, k={L}, {epochs} epochs")
        print(f"  plain PyTorch (DataLoader over TensorDataset), bp  {best['plain']:9.0f} samples/s")
        print(f"  models.resmlp (index slices),                  bp  {best['bp']:9.0f} samples/s   "
              f"ratio ours/plain = {best['bp'] / best['plain']:.2f}")
        for method in ("fa", "dfa"):
            print(f"  models.resmlp,                                 {method:<3} {best[method]:9.0f} samples/s   "
                  f"({best[method] / best['bp']:.2f} x bp)")


if __name__ == "__main__":
    main()
