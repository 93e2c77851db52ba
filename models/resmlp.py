"""The depth-utility ladder: a residual MLP whose last k blocks are trained by BP, FA or DFA.

Question: as more residual blocks are made trainable, does test accuracy rise? Under backprop it
should; under a method whose deep credit assignment fails it stays flat or falls.

    python main.py run sweeps/depth_ladder_digits.yaml --only method=bp,k=2,seed=1
    python -m models.frozen_check --d-hidden 256 --num-blocks 4 --seeds 42 123 456

Model. x -> h_0 = E x -> h_i = h_{i-1} + f_i(h_{i-1}), i = 1..L -> z = LN(h_L) -> y = H z, where
f_i(h) = W2 gelu(W1 LN(h) + b1) + b2 (models/blocks.py, width mlp_ratio * d). init=torch keeps
PyTorch's default Linear init (uniform in +-1/sqrt(fan_in)); init=normal draws every Linear weight
from N(0, init_std^2) with zero biases (GPT-2's and timm's choice). The two differ in how far the
frozen blocks move the input: on a 3072-dimensional standardised input (CIFAR-10's size) with
d=256, L=4, torch gives per-block ||f(h)||/||h|| 0.29-0.35 and a stack change of 0.70 (cos 0.82),
normal(0.02) gives 0.10 per block and 0.20 (cos 0.981), the anchors the depth-ladder study reports
(0.10; 0.196, cos 0.981). Under normal(0.02) the ratio depends on the input's dimension (the
embedding's output norm is 0.02 sqrt(d * in_dim) for a standardised input): on digits' 64 inputs
it is 0.44-0.69, so the digits demo keeps init=torch.
Blocks 1..L-k stay frozen at their initialisation (still in the forward pass); blocks L-k+1..L,
the embedding E, the output LayerNorm and the head H are trained. The init depends only on `seed`,
so runs that differ in method or k start from the same weights.

What each method computes, per batch of B samples with labels t (CE = mean cross-entropy of y, and
e = softmax(y) - onehot(t), the output error, so dCE/dy = e / B). sg() stops gradients; rms(g) is
the root mean square over all B x d elements of g, and n(g) = g / rms(g).

- bp: AdamW on the gradient of CE through everything, frozen blocks included (they pass gradient
  to the embedding; their own weights get none). One optimizer over all trainable parameters.
- fa (feedback alignment, Lillicrap et al. 2016): the backward pass is backprop except that every
  learned matrix of a trainable block (W1, W2) sends the gradient to its input through its own fixed
  random matrix B (shaped like W, drawn like PyTorch's init) instead of W^T. The head H sends the
  exact gradient H^T e to h_L (fa_head=exact, the default: "the last block sees the exact output
  gradient", as the study states); fa_head=random sends it through B_H as vanilla FA does.
  LayerNorm, GELU, the residual paths and the frozen blocks keep their exact backward (no learned
  matrix there). At every block boundary h_0..h_L the arriving signal g_i is rms-normalised, so
      readout (LN, H):  CE, its own gradient (LN's gain sees the exact signal, or B_H's with fa_head=random)
      block i:          l_i = (1/B) sum_b <h_i,b, sg(n(g_i))_b>,   g_L = FA signal from the readout,
                        g_{i-1} = n(g_i)/B + J_fi(h_{i-1})^T|_{W->B} n(g_i)/B  (the FA path into h_{i-1})
      embedding:        l_0 = (1/B) sum_b <h_0,b, sg(n(g_0))_b>
  computed in one backward pass: normalise_grad() at each boundary turns the gradient into g/(rms*B).
- dfa (direct feedback alignment, Nokland 2016): each block's input is detached; the output error
  reaches every trainable block i (and the embedding, i = 0) through its own fixed random matrix
  D_i (n_classes x d):   l_i = (1/B) sum_b <h_i,b, sg(n(e D_i))_b>,  backprop only inside block i.
  The readout is trained by CE as in fa (its LN gain sees e through B_H; nothing flows below h_L).

With fa and dfa each trained unit (embedding, each trainable block, readout) has its own AdamW;
AdamW is per-parameter, so this equals one optimizer with the same settings. lr follows a cosine
from `lr` to 0 over all steps (no warmup); weight decay applies to all trained parameters.
The feedback matrices come from a torch.Generator seeded with `seed`, drawn for all L blocks in a
fixed order whatever k is, so runs with different k share them; they are saved in the checkpoint.

Distributed (resources.tasks_per_node / nodes > 1): every rank draws the same permutation and trains
on its share of each batch (rank r takes elements r, r + W, ... of it); the gradients are averaged
over the W ranks before each optimizer step (ctx.average_gradients: DDP's arithmetic, without its
module wrapper, which FA/DFA's custom backward would bypass); logged train metrics are summed over
the ranks. Evaluation runs on every rank on the whole test set (the same weights: the same numbers).

Checkpoint (ctx.save): model weights, every optimizer, the feedback matrices, the shuffling
generator's state, the epoch's permutation and position in it, the epoch's running sums (each
rank's own, as its rank_state, in a distributed run) and the training time; ctx restores the python/numpy/torch RNG states. A resumed run is bit-identical to
an uninterrupted one on CPU.
"""
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import data as datasets
from models.blocks import (Block, cosine_lr, feedback_linear, normalise_grad, overlay, restore_same_config,
                           rms_normalise)

