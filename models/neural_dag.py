"""Neural structure learning on time series, with the training-stability fixes and a health log.

Question: with every loss term mean-reduced, standardised inputs, a low learning rate, tight
gradient clipping and a plateau schedule, does a neural model that learns an adjacency A train
stably (clip ratio falling to ~0 within a few epochs), and which loss weights let it learn edges
(edge_count > 5, val F1 > 0.1) instead of collapsing them to none?

    python main.py run sweeps/neural_dag_smoke.yaml --only lambda_sparse=0.0001,lambda_acyclic=1e-05,seed=1337

Data (models/sem_data.py: time-series SEMs with a known DAG, linear or nonlinear, gaussian /
laplace / uniform noise, all fixed by `seed`; or a user's .npz / .npy via data_file, graph_file):
X shaped (samples, time, variables). A seeded permutation (numpy default_rng(seed + 1)) holds out
val_fraction of the samples. Zero-mean unit-variance standardisation per variable over
(samples, time), fitted on the training samples and applied to both:
    X_mean = X_train.mean((0, 1)), X_std = X_train.std((0, 1)) + 1e-8.

Model, for a batch x (B, T, d) and h_t = x_{t-1} (h_0 = 0, the history):
    A = sigmoid(L) o (1 - I)                         the learned adjacency, L (d, d) logits, init 0
    z_s, z_n, z_b = E_s(h_t), E_n(h_t), E_b(h_t)      tri-latent encoders (signal, noise, bias),
                                                       each Linear(d, hidden) - ReLU - Linear(hidden, latent)
    x^_{t,j} = m_j(A[:, j] o x_t) + D([z_s, z_n, z_b])_j
where m_j is variable j's own MLP (Linear(d, hidden) - tanh - Linear(hidden, 1)) fed its gated
candidate parents (entry i of its input is A[i, j] x_{t,i}; the zero diagonal keeps x_{t,j} out),
and D (Linear(3 latent, hidden) - ReLU - Linear(hidden, d)) explains what the past explains. An
edge i -> j is scored A[i, j] in [0, 1].

Losses, every one mean-reduced (a batch and the same batch repeated give the same value):
    recon   = mean over (B, T, d) of (x^ - x)^2
    sparse  = mean over (d, d) of |A|
    acyclic = relu(tr((I + A/d)^n_power) - d), n_power = 3      (acyclicity: power, the default:
              the normalised trace of a matrix power; for A >= 0 it is > 0 exactly when A has a
              cycle of length <= n_power; 2- and 3-cycles for n_power 3)
            = tr(exp(A o A)) - d                                 (acyclicity: expm, NOTEARS' h)
    disen   = sum over the pairs (s, n), (s, b), (n, b) of the mean |corr| between the two
              latents' units (Pearson over the B*T rows; 0 when the latents are uncorrelated)
    total   = lambda_recon recon + lambda_sparse sparse + lambda_acyclic acyclic + lambda_disen disen
with the recommended weights 10, 1e-4, 1e-5, 1e-4 as defaults.

Training (the stability fixes): Adam(lr 5e-4, weight_decay 1e-4); per batch, after backward,
torch.nn.utils.clip_grad_norm_(params, max_norm 1.0): a batch counts as clipped when the total norm
before clipping exceeds max_norm, and grad_clip_ratio is the epoch's clipped share of batches.
After each epoch: the validation objective (the same weighted total, on the validation samples)
drives ReduceLROnPlateau(mode min, factor 0.5, patience 3, cooldown 1: the LR halves on the 4th
epoch in a row without a new minimum, then one epoch of rest). Early stopping ends training once
early_stop_metric has not improved for early_stop_patience (10) epochs: val_f1 (the default: the
study calls F1 "a much better signal for early stopping"; it reads the true graph, which synthetic
SEMs and a user's graph_file provide) or val_loss (the validation objective, for data without a
graph to score against; in 100 epochs it keeps falling slowly and never fires). Batches are drawn
by a seeded torch.Generator (seed); the model init by torch.manual_seed(seed); seed 1337 by default.

Validation protocol, every epoch (the graph is A itself, so the validation samples only enter the
validation objective): the off-diagonal A against the true graph at the 21 thresholds
linspace(0, 1, 21) (an edge where A > threshold); the threshold with the highest F1 (the first, the
lowest, on ties) is best_threshold, val_f1 its F1 and val_shd its SHD (NOTEARS' count: extra +
missing + reversed, a reversed edge once). edge_count = edges with A > edge_threshold (0.5, the
fixed threshold the study used before the search), so it can be 0 while best_threshold is 0.

Health log, one ctx.log line per epoch (step = epoch) with the study's field names: epoch,
train_loss, train_loss_components {recon, sparse, acyclic, disen} (also flat: loss_recon,
loss_sparse, loss_acyclic, loss_disen, for tables and curves), val_f1, val_shd, edge_count,
grad_clip_ratio, learning_rate (after the scheduler's step), best_threshold, epoch_time; plus
val_loss, max_grad_norm, total_steps (= epochs); grad_adj_recon, grad_adj_sparse, grad_adj_acyclic
(the norm of each weighted term's gradient on the adjacency logits, on the validation samples: why
a lambda does or does not move the graph); and `warnings`, a list of the health checks that failed
this epoch, which also go to stderr and to Python's warnings (HealthWarning), the study's table:
    grad_clip_ratio > 0.5 (healthy 0-0.2),  edge_count == 0 (healthy > 5),  val_f1 == 0 (healthy > 0.1),
    best_threshold >= 0.5 (healthy 0-0.3: edges too small),
    train_loss flat (healthy: decreasing): it fell by less than 0.1 % over the last 5 epochs.

Final metrics: the last epoch's val_f1, val_shd, edge_count, best_threshold, grad_clip_ratio,
learning_rate, train_loss, val_loss, loss_*; best_val_f1 / best_epoch (the early-stopping
record: best_epoch is the epoch of early_stop_metric's best, best_val_f1 the highest val_f1 of any
epoch); tpr, fdr, nnz at the last best_threshold; edge_tpr, edge_fdr, edge_f1 of the edges
counted by edge_count (A > edge_threshold: the recall a fixed threshold keeps as sparsity grows); f1, shd (= val_f1, val_shd: the names the
structure task reports, so a NOTEARS baseline shares the table's columns); n_true_edges; is_dag
(of A > best_threshold); epochs_run, stopped_early, steps (optimizer steps), train_time_s.

Checkpoint at every epoch boundary the task is asked to (ctx.should_checkpoint(epoch)): the model,
Adam, the scheduler, the early-stopping record, the batch generator's state, the epoch and the
step count; the data are regenerated from the seed. A resumed run is bit-identical to an
uninterrupted one on CPU.

What to expect (measured; 2,000 series of 10 steps, 10 variables, 10-15 true edges, seed 1337).
Why the study's lambda ranges change nothing: at init the weighted gradients on the adjacency
logits are recon 0.26, sparse 2.4e-6, acyclic 8.5e-7 (lambda 10, 1e-4, 1e-5; the unweighted terms'
gradients are all ~0.02-0.09, since every term is mean-reduced over d^2 entries or B*T*d values).
Adam follows the sum, so a penalty 1e-5 of the reconstruction's is invisible: over lambda_sparse
1e-5..1e-2 and lambda_acyclic 1e-7..1e-4 (lambda_recon 10) A keeps ~38-43 edges above 0.5 and
val_f1 0.41-0.47 at every point (predicting every edge scores 2E/(E + d(d-1)) = 0.29 for E = 15):
with acyclicity this weak each variable is reconstructed from its Markov blanket, children
included. The trade-off the study expects (fewer edges, lower recall, fewer false ones) lies
where lambda_sparse's gradient meets the reconstruction's, lambda_sparse / lambda_recon ~ 1e-2..1:
lambda_sparse 1 keeps ~12 edges (val_shd ~12), 10 collapses every edge (edge_count 0 by epoch ~23);
sweeps/neural_dag_smoke.yaml walks that range. The study's own model collapsed edges at 1e-4, so
its penalties must have weighed more there than mean-reduced ones weigh here.
Clipping: the clipped share falls once the loss is fitted, after ~150 optimizer steps, so its
shape by epoch depends on the batches in an epoch. With the 2,000-series default (25 batches) it
is 1.0 for epochs 1-6, then ~0.5 and ~0.05. With 8,000 series (100 batches): 1.0, 0.67, 0.05,
0.02, 0.03 (seed 1338: 1.0, 0.96, 0.33, 0.20, 0.16); with 12,000: 0.99, 0.15, 0.04, 0.03, 0.02.
That is the study's fall (96 % -> 39 % -> 4 % by epoch 3), but the tail stays at 2-3 % of batches
rather than the study's < 0.2 % from epoch 5: a few batches keep norms just over 1.0.
Early stopping on val_f1 fires: val_f1 peaks near epoch 35 and training stops ~10 epochs later.
"""
import math
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from models import sem_data
from models.blocks import overlay, restore_same_config

