"""A tiny recursive language model (TRM) trained with deep supervision over its H_cycles.

Question: supervising only the output of the last recursion (H cycle), the earlier cycles get no
training signal. Does a weighted loss on every H cycle's output (deep supervision), under the
constant / linear_decay / exponential_decay schedules or brought in by a curriculum, converge
faster or lower than the baseline, and does it make later cycles better than earlier ones?

    python main.py run sweeps/ds_schedules.yaml --only deep_supervision_schedule=linear_decay,seed=1

Data: the byte-level corpus of models/corpus.py (one token per byte, vocabulary 256). With
`data_dir` set, its train.bin / val.bin (uint16, nanoGPT layout; vocabulary from its meta.json, else
50304) are used as they are; otherwise the default corpus (the Python standard library's sources,
corpus_max_bytes bytes) is built once into `cache_dir`, or into <run dir>/data when cache_dir is
empty. Training windows: corpus.get_batch with a torch.Generator seeded by `seed`; each step draws
global_batch_size windows of seq_len bytes and rank r of W keeps windows r, r+W, ...

Model (d = hidden_size; one shared stack `level` of L_layers causal pre-norm Transformer layers):
    e = embed(x) + position;  z_H, z_L start from fixed vectors drawn with the seed
    for h = 1..H_cycles:
        for l = 1..L_cycles:  z_L = level(z_L + z_H + e)
        z_H = level(z_H + z_L)
        logits_h = head(LN(z_H))                           the output of H cycle h
Without deep supervision the first H_cycles - 1 cycles run without gradient, as in TRM (only the
last cycle is supervised and back-propagated); with deep supervision every cycle is in the graph,
so deep_supervision_enabled with deep_supervision_weight 0 (w = [0, ..., 0, 1]) is the control that
separates the gradient path through every cycle from the intermediate losses themselves.

Loss (models/refine.py): L_h = cross-entropy of logits_h; w = loss_weights(schedule, H_cycles, weight)
    constant:           w = [weight, ..., weight, 1.0]
    linear_decay:       w_i = weight (i+1)/H_cycles, i < H_cycles-1, last 1.0   (3 cycles, 0.5: [0.167, 0.333, 1.0])
    exponential_decay:  w_i = weight 2^i / 2^(H_cycles-1), last 1.0             (4 cycles, 0.5: [0.0625, 0.125, 0.25, 1.0])
    total_loss = sum_h w_h L_h / sum_h w_h      (baseline: w = [0, ..., 0, 1], total_loss = L_H)
weight = deep_supervision_weight, or with curriculum_enabled curriculum_weight(step, curriculum_start_step,
curriculum_end_step, deep_supervision_weight): 0 until the start, linear to the target at the end.
The logged split: total_loss = act_loss + supervised_loss, where act_loss = w_H L_H / sum w (the
final LM term; this model has no halting head, so the ACT part is the final LM loss alone) and
supervised_loss = sum_{h<H} w_h L_h / sum w (the deep-supervision part).
AdamW (lr, weight_decay, betas 0.9/0.95), cosine learning rate from lr to 0 over max_steps,
gradient clipping at max-norm grad_clip (1.0).

Logged every log_every steps: total_loss, act_loss, supervised_loss, lm_loss (L_H), curriculum_weight
(the weight in force; 0 for the baseline), step_{i}_loss (i = 0..H_cycles-1, log_per_step_losses),
step_{i}_grad_norm_mean (compute_gradient_stats: the mean over positions of ||dL/dz_H|| at the output
of cycle i; 0 for cycles run without gradient), grad_norm (all parameters, before clipping), lr.
Every eval_every steps and at the end, on eval_batches fixed validation batches (the same windows
for every run): val_step_{i}_loss, val_loss (last cycle), val_bpb (val_loss / ln 2).

Convergence speed (the study's "faster convergence": steps to reach a loss): with target_loss > 0,
steps_to_target is the first optimizer step at which the smoothed training LM loss (L_H, an
exponential moving average with factor target_smoothing, bias-corrected as in Adam) is <= target_loss,
and val_steps_to_target the first evaluation step at which val_loss is <= target_loss; both are
None (an empty cell, left out of the mean) when the run never gets there, and target_reached says
whether the training loss did (1.0 / 0.0, so the table's mean is the fraction of seeds that did).
Each is logged once, on the step it happens.

Results: val_loss, val_bpb, val_step_{i}_loss, train_lm_loss (mean L_H since the previous
evaluation), steps_to_target, val_steps_to_target, target_reached, n_params, steps, tokens_seen,
train_time_s.

Checkpoint: weights, optimizer, the batch generator's state, the step, the running sums and the
training time; ctx restores the global RNG states. A resumed run is bit-identical on CPU.
"""
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import corpus
from models.blocks import cosine_lr, overlay, restore_same_config
from models.refine import curriculum_weight, loss_weights