CONFIG = {
    "seed": 0,
    "dataset": "digits",          # digits (bundled with scikit-learn) | cifar10 (needs data_dir)
    "data_dir": None,             # cifar10: folder with data_batch_1..5 and test_batch
    "test_fraction": 0.2,         # digits only: the held-out share (fixed split, same for every seed)
    "val_fraction": 0.0,          # share of the training set held out for validation (fixed split, the same
                                  # for every seed); > 0: val_loss / val_acc each evaluated epoch, what a
                                  # search selects on, so that test_acc stays a clean estimate
    "method": "bp",               # bp | fa | dfa
    "d_hidden": 256,
    "num_blocks": 4,
    "k": 4,                       # the last k blocks are trained, the first num_blocks - k stay at init
    "mlp_ratio": 4,
    "epochs": 100,
    "schedule_epochs": 0,         # epochs the cosine learning rate spans (0: epochs). A search that raises
                                  # `epochs` by promotion sets it to its largest budget: a trial promoted to
                                  # the end trains exactly as a full-length run would
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "eval_every": 1,              # epochs between test-set evaluations in metrics.jsonl
    "init": "torch",              # torch (PyTorch's Linear default) | normal (weights N(0, init_std^2), biases 0)
    "init_std": 0.02,             # init=normal only
    "fa_head": "exact",           # fa only: exact (the last block sees the exact output gradient H^T e) | random (via B_H)
}

CHOICES = {"method": ["bp", "fa", "dfa"], "dataset": ["digits", "cifar10"], "init": ["torch", "normal"],
           "fa_head": ["exact", "random"]}


# ---------------------------------------------------------------- model

class ResMLP(nn.Module):
    """Embedding -> num_blocks pre-norm residual MLP blocks -> LayerNorm -> linear head."""

    def __init__(self, in_dim, n_classes, d_hidden, num_blocks, mlp_ratio):
        super().__init__()
        self.embed = nn.Linear(in_dim, d_hidden)
        self.blocks = nn.ModuleList(Block(d_hidden, mlp_ratio) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(d_hidden)
        self.head = nn.Linear(d_hidden, n_classes)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    cfg = overlay("resmlp", CONFIG, CHOICES, cfg)
    L, k = cfg["num_blocks"], cfg["k"]
    if not (isinstance(L, int) and L >= 0):
        raise ValueError(f"resmlp: num_blocks must be an integer >= 0, got {L!r}")
    if not (isinstance(k, int) and 0 <= k <= L):
        raise ValueError(f"resmlp: k={k!r} must be an integer from 0 to num_blocks={L} "
                         f"(the number of trainable blocks, counted from the top)")
    for key in ("d_hidden", "mlp_ratio", "epochs", "batch_size", "eval_every"):
        if not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"resmlp: {key} must be an integer >= 1, got {cfg[key]!r}")
    if not (isinstance(cfg["schedule_epochs"], int) and cfg["schedule_epochs"] >= 0):
        raise ValueError(f"resmlp: schedule_epochs must be an integer >= 0, got {cfg['schedule_epochs']!r}")
    if not (isinstance(cfg["init_std"], (int, float)) and not isinstance(cfg["init_std"], bool)
            and cfg["init_std"] > 0):
        raise ValueError(f"resmlp: init_std must be a number > 0, got {cfg['init_std']!r}")
    return cfg