CONFIG = {
    "seed": 1337,
    # data: generated (models/sem_data.py) or a user's arrays
    "data": "sem",                # sem | file
    "data_file": "",              # .npz with X (samples, time, variables) and B (the true graph), or .npy
    "graph_file": "",             # .npy of the true graph when data_file is an .npy
    "n_nodes": 10,
    "edge_prob": 0.3,
    "n_samples": 2000,
    "n_timesteps": 10,
    "sem_type": "linear",         # linear | nonlinear
    "noise_type": "gaussian",     # gaussian | laplace | uniform
    "noise_scale": 1.0,
    "ar_coef": 0.5,               # each variable's own lag
    "val_fraction": 0.2,
    # model
    "latent_dim": 8,
    "hidden_dim": 16,
    # losses
    "lambda_recon": 10.0,
    "lambda_sparse": 1e-4,
    "lambda_acyclic": 1e-5,
    "lambda_disen": 1e-4,
    "acyclicity": "power",        # power: relu(tr((I + A/d)^n_power) - d) | expm: tr(exp(A o A)) - d
    "n_power": 3,
    # training
    "epochs": 100,
    "batch_size": 64,             # samples (each a whole series) per batch
    "lr": 5e-4,
    "weight_decay": 1e-4,
    "max_norm": 1.0,              # clip_grad_norm_ threshold
    "lr_factor": 0.5,             # ReduceLROnPlateau
    "lr_patience": 3,
    "lr_cooldown": 1,
    "early_stop_metric": "val_f1",    # val_f1 (the study's "better signal for early stopping") | val_loss
    "early_stop_patience": 10,
    "edge_threshold": 0.5,        # edge_count counts A > this
}