CONFIG = {
    "seed": 0,
    "data_dir": None,                        # train.bin / val.bin (+ meta.json); None: build the default corpus
    "cache_dir": None,                       # where to build the default corpus (None: <run dir>/data)
    "corpus_max_bytes": 4000000,
    "hidden_size": 128,
    "num_heads": 4,
    "expansion": 4,                          # MLP width = expansion * hidden_size
    "L_layers": 2,
    "H_cycles": 3,
    "L_cycles": 3,
    "seq_len": 128,
    "global_batch_size": 64,
    "max_steps": 15000,
    "lr": 1e-4,
    "weight_decay": 0.1,
    "grad_clip": 1.0,                        # max-norm gradient clipping (0: off)
    "deep_supervision_enabled": False,
    "deep_supervision_weight": 0.5,
    "deep_supervision_schedule": "linear_decay",   # constant | linear_decay | exponential_decay
    "curriculum_enabled": False,
    "curriculum_start_step": 1000,
    "curriculum_end_step": 10000,
    "log_per_step_losses": True,
    "compute_gradient_stats": False,        # per-cycle gradient norms (an extra retain_grad per cycle)
    "log_every": 10,
    "eval_every": 500,
    "eval_batches": 8,
    "target_loss": 1.8,                      # steps_to_target: the study's baseline final loss (0: off)
    "target_smoothing": 0.9,                 # EMA factor of the training loss that steps_to_target watches
}

CHOICES = {"deep_supervision_schedule": ["constant", "linear_decay", "exponential_decay"]}
EVAL_SEED = 1234                             # the validation windows: the same for every run


