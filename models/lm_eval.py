"""Evaluation of a trained language model (the `train` stage's checkpoints): Table 2, Figure 4, Figure 5.

    stages: [..., {name: eval, after: train, task: lm_eval,
                   grid: {point: [{mode: [threshold], threshold: [0.2, 0.8]}, {mode: [depth], eval_depth: {range: [1, 6]}}]}}]

The model is rebuilt from the upstream checkpoint's "config" and loaded from its "model" weights
(models/cotformer_train.py documents the checkpoint); `checkpoint_step` 0 takes the last one.
Validation data: non-overlapping windows of the training run's sequence_length tokens from the
start of val.bin (`eval_tokens` 0: all of it), in batches of the training batch_size.

    mode full       the model as trained (the adaptive model: every token through every repeat,
                    mixed by its router weights)
    mode depth      `eval_depth` repeats (a prefix 1..n_repeat; the adaptive model keeps mixing by
                    router weight), every token the same depth
    mode threshold  the adaptive model only, by `threshold_rule`:
                    capacity (default; the authors' get_ppl_per_mac.py): one pass at full depth
                      collects every router weight on the evaluation windows; length factor
                      f_r = the share of tokens with w_r >= 1 - threshold, rounded up to a
                      multiple of 1/sequence_length and then to 2 decimals (as the authors format
                      them); then the evaluation runs with those factors (the top-k capacities of
                      models/cotformer.py). `length_factors` in the result lists them.
                    cascaded: per token, causal: a token continues past router r iff
                      w_r >= 1 - threshold (it has to have passed every earlier router)

Result metrics: loss (mean over batches of the mean cross-entropy), `loss_sem` (std over batches,
ddof 1, / sqrt(n_batches): batches, not tokens, are the samples, as the reproduction does), `ppl` =
exp(loss), `ppl_ci_low` / `ppl_ci_high` = exp(loss -/+ 1.96 loss_sem) (95%), `acc` (next-token
accuracy, mean over batches), `macs_per_token` (models/macs.py, the tokens actually routed),
`avg_depth` (mean repeats per token), `n_tokens`, `evaluated_step` (the checkpoint's iteration). One eval run = one point of
the PPL-vs-MACs figure.

Router histograms (Figure 5), `router_hist: true` and an adaptive model: for each checkpoint in
`hist_steps` (empty: the last two the train run kept) the raw router weights of every token of the
evaluation windows at full depth (every token reaches every router) are binned in `hist_bins`
equal bins over [0, 1], and logged one line per (checkpoint, repeat):
    ctx.log(line, repeat=r, checkpoint_step=s, hist_counts=[...], bin_edges=[...], cascade_counts=[...],
            n_tokens=n, mean_weight=m)
`line` counts the lines 1, 2, ... (a metrics line's step only grows: a step that goes back reads as
a resumed run replaying it); `repeat` is the repeat the router gates, 2..n_repeat (the Figure 5
quantity is repeat = n_repeat); `hist_counts` bins w_r, `cascade_counts` bins min(w_1..w_r) per token (the
weight of reaching that repeat at all).
"""
import contextlib
import math

import numpy as np
import torch

from models import corpus
from models.lm_prepare import data_dir_for
from models.cotformer import build_model
from models.macs import forward_macs

CONFIG = {
    "mode": "full",              # full | depth | threshold
    "threshold": 1.0,            # threshold mode: continue iff router weight >= 1 - threshold
    "threshold_rule": "capacity",  # capacity (the authors': shares over the threshold -> top-k) | cascaded (per token)
    "eval_depth": 0,             # depth mode: repeats to run (1..n_repeat)
    "checkpoint_step": 0,        # 0: the train run's last checkpoint
    "data_dir": None,            # None: the training run's data
    "eval_tokens": 0,            # 0: the whole validation split
    "batch_size": 0,             # 0: the training run's batch_size
    "router_hist": False,
    "hist_steps": [],            # checkpoints for the histograms; empty: the last two kept
    "hist_bins": 40,
    "dtype": "bfloat16",
}

CHOICES = {"mode": ["full", "depth", "threshold"], "dtype": ["bfloat16", "float16", "float32"],
           "threshold_rule": ["capacity", "cascaded"]}