CHOICES = {"data": ["sem", "file"], "sem_type": ["linear", "nonlinear"], "noise_type": ["gaussian", "laplace", "uniform"],
           "acyclicity": ["power", "expm"], "early_stop_metric": ["val_f1", "val_loss"]}

THRESHOLDS = np.linspace(0, 1, 21)
CLIP_WARN, EDGES_MIN, THRESHOLD_WARN = 0.5, 0, 0.5
LOSS_TREND_EPOCHS, LOSS_TREND_TOL = 5, 1e-3   # flat: train_loss fell by < 0.1 % over the last 5 epochs


class HealthWarning(UserWarning):
    """A health-log value outside the study's healthy range."""


# ---------------------------------------------------------------- model

class NeuralDAG(nn.Module):
    """Adjacency logits, the per-variable gated mechanisms, the tri-latent encoders and decoder."""

    def __init__(self, d, latent_dim, hidden_dim):
        super().__init__()
        self.d = d
        self.logits = nn.Parameter(torch.zeros(d, d))
        self.register_buffer("off_diag", 1.0 - torch.eye(d))
        enc = lambda: nn.Sequential(nn.Linear(d, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, latent_dim))
        self.enc_s, self.enc_n, self.enc_b = enc(), enc(), enc()
        self.decoder = nn.Sequential(nn.Linear(3 * latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, d))
        # m_j: Linear(d, hidden) - tanh - Linear(hidden, 1), one per target j, as batched weights
        bound1, bound2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden_dim)
        self.w1 = nn.Parameter(torch.empty(d, d, hidden_dim).uniform_(-bound1, bound1))    # [target, input, h]
        self.b1 = nn.Parameter(torch.empty(d, hidden_dim).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(d, hidden_dim).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.empty(d).uniform_(-bound2, bound2))

    def adjacency(self):
        return torch.sigmoid(self.logits) * self.off_diag

    def forward(self, x):
        """{x_recon (B, T, d), A (d, d), z_s, z_n, z_b (B, T, latent)} for x (B, T, d)."""
        hist = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        z_s, z_n, z_b = self.enc_s(hist), self.enc_n(hist), self.enc_b(hist)
        a = self.adjacency()
        gated = x.unsqueeze(-1) * a                                   # (B, T, input i, target j)
        h = torch.tanh(torch.einsum("btij,jih->btjh", gated, self.w1) + self.b1)
        mech = (h * self.w2).sum(-1) + self.b2
        recon = mech + self.decoder(torch.cat([z_s, z_n, z_b], dim=-1))
        return {"x_recon": recon, "A": a, "z_s": z_s, "z_n": z_n, "z_b": z_b}