def build_model(cfg, in_dim, n_classes):
    """The ResMLP at its initialisation for cfg['seed'], with the first num_blocks - k blocks frozen."""
    torch.manual_seed(cfg["seed"])
    model = ResMLP(in_dim, n_classes, cfg["d_hidden"], cfg["num_blocks"], cfg["mlp_ratio"])
    if cfg["init"] == "normal":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, cfg["init_std"])
                    module.bias.zero_()
    for i in frozen_blocks(cfg):
        model.blocks[i].requires_grad_(False)
    return model


def frozen_blocks(cfg):
    return range(cfg["num_blocks"] - cfg["k"])


def trainable_blocks(cfg):
    return range(cfg["num_blocks"] - cfg["k"], cfg["num_blocks"])


def make_feedback(model, cfg):
    """{name: fixed random matrix} for fa / dfa (empty for bp), drawn from a generator seeded by seed.

    fa: "head" and "block{i}.fc1", "block{i}.fc2", each shaped and scaled like the forward weight
    (uniform in +-1/sqrt(fan_in), PyTorch's Linear init). dfa: "head", "embed" and "block{i}", each
    n_classes x d. Matrices for every block are drawn in order, and only the trainable ones kept.
    fa's "head" is drawn (and saved) even when fa_head=exact leaves it unused, so that the blocks'
    matrices do not depend on fa_head.
    """
    method = cfg["method"]
    if method == "bp":
        return {}
    gen = torch.Generator().manual_seed(cfg["seed"])
    draw = lambda shape, fan_in: (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)
    d, c = model.head.in_features, model.head.out_features
    fb = {"head": draw((c, d), d)}
    if method == "dfa":
        fb["embed"] = draw((c, d), c)
    keep = set(trainable_blocks(cfg))
    for i, block in enumerate(model.blocks):
        if method == "fa":
            mats = {f"block{i}.fc1": draw(block.fc1.weight.shape, block.fc1.in_features),
                    f"block{i}.fc2": draw(block.fc2.weight.shape, block.fc2.in_features)}
        else:
            mats = {f"block{i}": draw((c, d), c)}
        if i in keep:
            fb.update(mats)
    return fb


def make_optimizers(model, cfg):
    """{name: AdamW}: one over every trained parameter for bp; one per trained unit for fa / dfa."""
    opt = lambda params: torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if cfg["method"] == "bp":
        return {"all": opt([p for p in model.parameters() if p.requires_grad])}
    units = {"embed": model.embed}
    units.update({f"block{i}": model.blocks[i] for i in trainable_blocks(cfg)})
    out = {name: opt(list(unit.parameters())) for name, unit in units.items()}
    out["readout"] = opt(list(model.norm.parameters()) + list(model.head.parameters()))
    return out


# ---------------------------------------------------------------- one step

def _forward_fa(model, x, cfg, fb):
    h = normalise_grad(model.embed(x))
    keep = set(trainable_blocks(cfg))
    for i, block in enumerate(model.blocks):
        mats = {"fc1": fb[f"block{i}.fc1"], "fc2": fb[f"block{i}.fc2"]} if i in keep else None
        h = normalise_grad(block(h, mats))
    if cfg["fa_head"] == "exact":
        return model.head(model.norm(h))
    return feedback_linear(model.norm(h), model.head.weight, model.head.bias, fb["head"])


