"""Iterative refinement with deep supervision and ACT halting: how many refinement steps pay off?

Question: a classifier that refines its state with one shared cell, step after step, may stop
early on easy inputs (adaptive computation time, Graves 2016) and may be trained with a loss on
every intermediate readout (deep supervision). What accuracy does each buy, at what compute?

    python main.py run sweeps/ponder.yaml --only ponder_coef=0.001,seed=1
    python main.py run sweeps/deep_supervision.yaml --only deep_supervision=True,seed=1

Model (T = max_steps, d = d_hidden, r = mlp_ratio, C classes):
    e = E x,   h_0 = e,
    h_t = h_{t-1} + W2 gelu(W1 LN([h_{t-1}, e]) + b1) + b2     t = 1..T   (one cell, shared by all t)
    y_t = H LN_o(h_t)                                             the readout of step t (C logits)
    p_t = sigmoid(w_p . LN_o(h_t) + b_p)                          halting probability (act only)
with W1: 2d -> r d and W2: r d -> d. PyTorch's default init, except b_p = act_bias_init.

Output and loss (CE = mean cross-entropy over the batch):
- halting none: the prediction is y_T; L = CE(y_T).
- halting act (Graves 2016, per sample): N = the first n with p_1 + ... + p_n >= 1 - act_eps, or T
  if no such n <= T; the remainder R = 1 - (p_1 + ... + p_{N-1}); the output is the mixture of
  logits y = sum_{t<N} p_t y_t + R y_N; the ponder cost is rho = N + R (N is a constant for the
  gradient, R is not). L = CE(y) + ponder_coef * mean(rho).
- deep_supervision adds   ds_weight * sum_{t=1}^{T-1} a_t CE(y_t) / sum_{t=1}^{T-1} a_t   over the
  intermediate readouts t = 1..T-1 (with either halting; nothing when T = 1), where
      constant:           a_t = 1
      linear_decay:       a_t = (T - t) / (T - 1)          1 at t = 1 down to 1/(T-1) at t = T-1
      exponential_decay:  a_t = ds_decay ** (t - 1)        1, ds_decay, ds_decay^2, ...
  The weights are normalised, so ds_weight is the auxiliary share whatever the schedule: the
  schedule only says which steps it falls on (early steps more, under the decays).

Training: AdamW (weight_decay on all parameters), lr cosine from `lr` to 0 over all steps, batches
are slices of one permutation per epoch (a torch.Generator seeded with `seed`). Every step logs
loss (CE of the prediction, comparable with and without deep supervision), objective (what is
minimised), acc and ponder (mean N + R of the batch; T under halting none) with total_steps;
the last step of each epoch adds test_loss, test_acc and test_ponder_steps.

Compute. macs_per_sample counts the multiply-accumulates of the matrix products a test sample
needs at inference given the steps it uses (LayerNorm, GELU, sigmoid and additions not counted):
    none: in_dim d + T (3 r d^2) + d C          act: in_dim d + N (3 r d^2 + d C + d)
(under act every step's readout enters the mixture, and each step computes its halting unit),
averaged over the test set; mean_ponder_steps is the mean N over the test set (T for none).

Results: test_acc, test_loss, train_acc, train_loss (final model, whole sets), mean_ponder_steps,
mean_ponder_cost (mean N + R on the test set), macs_per_sample, n_params (the halting unit counted
only under act), steps, epochs_done (not `epochs`: a config key's name would be renamed in the
tables), train_time_s.

Checkpoint (ctx.save): weights, optimizer, the shuffling generator's state, the epoch's permutation
and position in it, the step and the training time; ctx restores the global RNG states. A resumed
run is bit-identical to an uninterrupted one on CPU.
"""
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import data as datasets
from models.blocks import cosine_lr, restore_same_config

CONFIG = {
    "seed": 0,
    "dataset": "digits",          # digits (bundled with scikit-learn) | cifar10 (needs data_dir)
    "data_dir": None,             # cifar10: folder with data_batch_1..5 and test_batch
    "test_fraction": 0.2,         # digits only: the held-out share (fixed split, same for every seed)
    "d_hidden": 128,
    "mlp_ratio": 2,               # the cell's hidden width is mlp_ratio * d_hidden
    "max_steps": 6,               # T: refinement steps computed (the most ACT may use)
    "halting": "none",            # none: predict from step T | act: Graves' adaptive computation time
    "ponder_coef": 1e-3,          # act: weight of the ponder cost N + R
    "act_eps": 0.01,              # act: halt once the cumulative halting probability reaches 1 - act_eps
    "act_bias_init": 0.0,         # act: initial bias of the halting unit (sigmoid(0) = 0.5)
    "deep_supervision": False,    # add losses on the intermediate readouts y_1..y_{T-1}
    "ds_schedule": "constant",    # constant | linear_decay | exponential_decay (over the step index)
    "ds_weight": 0.5,             # total weight of the intermediate losses
    "ds_decay": 0.5,              # exponential_decay: a_t = ds_decay ** (t - 1)
    "epochs": 20,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "eval_every": 1,              # epochs between test-set evaluations in metrics.jsonl
}