# ---------------------------------------------------------------- losses (all mean-reduced)

def reconstruction_loss(x_recon, x):
    return ((x_recon - x) ** 2).mean()


def sparsity_loss(a):
    return a.abs().mean()


def acyclicity_loss(a, kind="power", n_power=3):
    """power: relu(tr((I + A/d)^n_power) - d); expm: tr(exp(A o A)) - d (NOTEARS)."""
    d = a.shape[0]
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    if kind == "expm":
        return torch.linalg.matrix_exp(a * a).diagonal().sum() - d
    return torch.relu(torch.linalg.matrix_power(eye + a / d, n_power).diagonal().sum() - d)


def _cross_corr(u, v):
    """Mean |Pearson correlation| over every pair (unit of u, unit of v), rows = samples."""
    u = u - u.mean(0)
    v = v - v.mean(0)
    cov = u.T @ v / len(u)
    su = (u.pow(2).mean(0) + 1e-8).sqrt()
    sv = (v.pow(2).mean(0) + 1e-8).sqrt()
    return (cov / su[:, None] / sv[None, :]).abs().mean()


def disentanglement_loss(z_s, z_n, z_b):
    flat = [z.reshape(-1, z.shape[-1]) for z in (z_s, z_n, z_b)]
    return _cross_corr(flat[0], flat[1]) + _cross_corr(flat[0], flat[2]) + _cross_corr(flat[1], flat[2])


def losses(out, x, cfg):
    """(weighted total, {recon, sparse, acyclic, disen}) for the model output on batch x."""
    parts = {"recon": reconstruction_loss(out["x_recon"], x),
             "sparse": sparsity_loss(out["A"]),
             "acyclic": acyclicity_loss(out["A"], cfg["acyclicity"], cfg["n_power"]),
             "disen": disentanglement_loss(out["z_s"], out["z_n"], out["z_b"])}
    total = sum(cfg[f"lambda_{k}"] * v for k, v in parts.items())
    return total, parts


# ---------------------------------------------------------------- validation

count_accuracy = sem_data.count_accuracy      # {shd, tpr, fdr, nnz, f1}: one copy, beside the graphs it scores


def threshold_search(a, b_true, thresholds=THRESHOLDS):
    """(best threshold, its count_accuracy): the highest F1 of A > t over the thresholds (first on ties)."""
    a = np.asarray(a, dtype=np.float64).copy()
    np.fill_diagonal(a, 0.0)
    best_t, best = None, None
    for t in thresholds:
        acc = count_accuracy(b_true, a > t)
        if best is None or acc["f1"] > best["f1"]:
            best_t, best = float(t), acc
    return best_t, best


