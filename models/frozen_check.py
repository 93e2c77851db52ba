"""How far frozen-at-init residual blocks move the representation: the ResMLP's init, measured.

    python -m models.frozen_check --d-hidden 256 --num-blocks 4 --seeds 42 123 456
    python -m models.frozen_check --dataset cifar10 --data-dir ~/data/cifar10 --seeds 42 123 456
    python -m models.frozen_check --input-dim 3072 --init normal --seeds 42 123 456

On the training inputs, with the exact init models.resmlp trains from (same seed -> same weights):
per block i, mean over samples of ||f_i(h_{i-1})|| / ||h_{i-1}||; for the whole stack,
||h_L - h_0|| / ||h_0|| and cos(h_L, h_0), h_0 the embedding's output. Each is printed as
mean ± std over seeds (std with ddof=1). Deterministic and fast (no training).

`--input-dim N` measures on 2,000 standard-normal inputs of dimension N instead of a dataset: for
random embedding weights ||E x|| depends on x only through ||x|| (in expectation), and the blocks
see LN(h), so a standardised CIFAR-10 batch (N = 3072) and this stand-in give the same ratios.
What we measured (d=256, L=4, seeds 42 123 456, --input-dim 3072):
    --init torch            per block 0.345 0.330 0.312 0.294; stack 0.696, cos 0.821
    --init normal (0.02)    per block 0.100 0.099 0.099 0.099; stack 0.200, cos 0.981
The depth-ladder study's anchors (per block ~0.10; stack 0.196 ± 0.003, cos 0.981 ± 0.001) are the
normal(0.02) init's; PyTorch's default moves the input about three times as far.

Also a task (CONFIG, train) so a sweep can run it over seeds, widths and inits: one seed per run
(sweeps/frozen_init.yaml).
"""
import argparse
import sys

import numpy as np
import torch

from models import data as datasets
from models import resmlp

CONFIG = {
    "seed": 0,
    "dataset": "digits",
    "data_dir": None,
    "test_fraction": 0.2,
    "d_hidden": 256,
    "num_blocks": 4,
    "mlp_ratio": 4,
    "init": "torch",
    "init_std": 0.02,
    "input_dim": 0,               # 0: the dataset's inputs; N: 2,000 standard-normal inputs of dimension N
}

CHOICES = {"dataset": ["digits", "cifar10"], "init": ["torch", "normal"]}


@torch.no_grad()
def measure(x, seed, d_hidden, num_blocks, mlp_ratio, n_classes=10, init="torch", init_std=0.02):
    """{"block{i}_ratio": ..., "stack_rel_change": ..., "stack_cos": ...} for one seed's init on x."""
    cfg = resmlp.resolve({"seed": seed, "d_hidden": d_hidden, "num_blocks": num_blocks,
                          "mlp_ratio": mlp_ratio, "k": 0, "init": init, "init_std": init_std})
    model = resmlp.build_model(cfg, x.shape[1], n_classes).to(x.device).eval()
    h0 = h = model.embed(x)
    out = {}
    for i, block in enumerate(model.blocks):
        f = block.branch(h)
        out[f"block{i + 1}_ratio"] = (f.norm(dim=1) / h.norm(dim=1)).mean().item()
        h = h + f
    out["stack_rel_change"] = ((h - h0).norm(dim=1) / h0.norm(dim=1)).mean().item()
    out["stack_cos"] = torch.nn.functional.cosine_similarity(h, h0, dim=1).mean().item()
    return out


def train(cfg, ctx):
    """The task form: the measurements for cfg['seed'] (no training, no checkpoint)."""
    cfg = {**CONFIG, **cfg}
    if cfg["input_dim"]:
        x, n_classes = standard_normal_inputs(cfg["input_dim"]).to(ctx.device), 10
    else:
        data = datasets.load(cfg["dataset"], cfg["data_dir"], ctx.device, cfg["test_fraction"])
        x, n_classes = data["x_train"], data["n_classes"]
    return measure(x, cfg["seed"], cfg["d_hidden"], cfg["num_blocks"], cfg["mlp_ratio"], n_classes,
                   cfg["init"], cfg["init_std"])


def standard_normal_inputs(dim, n=2000):
    """n standard-normal inputs of dimension dim (a fixed draw: the stand-in for a standardised dataset)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"frozen_check: input_dim must be an integer >= 1, got {dim!r}")
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0))


def summarise(per_seed):
    """{metric: (mean, std)} over a list of measure() dicts."""
    out = {}
    for key in per_seed[0]:
        v = np.array([m[key] for m in per_seed])
        out[key] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.frozen_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--d-hidden", type=int, default=CONFIG["d_hidden"])
    p.add_argument("--num-blocks", type=int, default=CONFIG["num_blocks"])
    p.add_argument("--mlp-ratio", type=int, default=CONFIG["mlp_ratio"])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 123, 456])
    p.add_argument("--dataset", choices=CHOICES["dataset"], default="digits")
    p.add_argument("--data-dir", default=None, help="cifar10: folder with data_batch_1..5 and test_batch")
    p.add_argument("--input-dim", type=int, default=None,
                   help="measure on 2,000 standard-normal inputs of this dimension instead of --dataset "
                        "(3072 stands in for standardised CIFAR-10)")
    p.add_argument("--init", choices=CHOICES["init"], default=CONFIG["init"],
                   help="torch: PyTorch's Linear default; normal: weights N(0, init_std^2), biases 0")
    p.add_argument("--init-std", type=float, default=CONFIG["init_std"])
    args = p.parse_args(argv)
    if args.input_dim is not None:
        if args.input_dim < 1:
            sys.exit(f"frozen_check: --input-dim must be >= 1, got {args.input_dim}")
        x = standard_normal_inputs(args.input_dim)
        source, n_classes = f"standard-normal inputs of dimension {args.input_dim}", 10
    else:
        try:
            data = datasets.load(args.dataset, args.data_dir)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"frozen_check: {e}")
        x, n_classes = data["x_train"], data["n_classes"]
        source = f"{args.dataset} training inputs"
    per_seed = [measure(x, s, args.d_hidden, args.num_blocks, args.mlp_ratio, n_classes, args.init, args.init_std)
                for s in args.seeds]
    stats = summarise(per_seed)
    init = "torch" if args.init == "torch" else f"normal({args.init_std:g})"
    print(f"ResMLP at init, all blocks frozen: d_hidden={args.d_hidden} num_blocks={args.num_blocks} "
          f"mlp_ratio={args.mlp_ratio} init={init}; {source} (n={len(x)}); "
          f"seeds {' '.join(map(str, args.seeds))}; mean ± std over seeds")
    for i in range(args.num_blocks):
        m, s = stats[f"block{i + 1}_ratio"]
        print(f"  block {i + 1}   ||f(h)|| / ||h||          {m:.4f} ± {s:.4f}")
    for key, label in (("stack_rel_change", "||h_L - h_0|| / ||h_0||"), ("stack_cos", "cos(h_L, h_0)")):
        m, s = stats[key]
        print(f"  stack     {label:<25} {m:.4f} ± {s:.4f}")
    return stats


if __name__ == "__main__":
    main()