def _autocast(device, dtype):
    if str(device).startswith("cuda") and dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def val_windows(data, seq_len, max_tokens=0):
    """Start offsets of the non-overlapping evaluation windows (each with its shifted target)."""
    starts = list(range(0, len(data) - seq_len, seq_len))
    if max_tokens:
        starts = starts[:max(1, max_tokens // seq_len)]
    return starts


@torch.no_grad()
def evaluate(model, data, batch_size, seq_len, device="cpu", max_batches=None, dtype="bfloat16",
             max_tokens=0, collect_router=False, **forward_kw):
    """Loss / ppl with a 95% CI / accuracy / MACs over fixed windows of `data` (see the docstring)."""
    was_training = model.training
    model.eval()
    starts = val_windows(data, seq_len, max_tokens)
    if max_batches:
        starts = starts[:max_batches * batch_size]
    losses, accs, macs, depth, n_tok, routers = [], [], 0.0, 0.0, 0, []
    for i in range(0, len(starts), batch_size):
        ix = starts[i:i + batch_size]
        x = torch.from_numpy(np.stack([np.asarray(data[s:s + seq_len], dtype=np.int64) for s in ix])).to(device)
        y = torch.from_numpy(np.stack([np.asarray(data[s + 1:s + 1 + seq_len], dtype=np.int64) for s in ix])).to(device)
        with _autocast(device, dtype):
            out = model(x, y, **forward_kw)
        losses.append(float(out["loss"]))
        accs.append(float((out["logits"].argmax(-1) == y).float().mean()))
        macs += float(forward_macs(model.cfg, out["counts"]).sum())
        depth += float(out["depth"].float().sum())
        n_tok += x.numel()
        if collect_router:
            routers.append([w.cpu() for w in out["router"]])
    model.train(was_training)
    n = len(losses)
    loss = sum(losses) / n
    sem = float(np.std(losses, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    res = {"loss": loss, "ppl": math.exp(loss), "ppl_ci_low": math.exp(loss - 1.96 * sem),
           "ppl_ci_high": math.exp(loss + 1.96 * sem), "loss_sem": sem, "acc": sum(accs) / n,
           "macs_per_token": macs / n_tok, "avg_depth": depth / n_tok, "n_tokens": n_tok, "n_batches": n}
    if collect_router:
        res["router"] = [torch.cat([b[r] for b in routers]) for r in range(len(routers[0]))] if routers else []
    return res


def router_histograms(router, bins):
    """Per router r: (counts of w_r, counts of min(w_1..w_r)) over `bins` equal bins of [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    out, running = [], None
    for w in router:
        w = w.flatten().double()
        running = w if running is None else torch.minimum(running, w)
        raw = w[~torch.isnan(w)].numpy()
        cas = running[~torch.isnan(running)].numpy()
        out.append((np.histogram(raw, edges)[0].tolist(), np.histogram(cas, edges)[0].tolist(),
                    float(raw.mean()) if raw.size else float("nan"), int(raw.size)))
    return edges.tolist(), out


def capacity_factors(router, threshold, seq_len):
    """The authors' length factors for a threshold: per router, the share of tokens whose weight
    (at full depth) is >= 1 - threshold, rounded up to a multiple of 1/seq_len, then to 2 decimals."""
    out = []
    for w in router:
        w = w.flatten()
        w = w[~torch.isnan(w)]
        share = float((w >= 1.0 - threshold).float().mean()) if w.numel() else 0.0
        out.append(round(math.ceil(share * seq_len - 1e-6) / seq_len, 2))     # 1e-6: float32 shares
    return out


def load_model(state, device):
    """The model of a training checkpoint, weights loaded, on `device`, in eval mode."""
    tcfg = dict(state["config"])
    vocab = state["model"]["lm_head.weight"].shape[0]       # the trained model's, whatever the data says now
    model = build_model({**tcfg, "vocab_size": vocab})
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def train(cfg, ctx):
    up = ctx.upstream["train"]
    tcfg = up.config
    data_dir = data_dir_for({"data_dir": cfg["data_dir"] or tcfg.get("data_dir")}, ctx)
    val = corpus.open_split(data_dir, "val")
    bs = cfg["batch_size"] or tcfg["batch_size"]
    T = tcfg["sequence_length"]
    state = up.checkpoint(cfg["checkpoint_step"] or None)
    model = load_model(state, ctx.device)
    kw = {}
    if cfg["mode"] == "depth":
        if not 1 <= cfg["eval_depth"] <= model.cfg.get("n_repeat", 1) or model.cfg["model"] == "base":
            raise ValueError(f"eval_depth {cfg['eval_depth']} outside 1..n_repeat of a repeated model")
        kw["depth"] = cfg["eval_depth"]
    elif cfg["mode"] == "threshold":
        if model.cfg["model"] != "adm":
            raise ValueError("mode threshold needs the adaptive model (model: adm)")
        if cfg["threshold_rule"] == "cascaded":
            kw["threshold"] = cfg["threshold"]
        else:
            full = evaluate(model, val, bs, T, ctx.device, None, cfg["dtype"], cfg["eval_tokens"], collect_router=True)
            kw["length_factors"] = capacity_factors(full["router"], cfg["threshold"], T)
    ev = evaluate(model, val, bs, T, ctx.device, None, cfg["dtype"], cfg["eval_tokens"], **kw)
    result = {k: v for k, v in ev.items()}
    if "length_factors" in kw:
        result["length_factors"] = kw["length_factors"]
    result["evaluated_step"] = int(state["iteration"])    # not `checkpoint_step`: that is a config key
    if cfg["router_hist"] and model.cfg["model"] == "adm":
        steps = list(cfg["hist_steps"]) or list(up.checkpoint_steps())[-2:]
        line = 0
        for s in steps:
            m = load_model(up.checkpoint(s), ctx.device)
            r = evaluate(m, val, bs, T, ctx.device, None, cfg["dtype"], cfg["eval_tokens"], collect_router=True)
            edges, hists = router_histograms(r["router"], cfg["hist_bins"])
            for i, (counts, cascade, mean, n) in enumerate(hists):
                line += 1
                ctx.log(line, repeat=i + 2, checkpoint_step=int(s), hist_counts=counts, bin_edges=edges,
                        cascade_counts=cascade, n_tokens=n, mean_weight=mean)
    return result