def health_warnings(row, loss_history=()):
    """The study's health checks that this epoch's log line fails, as short texts.

    `loss_history`: the train_loss of every epoch so far, this one last; the trend check needs
    LOSS_TREND_EPOCHS + 1 of them."""
    out = []
    if row["grad_clip_ratio"] > CLIP_WARN:
        out.append(f"grad_clip_ratio {row['grad_clip_ratio']:.2f} > {CLIP_WARN}: gradients too high")
    if row["edge_count"] <= EDGES_MIN:
        out.append("edge_count 0: structure not learned (lower lambda_sparse / lambda_acyclic)")
    if row["val_f1"] == 0:
        out.append("val_f1 0: no true edge found at any threshold")
    if row["best_threshold"] >= THRESHOLD_WARN:
        out.append(f"best_threshold {row['best_threshold']:.2f} >= {THRESHOLD_WARN}: edges too small")
    if len(loss_history) > LOSS_TREND_EPOCHS:
        now, before = loss_history[-1], loss_history[-1 - LOSS_TREND_EPOCHS]
        if now > before - LOSS_TREND_TOL * abs(before):
            out.append(f"train_loss flat: {now:.4g} vs {before:.4g} {LOSS_TREND_EPOCHS} epochs ago "
                       f"(healthy: decreasing): learning stuck")
    return out


def adjacency_gradients(model, x, cfg):
    """{grad_adj_recon, grad_adj_sparse, grad_adj_acyclic}: the norm of each weighted loss term's
    gradient on the adjacency logits, on x. What decides whether a lambda moves the graph: Adam
    follows the sum, so a term whose gradient is 1e-5 of the reconstruction's changes nothing."""
    out = model(x)
    _, parts = losses(out, x, cfg)
    norms = {}
    for key in ("recon", "sparse", "acyclic"):
        grad, = torch.autograd.grad(cfg[f"lambda_{key}"] * parts[key], model.logits, retain_graph=True,
                                    allow_unused=True)
        norms[f"grad_adj_{key}"] = 0.0 if grad is None else float(grad.norm())
    return norms


# ---------------------------------------------------------------- config

def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    cfg = overlay("neural_dag", CONFIG, CHOICES, cfg)
    for key in ("n_nodes", "n_samples", "n_timesteps", "latent_dim", "hidden_dim", "epochs", "batch_size",
                "n_power", "lr_patience", "early_stop_patience"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"neural_dag: {key} must be an integer >= 1, got {cfg[key]!r}")
    if isinstance(cfg["lr_cooldown"], bool) or not (isinstance(cfg["lr_cooldown"], int) and cfg["lr_cooldown"] >= 0):
        raise ValueError(f"neural_dag: lr_cooldown must be an integer >= 0, got {cfg['lr_cooldown']!r}")
    if not 0 < cfg["val_fraction"] < 1:
        raise ValueError(f"neural_dag: val_fraction must lie in (0, 1), got {cfg['val_fraction']!r}")
    if not 0 <= cfg["edge_prob"] <= 1:
        raise ValueError(f"neural_dag: edge_prob must lie in [0, 1], got {cfg['edge_prob']!r}")
    if not 0 < cfg["lr_factor"] < 1:
        raise ValueError(f"neural_dag: lr_factor must lie in (0, 1), got {cfg['lr_factor']!r}")
    for key in ("lambda_recon", "lambda_sparse", "lambda_acyclic", "lambda_disen", "weight_decay", "edge_threshold"):
        if not cfg[key] >= 0:
            raise ValueError(f"neural_dag: {key} must be >= 0, got {cfg[key]!r}")
    for key in ("lr", "max_norm", "noise_scale"):
        if not cfg[key] > 0:
            raise ValueError(f"neural_dag: {key} must be > 0, got {cfg[key]!r}")
    if cfg["data"] == "file" and not cfg["data_file"]:
        raise ValueError("neural_dag: data: file needs data_file")
    return cfg