CHOICES = {"halting": ["none", "act"], "ds_schedule": ["constant", "linear_decay", "exponential_decay"],
           "dataset": ["digits", "cifar10"]}


# ---------------------------------------------------------------- model

class Refiner(nn.Module):
    """Embedding -> one residual refinement cell applied max_steps times -> a readout per step."""

    def __init__(self, in_dim, n_classes, d_hidden, mlp_ratio, max_steps, act_bias_init=0.0):
        super().__init__()
        d = d_hidden
        self.max_steps = max_steps
        self.embed = nn.Linear(in_dim, d)
        self.cell_norm = nn.LayerNorm(2 * d)
        self.fc1 = nn.Linear(2 * d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)
        self.halt = nn.Linear(d, 1)
        with torch.no_grad():
            self.halt.bias.fill_(act_bias_init)

    def forward(self, x):
        """(per-step logits (B, T, C), per-step halting probabilities (B, T))."""
        e = self.embed(x)
        h, logits, halts = e, [], []
        for _ in range(self.max_steps):
            h = h + self.fc2(F.gelu(self.fc1(self.cell_norm(torch.cat([h, e], dim=-1)))))
            z = self.out_norm(h)
            logits.append(self.head(z))
            halts.append(torch.sigmoid(self.halt(z)).squeeze(-1))
        return torch.stack(logits, dim=1), torch.stack(halts, dim=1)


def act_halting(p, eps):
    """Graves' ACT per sample: (mixture weights (B, T), N (B,) int64, R (B,)) from probabilities p (B, T).

    N is the first step whose cumulative probability reaches 1 - eps (T if none does); the weights
    are p_t before N, the remainder R = 1 - sum_{t<N} p_t at N, and 0 after N.
    """
    B, T = p.shape
    cum = p.cumsum(dim=1)
    reached = cum >= 1.0 - eps
    reached[:, -1] = True
    n = reached.to(torch.int64).argmax(dim=1)                  # 0-based index of the halting step
    steps = torch.arange(T, device=p.device).expand(B, T)
    before = steps < n[:, None]
    remainder = 1.0 - (p * before).sum(dim=1)
    weights = p * before + remainder[:, None] * (steps == n[:, None])
    return weights, n + 1, remainder


def ds_weights(cfg):
    """The normalised deep-supervision weights a_t / sum a over intermediate steps t = 1..T-1 (a list)."""
    T, kind = cfg["max_steps"], cfg["ds_schedule"]
    if T < 2:
        return []
    if kind == "constant":
        a = [1.0] * (T - 1)
    elif kind == "linear_decay":
        a = [(T - t) / (T - 1) for t in range(1, T)]
    else:
        a = [cfg["ds_decay"] ** (t - 1) for t in range(1, T)]
    total = sum(a)
    return [v / total for v in a]


def predict(model, x, cfg):
    """(prediction logits (B, C), per-step logits (B, T, C), steps used N (B,), ponder cost N + R (B,))."""
    logits, p = model(x)
    T = cfg["max_steps"]
    if cfg["halting"] == "none":
        n = torch.full((len(x),), T, dtype=torch.int64, device=x.device)
        return logits[:, -1], logits, n, n.to(logits.dtype)
    weights, n, remainder = act_halting(p, cfg["act_eps"])
    return (weights[..., None] * logits).sum(dim=1), logits, n, n.to(remainder.dtype) + remainder


def objective(model, x, y, cfg):
    """(the loss minimised, CE of the prediction, prediction logits, ponder cost N + R (B,))."""
    out, logits, _, ponder = predict(model, x, cfg)
    ce = F.cross_entropy(out, y)
    loss = ce
    if cfg["halting"] == "act":
        loss = loss + cfg["ponder_coef"] * ponder.mean()
    if cfg["deep_supervision"]:
        for t, a in enumerate(ds_weights(cfg)):
            loss = loss + cfg["ds_weight"] * a * F.cross_entropy(logits[:, t], y)
    return loss, ce, out, ponder


def macs(cfg, in_dim, n_classes, steps):
    """Multiply-accumulates of the matrix products for one sample that uses `steps` refinement steps."""
    d, r = cfg["d_hidden"], cfg["mlp_ratio"]
    cell = 2 * d * r * d + r * d * d
    if cfg["halting"] == "none":
        return in_dim * d + steps * cell + d * n_classes
    return in_dim * d + steps * (cell + d * n_classes + d)