def _forward_dfa(model, x, cfg, fb):
    """Logits and [(unit output, its feedback matrix)]; every unit's input is detached."""
    h = model.embed(x)
    outs = [(h, fb["embed"])]
    h = h.detach()
    keep = set(trainable_blocks(cfg))
    for i, block in enumerate(model.blocks):
        if i in keep:
            out = block(h)
            outs.append((out, fb[f"block{i}"]))
            h = out.detach()
        else:
            with torch.no_grad():
                h = block(h)
    return feedback_linear(model.norm(h), model.head.weight, model.head.bias, fb["head"]), outs


def train_step(model, fb, opts, cfg, x, y, lr, sync=None):
    """One optimisation step of cfg['method'] on the batch (x, y); returns (CE loss, #correct), detached.

    `sync()`, when given, runs between backward and the optimizer step (a distributed run averages
    the gradients over its ranks there)."""
    if cfg["method"] == "bp":
        logits = model(x)
    elif cfg["method"] == "fa":
        logits = _forward_fa(model, x, cfg, fb)
    else:
        logits, outs = _forward_dfa(model, x, cfg, fb)
    loss = F.cross_entropy(logits, y)
    total = loss
    if cfg["method"] == "dfa":
        e = logits.detach().softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        for out, D in outs:
            total = total + (out * rms_normalise(e @ D)).sum() / len(y)
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    total.backward()
    if sync is not None:
        sync()
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return loss.detach(), (logits.detach().argmax(-1) == y).sum()


@torch.no_grad()
def evaluate(model, x, y, chunk=4096):
    """(mean cross-entropy, accuracy) of the model over (x, y), as floats."""
    loss, correct = 0.0, 0
    for s in range(0, len(y), chunk):
        logits = model(x[s:s + chunk])
        loss += F.cross_entropy(logits, y[s:s + chunk], reduction="sum").item()
        correct += (logits.argmax(-1) == y[s:s + chunk]).sum().item()
    return loss / len(y), correct / len(y)


# ---------------------------------------------------------------- the task

def train(cfg, ctx):
    """The task: load the dataset onto ctx.device, train, return the final metrics."""
    cfg = resolve(cfg)
    data = datasets.load(cfg["dataset"], cfg["data_dir"], ctx.device, cfg["test_fraction"])
    if cfg["val_fraction"]:
        data = hold_out(data, cfg["val_fraction"])
    return fit(cfg, ctx, data)


