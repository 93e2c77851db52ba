"""Training of the depth-recurrent language models: GPT, CoTFormer, LN-CoTFormer, Adaptive LN-CoTFormer.

    stages: [{name: prepare, task: lm_prepare}, {name: train, after: prepare, task: cotformer_train,
              grid: {model: [ln_cotformer, adm]}}, {name: eval, after: train, task: lm_eval, ...}]

Models (models/cotformer.py, models/gpt.py): `model` base | cotformer | ln_cotformer | adm, with
n_layer blocks of width n_embd and n_head heads, n_layer_begin / n_layer_end of them run once
around a mid stack repeated n_repeat times (cross-repeat KV accumulation), ln_mid between
repeats unless disable_ln_mid, depth_embedding linear_learned | learned | None. The adaptive
model's router trains with random length factors (depth_random_method: uniform,
uniform_random_range, ...) unless training_length_factor fixes them; min_repeat (the authors' name)
is the fewest repeats any token runs in training. Its default here, 0, means the authors'
advice per model: n_repeat for the fixed-depth models ("set to n_repeat" for a non-adaptive
model: trained at full depth) and 1 for the adaptive one; a fixed-depth model with
min_repeat < n_repeat trains at a depth drawn per batch in [min_repeat, n_repeat]. Byte-level data by default (models/corpus.py, models/lm_prepare.py).

Optimisation (the CoTFormer reproduction's defaults, same names). AdamW (beta1, beta2 = 0.9, 0.95;
weight_decay 0.1 on Linear weights only: embeddings / tied head and LayerNorms are not decayed).
Learning rate: torch's OneCycleLR over `iterations` steps (cycle_momentum off, div_factor 100):
linear warm-up from lr/100 to lr over warmup_percent of the steps, then cosine (`scheduler: cos`)
or linear (`linear`) decay; `scheduler: none` keeps lr constant. The final lr: the reproduction's
documentation says lr x final_div_factor (5% of the peak at 0.05), while its code passes
final_div_factor to OneCycleLR, whose final lr is lr / (100 x final_div_factor) (20% of the peak at
0.05). Both are here: `final_lr_rule: onecycle` (default, what the code trained) or `fraction`.
One step = acc_steps micro-batches of batch_size sequences of sequence_length tokens; with W
processes (DDP) each process runs acc_steps / gcd(acc_steps, W) micro-batches of its own batch
(batch_size is not divided), so W = 2 keeps 8 x 16 = 128 sequences per step. Process rank k seeds
torch with seed + k and draws its batches from a generator seeded with data_seed (None: seed) + k.
grad_clip > 0 clips the global gradient norm; the norm is measured either way. On CUDA the
forward runs under autocast in `dtype` (bfloat16 default), weights in float32, TF32 matmuls on.

Logged every eval_freq steps and at the end: train_loss (the last step's), lr, val_loss, val_ppl,
val_acc (next-token accuracy) on a fixed validation subset (the first eval_batches x batch_size
windows of val.bin; the whole of val.bin at the last step), grad_norm (last step), max_grad_norm /
mean_grad_norm (over the steps since the previous log), spike (max > 5 x mean, also a warning),
avg_depth (mean repeats per token in the last forward), tokens_per_s. Result metrics: the final
full-validation numbers (val_loss, val_ppl, val_acc, ...), train_loss, train_time_s.

Checkpoint (ctx.save): {"config", "model" (state_dict), "optimizer", "scheduler", "iteration" (steps
done), "norms" (grad norms since the last log), "train_time_s"}; ctx saves and restores, per rank,
the batch generator (ctx.torch_generator) and the global RNG states (the adaptive model's
length-factor draws).
The last iteration is always saved, so the final weights are the run's last checkpoint:
models/lm_eval.py rebuilds the model from state["config"] and loads state["model"]. A resumed run
ends with the same metrics as an uninterrupted one (CPU).
"""
import contextlib
import math
import time
import warnings

import torch

from models import corpus
from models.blocks import restore_same_config
from models.cotformer import build_model
from models.lm_eval import evaluate
from models.lm_prepare import data_dir_for

CONFIG = {
    "seed": 2,
    "data_seed": None,            # None: seed
    "data_dir": None,             # train.bin / val.bin (uint16 ids); None: the prepare stage's data
    "vocab_size": 0,              # 0: the data's (meta.json, else GPT-2's 50304)
    "model": "ln_cotformer",      # base | cotformer | ln_cotformer | adm
    "n_layer": 24,
    "n_embd": 768,
    "n_head": 12,
    "sequence_length": 512,
    "dropout": 0.0,
    "bias": False,
    "n_repeat": 2,
    "n_layer_begin": 0,
    "n_layer_end": 0,
    "depth_embedding": None,      # linear_learned | learned | None
    "disable_ln_mid": False,
    "depth_random_method": "uniform",   # adm: how length factors are drawn (models/cotformer.py)
    "min_repeat": 0,              # fewest repeats a token trains with; 0: n_repeat (fixed-depth models), 1 (adm)
    "training_length_factor": [],  # adm: n_repeat - 1 fixed length factors instead of random ones
    "batch_size": 32,
    "acc_steps": 4,
    "iterations": 25000,
    "lr": 1e-3,
    "beta1": 0.9,
    "beta2": 0.95,
    "weight_decay": 0.1,
    "grad_clip": 0.0,
    "scheduler": "cos",
    "warmup_percent": 0.05,
    "final_div_factor": 0.05,
    "final_lr_rule": "onecycle",
    "eval_freq": 200,
    "eval_batches": 24,
    "dtype": "bfloat16",
}