def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    unknown = sorted(set(cfg) - set(CONFIG))
    if unknown:
        raise ValueError(f"refine: unknown config keys {unknown}; known: {sorted(CONFIG)}")
    cfg = {**CONFIG, **cfg}
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ValueError(f"refine: {key}={cfg[key]!r} is not one of {allowed}")
    for key in ("d_hidden", "mlp_ratio", "max_steps", "epochs", "batch_size", "eval_every"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"refine: {key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("ponder_coef", "ds_weight", "lr", "weight_decay"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], (int, float)) and cfg[key] >= 0):
            raise ValueError(f"refine: {key} must be a number >= 0, got {cfg[key]!r}")
    if not (0 < cfg["act_eps"] < 1):
        raise ValueError(f"refine: act_eps must lie in (0, 1), got {cfg['act_eps']!r}")
    if not (0 < cfg["ds_decay"] <= 1):
        raise ValueError(f"refine: ds_decay must lie in (0, 1], got {cfg['ds_decay']!r}")
    return cfg


def build_model(cfg, in_dim, n_classes):
    """The Refiner at its initialisation for cfg['seed']."""
    torch.manual_seed(cfg["seed"])
    return Refiner(in_dim, n_classes, cfg["d_hidden"], cfg["mlp_ratio"], cfg["max_steps"], cfg["act_bias_init"])


def n_params(model, cfg):
    """Parameters the prediction uses (the halting unit only under act)."""
    unused = model.halt.parameters() if cfg["halting"] == "none" else []
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in unused)


@torch.no_grad()
def evaluate(model, x, y, cfg, chunk=4096):
    """{loss, acc, steps (mean N), ponder (mean N + R), macs (mean per sample)} over (x, y), floats."""
    loss, correct, steps, ponder = 0.0, 0, 0, 0.0
    for s in range(0, len(y), chunk):
        out, _, n, rho = predict(model, x[s:s + chunk], cfg)
        loss += F.cross_entropy(out, y[s:s + chunk], reduction="sum").item()
        correct += (out.argmax(-1) == y[s:s + chunk]).sum().item()
        steps += n.sum().item()
        ponder += rho.sum().item()
    n = len(y)
    in_dim, n_classes = model.embed.in_features, model.head.out_features
    return {"loss": loss / n, "acc": correct / n, "steps": steps / n, "ponder": ponder / n,
            "macs": macs(cfg, in_dim, n_classes, steps / n)}      # macs is linear in N: mean of N suffices


# ---------------------------------------------------------------- the task

def train(cfg, ctx):
    """The task: load the dataset onto ctx.device, train, return the final metrics."""
    cfg = resolve(cfg)
    data = datasets.load(cfg["dataset"], cfg["data_dir"], ctx.device, cfg["test_fraction"])
    return fit(cfg, ctx, data)


def fit(cfg, ctx, data):
    """Train on `data` (models.data.load's dict, tensors already on ctx.device); the final metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    device = ctx.device
    model = build_model(cfg, data["in_dim"], data["n_classes"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    x, y = data["x_train"], data["y_train"]
    n, bs = len(y), cfg["batch_size"]
    per_epoch = math.ceil(n / bs)
    total = cfg["epochs"] * per_epoch
    gen = torch.Generator().manual_seed(seed)      # shuffling only: its state is the data position

    step, epoch, batch, perm, spent = 0, 0, 0, None, 0.0
    state = restore_same_config(ctx, cfg, "refine")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        pos = state["data"]
        gen.set_state(pos["generator"])
        epoch, batch, perm = pos["epoch"], pos["batch"], pos["perm"].to(device)
        step, spent = state["step"], state["train_time_s"]

    model.train()
    resumed_at = time.time()
    while epoch < cfg["epochs"]:
        if batch == 0:
            perm = torch.randperm(n, generator=gen).to(device)
        while batch < per_epoch:
            idx = perm[batch * bs:(batch + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg["lr"])
            loss, ce, out, ponder = objective(model, x[idx], y[idx], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, batch = step + 1, batch + 1
            row = {"total_steps": total, "loss": ce.item(), "objective": loss.item(),
                   "acc": (out.argmax(-1) == y[idx]).float().mean().item(), "ponder": ponder.mean().item()}
            if batch == per_epoch and ((epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]):
                model.eval()
                ev = evaluate(model, data["x_test"], data["y_test"], cfg)
                model.train()
                row.update(epoch=epoch + 1, test_loss=ev["loss"], test_acc=ev["acc"], test_ponder_steps=ev["steps"])
            ctx.log(step, **row)
            if ctx.should_checkpoint(step):
                ctx.save(step, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "data": {"epoch": epoch + (batch == per_epoch), "batch": batch % per_epoch,
                             "perm": perm.cpu(), "generator": gen.get_state()},
                    "step": step, "train_time_s": spent + time.time() - resumed_at, "config": cfg})
        epoch, batch = epoch + 1, 0

    model.eval()
    test = evaluate(model, data["x_test"], data["y_test"], cfg)
    train_ = evaluate(model, x, y, cfg)
    # no `epochs` (a config key) nor `wall_time_s` (result.json has it): the tables would rename them
    return {"test_acc": test["acc"], "test_loss": test["loss"], "train_acc": train_["acc"],
            "train_loss": train_["loss"], "mean_ponder_steps": test["steps"], "mean_ponder_cost": test["ponder"],
            "macs_per_sample": test["macs"], "n_params": n_params(model, cfg),
            "steps": step, "epochs_done": epoch, "train_time_s": round(spent + time.time() - resumed_at, 3)}