def hold_out(data, fraction, seed=20181204):
    """`data` with a validation split (x_val, y_val) taken from its training set: a fixed permutation,
    independent of the run's seed, so every run of a sweep is selected on the same examples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"resmlp: val_fraction must be in [0, 1), got {fraction!r}")
    n = len(data["y_train"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data["y_train"].device)
    k = max(1, round(fraction * n))
    val, train = order[:k], order[k:]
    return {**data, "x_val": data["x_train"][val], "y_val": data["y_train"][val],
            "x_train": data["x_train"][train], "y_train": data["y_train"][train]}


def fit(cfg, ctx, data):
    """Train on `data` (models.data.load's dict, tensors already on ctx.device); the final metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    device = ctx.device
    model = build_model(cfg, data["in_dim"], data["n_classes"]).to(device)
    fb = {name: m.to(device) for name, m in make_feedback(model, cfg).items()}
    opts = make_optimizers(model, cfg)
    x, y = data["x_train"], data["y_train"]
    n, bs = len(y), cfg["batch_size"]
    per_epoch = math.ceil(n / bs)
    total = (cfg["schedule_epochs"] or cfg["epochs"]) * per_epoch
    gen = torch.Generator().manual_seed(seed)      # shuffling only: its state is the data position

    step, epoch, batch, perm, spent = 0, 0, 0, None, 0.0
    sums = _zero_sums(device)
    state = restore_same_config(ctx, cfg, "resmlp")
    if state is not None:
        model.load_state_dict(state["model"])
        for name, opt in opts.items():
            opt.load_state_dict(state["optimizers"][name])
        fb = {name: m.to(device) for name, m in state["feedback"].items()}
        pos = state["data"]
        gen.set_state(pos["generator"])
        epoch, batch, perm = pos["epoch"], pos["batch"], pos["perm"].to(device)
        # the epoch's running sums are each rank's own (rank_state); one-process checkpoints keep them in state
        own = ctx.rank_state["sums"] if ctx.rank_state is not None else pos["sums"]
        sums = {k: v.to(device) for k, v in own.items()}
        step, spent = state["step"], state["train_time_s"]

    model.train()
    resumed_at = time.time()
    # with several ranks, the gradients are averaged as DDP would (FA/DFA's backward bypasses the
    # module's forward, so the DistributedDataParallel wrapper cannot be used)
    sync = (lambda: ctx.average_gradients(model.parameters())) if ctx.world_size > 1 else None
    while epoch < cfg["epochs"]:
        if batch == 0:
            perm = torch.randperm(n, generator=gen).to(device)
            sums = _zero_sums(device)
        while batch < per_epoch:
            # a distributed run: every rank draws the same permutation and takes its share of each batch
            idx = perm[batch * bs:(batch + 1) * bs][ctx.rank::ctx.world_size]
            loss, correct = train_step(model, fb, opts, cfg, x[idx], y[idx], cosine_lr(step, total, cfg["lr"]),
                                       sync=sync)
            sums["loss"] += loss * len(idx)
            sums["correct"] += correct
            sums["seen"] += len(idx)
            step, batch = step + 1, batch + 1
            if ctx.should_checkpoint(step):
                ctx.save(step, {
                    "model": model.state_dict(),
                    "optimizers": {name: opt.state_dict() for name, opt in opts.items()},
                    "feedback": fb,
                    "data": {"epoch": epoch, "batch": batch, "perm": perm.cpu(), "generator": gen.get_state(),
                             "sums": {k: v.cpu() for k, v in sums.items()}},
                    "step": step, "train_time_s": spent + time.time() - resumed_at, "config": cfg},
                    rank_state={"sums": {k: v.cpu() for k, v in sums.items()}} if ctx.world_size > 1 else None)
        epoch, batch = epoch + 1, 0
        seen = float(ctx.sum_over_ranks(sums["seen"].item()))
        metrics = {"epoch": epoch, "train_loss": ctx.sum_over_ranks(sums["loss"].item()) / seen,
                   "train_acc": ctx.sum_over_ranks(sums["correct"].item()) / seen,
                   "lr": cosine_lr(step, total, cfg["lr"])}
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
            model.eval()
            metrics["test_loss"], metrics["test_acc"] = evaluate(model, data["x_test"], data["y_test"])
            if "x_val" in data:
                metrics["val_loss"], metrics["val_acc"] = evaluate(model, data["x_val"], data["y_val"])
            model.train()
        ctx.log(step, total_steps=total, **metrics)
        if epoch == cfg["epochs"]:
            # the end of the budget: saved after the epoch's line, so a run trained on later (a promoted
            # search trial) continues from here and trains no step twice
            ctx.save(step, {
                "model": model.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in opts.items()},
                "feedback": fb,
                "data": {"epoch": epoch, "batch": 0, "perm": perm.cpu(), "generator": gen.get_state(),
                         "sums": {k: v.cpu() for k, v in _zero_sums(device).items()}},
                "step": step, "train_time_s": spent + time.time() - resumed_at, "config": cfg},
                rank_state={"sums": {k: v.cpu() for k, v in _zero_sums(device).items()}} if ctx.world_size > 1 else None)

    model.eval()
    test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
    train_loss, train_acc = evaluate(model, x, y)
    val = dict(zip(("val_loss", "val_acc"), evaluate(model, data["x_val"], data["y_val"]))) if "x_val" in data else {}
    # no `epochs` (a config key) nor `wall_time_s` (result.json has it): the tables would rename them
    return {"test_acc": test_acc, "test_loss": test_loss, "train_acc": train_acc, "train_loss": train_loss, **val,
            "n_params": sum(p.numel() for p in model.parameters()),
            "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "steps": step, "train_time_s": round(spent + time.time() - resumed_at, 3)}   # all attempts


def _zero_sums(device):
    return {"loss": torch.zeros((), device=device), "correct": torch.zeros((), dtype=torch.int64, device=device),
            "seen": torch.zeros((), dtype=torch.int64, device=device)}