CHOICES = {"model": ["base", "cotformer", "ln_cotformer", "adm"],
           "depth_embedding": [None, "linear_learned", "learned"],
           "depth_random_method": ["uniform", "uniform_random_range", "more_chance_for_zero_too", "exponential_decay",
                                   "pick_mid_and_recurse"],
           "scheduler": ["cos", "linear", "none"], "final_lr_rule": ["onecycle", "fraction"],
           "dtype": ["bfloat16", "float16", "float32"]}

TASK = "cotformer_train"


def model_config(cfg, data_dir):
    """The model keys of cfg with vocab_size resolved from the data."""
    m = dict(cfg)
    m["vocab_size"] = cfg["vocab_size"] or corpus.vocab_size(data_dir)
    return m


def autocast(device, dtype):
    if str(device).startswith("cuda") and dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def make_scheduler(opt, cfg):
    if cfg["scheduler"] == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    fdf = cfg["final_div_factor"]
    if cfg["final_lr_rule"] == "fraction":
        fdf = 1.0 / (100.0 * fdf)                  # initial lr / fdf = lr x final_div_factor
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["iterations"], pct_start=cfg["warmup_percent"],
        anneal_strategy=cfg["scheduler"], cycle_momentum=False, div_factor=1e2, final_div_factor=fdf)


def micro_steps(acc_steps, world_size):
    """Micro-batches per step on each of world_size processes: acc_steps / gcd(acc_steps, world_size)."""
    return acc_steps // math.gcd(acc_steps, world_size)


def train(cfg, ctx):
    state = restore_same_config(ctx, cfg, TASK)      # also brings back the global RNG states
    rank, world = ctx.rank, ctx.world_size
    data_dir = data_dir_for(cfg, ctx)
    train_data, val_data = corpus.open_split(data_dir, "train"), corpus.open_split(data_dir, "val")
    rng = torch.get_rng_state()
    torch.manual_seed(cfg["seed"])                     # the same init on every rank
    model = build_model(model_config(cfg, data_dir))
    if state is None:
        torch.manual_seed(cfg["seed"] + rank)          # rank k: seed + k from here on
    else:
        torch.set_rng_state(rng)
        model.load_state_dict(state["model"])
    model_d = ctx.ddp(model)
    raw = model_d.module if hasattr(model_d, "module") else model_d
    opt = torch.optim.AdamW(raw.param_groups(cfg["weight_decay"]), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]))
    sched = make_scheduler(opt, cfg)
    # each rank's own batch stream; ctx saves and restores its state per rank with every checkpoint
    gen = ctx.torch_generator((cfg["seed"] if cfg["data_seed"] is None else cfg["data_seed"]) + rank)
    acc = micro_steps(cfg["acc_steps"], world)
    start, norms, train_time = 0, [], 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, norms, train_time = state["iteration"], list(state["norms"]), state["train_time_s"]
    dev, bs, T = ctx.device, cfg["batch_size"], cfg["sequence_length"]
    if str(dev).startswith("cuda"):      # TF32 matmuls always on, as the reproduction does (Ampere and later)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    params = [p for p in raw.parameters()]

    def snapshot(step):
        return {"config": dict(cfg), "model": raw.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "iteration": step,
                "norms": list(norms), "train_time_s": train_time}

    result, t_log, tokens = {}, time.perf_counter(), 0
    for itr in range(start, cfg["iterations"]):
        t0 = time.perf_counter()
        model_d.train()
        for micro in range(acc):
            x, y = corpus.get_batch(train_data, bs, T, gen, dev)
            sync = contextlib.nullcontext() if micro == acc - 1 or world == 1 else model_d.no_sync()
            with sync, autocast(dev, cfg["dtype"]):
                out = model_d(x, y)
            (out["loss"] / acc).backward()
        clip = cfg["grad_clip"] if cfg["grad_clip"] > 0 else float("inf")
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        tokens += acc * bs * T * world
        step = itr + 1
        last = step == cfg["iterations"]
        if step % cfg["eval_freq"] == 0 or last:
            ev = evaluate(raw, val_data, bs, T, dev, None if last else cfg["eval_batches"], cfg["dtype"])
            mx, mean = max(norms), sum(norms) / len(norms)
            spike = mx > 5 * mean
            if spike:
                warnings.warn(f"{TASK}: step {step}: max_grad_norm {mx:.4f} is {mx / mean:.1f}x the mean {mean:.4f}")
            now = time.perf_counter()
            result = {"train_loss": out["loss"].item(), "val_loss": ev["loss"], "val_ppl": ev["ppl"],
                      "val_acc": ev["acc"], "val_ppl_ci_low": ev["ppl_ci_low"], "val_ppl_ci_high": ev["ppl_ci_high"],
                      "val_loss_sem": ev["loss_sem"], "val_macs_per_token": ev["macs_per_token"]}
            ctx.log(step, **result, lr=sched.get_last_lr()[0], grad_norm=norms[-1], max_grad_norm=mx,
                    mean_grad_norm=mean, spike=bool(spike), avg_depth=float(out["depth"].float().mean()),
                    tokens_per_s=tokens / max(now - t_log, 1e-9), full_val=last)
            norms, t_log, tokens = [], now, 0
        if last or ctx.should_checkpoint(step):
            ctx.save(step, snapshot(step))
    if not result:                           # resumed after the final checkpoint: nothing left to run
        ev = evaluate(raw, val_data, bs, T, dev, None, cfg["dtype"])
        result = {"val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_acc": ev["acc"]}
    return {**result, "train_time_s": train_time, "iterations": cfg["iterations"]}