def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    cfg = overlay("trm", CONFIG, CHOICES, cfg)
    for key in ("hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "seq_len",
                "global_batch_size", "max_steps", "log_every", "eval_every", "eval_batches"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"trm: {key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "grad_clip", "deep_supervision_weight", "target_loss"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], (int, float)) and cfg[key] >= 0):
            raise ValueError(f"trm: {key} must be a number >= 0, got {cfg[key]!r}")
    s = cfg["target_smoothing"]
    if isinstance(s, bool) or not (isinstance(s, (int, float)) and 0 <= s < 1):
        raise ValueError(f"trm: target_smoothing must be a number in [0, 1), got {s!r}")
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise ValueError(f"trm: hidden_size={cfg['hidden_size']} must be a multiple of num_heads={cfg['num_heads']}")
    if cfg["curriculum_end_step"] < cfg["curriculum_start_step"] or cfg["curriculum_start_step"] < 0:
        raise ValueError("trm: need 0 <= curriculum_start_step <= curriculum_end_step")
    if cfg["curriculum_enabled"] and not cfg["deep_supervision_enabled"]:
        raise ValueError("trm: curriculum_enabled needs deep_supervision_enabled (it ramps deep supervision in)")
    return cfg


def step_weights(cfg, step):
    """(raw per-cycle weights, the deep-supervision weight in force) at 0-based optimizer step `step`."""
    H = cfg["H_cycles"]
    if not cfg["deep_supervision_enabled"]:
        return [0.0] * (H - 1) + [1.0], 0.0
    w = cfg["deep_supervision_weight"]
    if cfg["curriculum_enabled"]:
        w = curriculum_weight(step, cfg["curriculum_start_step"], cfg["curriculum_end_step"], w)
    return loss_weights(cfg["deep_supervision_schedule"], H, w), w


# ---------------------------------------------------------------- model

class TRM(nn.Module):
    def __init__(self, vocab, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.H, self.L = cfg["H_cycles"], cfg["L_cycles"]
        self.grad_all = cfg["deep_supervision_enabled"]
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(cfg["seq_len"], d) * 0.02)
        self.level = nn.ModuleList(
            nn.TransformerEncoderLayer(d, cfg["num_heads"], cfg["expansion"] * d, 0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(cfg["L_layers"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("H_init", torch.randn(d) * 0.02)
        self.register_buffer("L_init", torch.randn(d) * 0.02)

    def run_level(self, h, mask):
        for layer in self.level:
            h = layer(h, src_mask=mask, is_causal=True)
        return h

    def forward(self, x, keep=None):
        """Per-cycle logits [(B, n, V)] * H_cycles; `keep` (a list) receives each cycle's z_H."""
        B, n = x.shape
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=x.device)
        e = self.embed(x) + self.pos[:n]
        zH = self.H_init.expand(B, n, -1)
        zL = self.L_init.expand(B, n, -1)
        outs = []
        for h in range(self.H):
            with torch.set_grad_enabled(torch.is_grad_enabled() and (self.grad_all or h == self.H - 1)):
                for _ in range(self.L):
                    zL = self.run_level(zL + zH + e, mask)
                zH = self.run_level(zH + zL, mask)
                if keep is not None:
                    if zH.requires_grad:
                        zH.retain_grad()
                    keep.append(zH)
                outs.append(self.head(self.norm(zH)))
        return outs


def track_target(cfg, track, step, lm, val_loss=None):
    """Update `track` (the steps-to-target state: ema, steps_to_target, val_steps_to_target) after
    optimizer step `step` (1-based) with training loss `lm` and, at an evaluation, `val_loss`;
    the {key: step} pairs first reached at this step (to log)."""
    if not cfg["target_loss"]:
        return {}
    beta, new = cfg["target_smoothing"], {}
    track["ema"] = beta * track["ema"] + (1 - beta) * lm
    smoothed = track["ema"] / (1 - beta ** step)
    if track["steps_to_target"] is None and smoothed <= cfg["target_loss"]:
        track["steps_to_target"] = new["steps_to_target"] = step
    if val_loss is not None and track["val_steps_to_target"] is None and val_loss <= cfg["target_loss"]:
        track["val_steps_to_target"] = new["val_steps_to_target"] = step
    return new


def target_results(cfg, track):
    if not cfg["target_loss"]:
        return {}
    return {"steps_to_target": track["steps_to_target"], "val_steps_to_target": track["val_steps_to_target"],
            "target_reached": float(track["steps_to_target"] is not None)}


def build_model(cfg, vocab):
    torch.manual_seed(cfg["seed"])
    return TRM(vocab, cfg)


def cycle_losses(outs, y):
    return [F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1)) for o in outs]


@torch.no_grad()
def evaluate(model, val, cfg, device):
    gen = torch.Generator().manual_seed(EVAL_SEED)
    sums = [0.0] * cfg["H_cycles"]
    for _ in range(cfg["eval_batches"]):
        x, y = corpus.get_batch(val, cfg["global_batch_size"], cfg["seq_len"], gen, device)
        for i, loss in enumerate(cycle_losses(model(x), y)):
            sums[i] += loss.item()
    out = {f"val_step_{i}_loss": s / cfg["eval_batches"] for i, s in enumerate(sums)}
    out["val_loss"] = out[f"val_step_{cfg['H_cycles'] - 1}_loss"]
    out["val_bpb"] = out["val_loss"] / math.log(2)
    return out


def data_dir_for(cfg, ctx):
    """The corpus folder: data_dir, or the default corpus built (once) into cache_dir or <run dir>/data."""
    if cfg["data_dir"]:
        return Path(cfg["data_dir"])
    out = Path(cfg["cache_dir"]) if cfg["cache_dir"] else Path(ctx.run_dir) / "data"
    if getattr(ctx, "is_main", True) and not ((out / "meta.json").is_file() and (out / "val.bin").is_file()):
        corpus.build(out, max_bytes=cfg["corpus_max_bytes"])
    if hasattr(ctx, "barrier"):
        ctx.barrier()
    return out


# ---------------------------------------------------------------- the task

def train(cfg, ctx):
    """The task: open (or build) the corpus, train, return the final validation metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    device = ctx.device
    folder = data_dir_for(cfg, ctx)
    train_data, val_data = corpus.open_split(folder, "train"), corpus.open_split(folder, "val")
    vocab = corpus.vocab_size(folder)
    model = build_model(cfg, vocab).to(device)
    net = ctx.ddp(model) if hasattr(ctx, "ddp") else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(0.9, 0.95))
    world, rank = getattr(ctx, "world_size", 1), getattr(ctx, "rank", 0)
    gen = torch.Generator().manual_seed(seed)
    H, total = cfg["H_cycles"], cfg["max_steps"]

    step, spent, window = 0, 0.0, {"lm": 0.0, "n": 0}
    track = {"ema": 0.0, "steps_to_target": None, "val_steps_to_target": None}
    state = restore_same_config(ctx, cfg, "trm")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, spent, window = state["step"], state["train_time_s"], dict(state["window"])
        track = dict(state["track"])

    resumed_at = time.time()
    model.train()
    val = None
    while step < total:
        lr = cosine_lr(step, total, cfg["lr"])
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = corpus.get_batch(train_data, cfg["global_batch_size"], cfg["seq_len"], gen, device)
        x, y = x[rank::world], y[rank::world]
        weights, w_now = step_weights(cfg, step)
        keep = [] if cfg["compute_gradient_stats"] else None
        losses = cycle_losses(net(x, keep) if keep is not None else net(x), y)
        norm = sum(weights)
        total_loss = sum((w / norm) * loss for w, loss in zip(weights, losses) if w > 0)
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] if cfg["grad_clip"] > 0
                                               else float("inf"))
        opt.step()
        step += 1
        lm = losses[-1].item()
        window["lm"] += lm
        window["n"] += 1
        row = {}
        if step % cfg["log_every"] == 0 or step == total:
            act = weights[-1] / norm * lm
            tot = total_loss.item()
            row = {"total_loss": tot, "act_loss": act, "supervised_loss": tot - act, "lm_loss": lm,
                   "curriculum_weight": w_now, "grad_norm": float(gnorm), "lr": lr,
                   "tokens_seen": step * cfg["global_batch_size"] * cfg["seq_len"]}
            if cfg["log_per_step_losses"]:
                row.update({f"step_{i}_loss": loss.item() for i, loss in enumerate(losses)})
            if keep is not None:
                row.update({f"step_{i}_grad_norm_mean": (z.grad.norm(dim=-1).mean().item() if z.grad is not None
                                                         else 0.0) for i, z in enumerate(keep)})
        evaluating = step % cfg["eval_every"] == 0 or step == total
        if evaluating:
            model.eval()
            val = evaluate(model, val_data, cfg, device)
            model.train()
            row.update(val, train_lm_loss=window["lm"] / max(window["n"], 1))
        row.update(track_target(cfg, track, step, lm, val["val_loss"] if evaluating else None))
        if evaluating:
            last_window = dict(window)
            window = {"lm": 0.0, "n": 0}
            if step == total:
                window = last_window
        if row:
            ctx.log(step, **row)
        if ctx.should_checkpoint(step):
            ctx.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "generator": gen.get_state(), "step": step, "window": dict(window),
                            "track": dict(track),
                            "train_time_s": spent + time.time() - resumed_at, "config": cfg})

    model.eval()
    if val is None:
        val = evaluate(model, val_data, cfg, device)
    return {**val, "train_lm_loss": window["lm"] / max(window["n"], 1), **target_results(cfg, track),
            "n_params": sum(p.numel() for p in model.parameters()), "steps": step,
            "tokens_seen": step * cfg["global_batch_size"] * cfg["seq_len"],
            "train_time_s": round(spent + time.time() - resumed_at, 3)}