def prepare_data(cfg):
    """{x_train, x_val (float32 tensors, standardised), b_true (d, d) numpy, mean, std}."""
    x, b = sem_data.load(cfg)
    n = len(x)
    n_val = max(1, int(round(cfg["val_fraction"] * n)))
    if n - n_val < 1:
        raise ValueError(f"neural_dag: {n} samples leave none to train on with val_fraction {cfg['val_fraction']}")
    perm = np.random.default_rng(cfg["seed"] + 1).permutation(n)
    x_tr, x_val, mean, std = sem_data.standardise(x[perm[n_val:]], x[perm[:n_val]])
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)
    return {"x_train": as_t(x_tr), "x_val": as_t(x_val), "b_true": b, "mean": mean, "std": std}


# ---------------------------------------------------------------- training

def make_optimizer(model, cfg):
    """Adam(lr, weight_decay) over every parameter (5e-4 and 1e-4 by default)."""
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def make_scheduler(opt, cfg):
    """ReduceLROnPlateau on the validation objective: factor 0.5, patience 3, cooldown 1 by default."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg["lr_factor"],
                                                      patience=cfg["lr_patience"], cooldown=cfg["lr_cooldown"])


def run_epoch(model, opt, x, cfg, gen):
    """One pass over x in batches drawn by gen: (epoch means {total, recon, ...}, per-batch gradient norms
    before clipping). A batch is clipped when its norm exceeds max_norm."""
    n, bs = len(x), cfg["batch_size"]
    perm = torch.randperm(n, generator=gen).to(x.device)         # drawn on the CPU: the same order on any device
    sums = {"total": 0.0, "recon": 0.0, "sparse": 0.0, "acyclic": 0.0, "disen": 0.0}
    norms = []
    params = [p for p in model.parameters() if p.requires_grad]
    for s in range(0, n, bs):
        xb = x[perm[s:s + bs]]
        total, parts = losses(model(xb), xb, cfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=cfg["max_norm"]))
        norms.append(norm)
        opt.step()
        w = len(xb) / n
        sums["total"] += total.item() * w
        for k, v in parts.items():
            sums[k] += v.item() * w
    return sums, norms


def clip_ratio(norms, max_norm):
    """The share of batches whose gradient norm exceeded max_norm (clip_grad_norm_ scaled them down)."""
    return sum(n > max_norm for n in norms) / max(len(norms), 1)


@torch.no_grad()
def validate(model, x, cfg):
    total, parts = losses(model(x), x, cfg)
    return total.item(), {k: v.item() for k, v in parts.items()}


def console_line(row, epochs, n_true, new_best) -> str:
    """The study's per-epoch line (its section 7), printed to the run's log beside metrics.jsonl:
    `Epoch   4/100 | Loss:   0.0105 | Val F1: 0.0690 | Val SHD:   27.0 | Edges:   0/13 | Grad Clip: 0.7% |
    LR: 5.00e-04 | NEW BEST` (Edges: off-diagonal entries of A above edge_threshold / true edges)."""
    return (f"Epoch {row['epoch']:3d}/{epochs} | Loss: {row['train_loss']:8.4f} | Val F1: {row['val_f1']:.4f} | "
            f"Val SHD: {float(row['val_shd']):6.1f} | Edges: {row['edge_count']:3d}/{n_true} | "
            f"Grad Clip: {100 * row['grad_clip_ratio']:.1f}% | LR: {row['learning_rate']:.2e}"
            + (" | NEW BEST" if new_best else ""))


def train(cfg, ctx):
    """The task: load or generate the data, train with the health log, return the final metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    data = prepare_data(cfg)
    device = ctx.device
    x_tr, x_val, b_true = data["x_train"].to(device), data["x_val"].to(device), data["b_true"]
    d = x_tr.shape[2]
    torch.manual_seed(seed)
    model = NeuralDAG(d, cfg["latent_dim"], cfg["hidden_dim"]).to(device)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(seed)
    maximise = cfg["early_stop_metric"] == "val_f1"
    stop = {"best": -math.inf if maximise else math.inf, "best_epoch": 0, "bad_epochs": 0, "stopped": False,
            "best_f1": 0.0, "loss_history": []}
    epoch, steps, spent, last = 0, 0, 0.0, None

    state = restore_same_config(ctx, cfg, "neural_dag")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        stop, last = dict(state["early_stop"]), state["last"]
        stop["loss_history"] = list(stop.get("loss_history", []))
        epoch, steps, spent = state["epoch"], state["steps"], state["train_time_s"]

    resumed_at = time.time()
    while epoch < cfg["epochs"] and not stop["stopped"]:
        t0 = time.time()
        model.train()
        sums, norms = run_epoch(model, opt, x_tr, cfg, gen)
        steps += len(norms)
        model.eval()
        val_loss, _ = validate(model, x_val, cfg)
        grads = adjacency_gradients(model, x_val, cfg)
        sched.step(val_loss)
        a = model.adjacency().detach().cpu().double().numpy()
        best_t, acc = threshold_search(a, b_true)
        epoch += 1
        comps = {k: sums[k] for k in ("recon", "sparse", "acyclic", "disen")}
        row = {"epoch": epoch, "train_loss": sums["total"], "train_loss_components": comps,
               **{f"loss_{k}": v for k, v in comps.items()},
               "val_loss": val_loss, "val_f1": acc["f1"], "val_shd": acc["shd"],
               "edge_count": int(((a > cfg["edge_threshold"]) & (np.eye(d) == 0)).sum()),
               "grad_clip_ratio": clip_ratio(norms, cfg["max_norm"]), "max_grad_norm": max(norms),
               "learning_rate": opt.param_groups[0]["lr"], "best_threshold": best_t, **grads}
        stop["best_f1"] = max(stop["best_f1"], acc["f1"])
        score = acc["f1"] if maximise else val_loss
        if (score > stop["best"]) if maximise else (score < stop["best"]):
            stop.update(best=score, best_epoch=epoch, bad_epochs=0)
        else:
            stop["bad_epochs"] += 1
            stop["stopped"] = stop["bad_epochs"] >= cfg["early_stop_patience"]
        stop["loss_history"] = stop["loss_history"] + [sums["total"]]
        problems = health_warnings(row, stop["loss_history"])
        for text in problems:
            print(f"neural_dag health: epoch {epoch}: {text}", file=sys.stderr)
            warnings.warn(text, HealthWarning, stacklevel=2)
        row["epoch_time"] = time.time() - t0
        last = {k: v for k, v in row.items() if k not in ("train_loss_components", "epoch_time")}
        last.update(tpr=acc["tpr"], fdr=acc["fdr"], nnz=acc["nnz"], is_dag=bool(sem_data.is_dag(a > best_t)))
        fixed = count_accuracy(b_true, (a > cfg["edge_threshold"]) & (np.eye(d) == 0))
        last.update(edge_tpr=fixed["tpr"], edge_fdr=fixed["fdr"], edge_f1=fixed["f1"])
        ctx.log(epoch, total_steps=cfg["epochs"], **row, warnings=problems)
        print(console_line(row, cfg["epochs"], int(np.asarray(b_true).sum()), stop["best_epoch"] == epoch), flush=True)
        if ctx.should_checkpoint(epoch):
            ctx.save(epoch, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "generator": gen.get_state(),
                             "early_stop": dict(stop), "last": last, "epoch": epoch, "steps": steps,
                             "train_time_s": spent + time.time() - resumed_at, "config": cfg})

    out = {k: v for k, v in (last or {}).items() if k != "epoch"}
    if last:                                  # the names the structure (NOTEARS) task reports, for one table
        out.update(f1=last["val_f1"], shd=last["val_shd"])
    out.update(best_val_f1=stop["best_f1"],
               best_epoch=stop["best_epoch"], epochs_run=epoch, stopped_early=bool(stop["stopped"]),
               n_true_edges=int(np.asarray(b_true).sum()), steps=steps,
               train_time_s=round(spent + time.time() - resumed_at, 3))
    return out
