"""NOTEARS linear structure learning (Zheng et al. 2018): recover a DAG from observational data.

Question: how do the sparsity weight and the starting acyclicity penalty trade missed edges
against false ones (SHD, TPR, FDR) when a DAG is learned by continuous optimisation?

    python main.py run sweeps/lambda_grid.yaml --only lambda_sparse=0.001,lambda_acyclic=1e-05,seed=1

Data, `data: iid` (the default; all from numpy's default_rng(seed), so a seed fixes graph, weights
and samples). A random order of the n_nodes variables; each of the d(d-1)/2 pairs (i before j in
that order) is an edge i -> j with probability edge_prob (Erdos-Renyi); each edge weight is
uniform in [0.5, 2] with a random sign. n_samples rows of the linear Gaussian SEM  X_j = sum_i W_true[i, j] X_i + z_j,
z_j ~ N(0, noise_scale^2), drawn in the topological order; X is then centred per column.
`data: sem`: the time-series SEM of models/sem_data.py (the neural_dag task's data: the same keys
seed, n_nodes, edge_prob, n_samples, n_timesteps, sem_type, noise_type, noise_scale, ar_coef give
the same graph and series), its (samples, time) flattened to n_samples * n_timesteps rows and
standardised per column over all of them (zero mean, unit variance, as neural_dag standardises).
`data: file`: a user's arrays, read and standardised the same way (data_file, graph_file; format in
models/sem_data.py). The graph's weights are unknown there: only its edges are scored.

Objective, for W (d x d, zero diagonal) written as W = W+ - W-, with W+, W- >= 0:
    F(W) = 0.5/n ||X - X W||_F^2 + lambda_sparse * sum(W+ + W-) + (rho/2) h(W)^2 + alpha h(W)
    h(W) = tr(exp(W o W)) - d        (torch.linalg.matrix_exp; h = 0 exactly when W is a DAG)
lambda_acyclic is rho's starting value (NOTEARS starts at 1); alpha starts at 0. The fit term is
computed from the covariance S = X^T X / n as 0.5 tr((I - W)^T S (I - W)) (the same number), and
F's gradient analytically in torch: -S (I - W) + (rho h + alpha) 2 W o exp(W o W)^T, +-lambda_sparse.

Augmented Lagrangian with NOTEARS' schedule. One *step* = one inner solve: L-BFGS-B (scipy, as in
NOTEARS; bounds W+-, >= 0, diagonal fixed at 0, so the L1 term is linear and exact zeros are
reached) of at most inner_steps iterations, started from the last accepted W (zeros at first),
with the objective and gradient above computed by torch. It gives W_new, h_new; then
    if h_new > h_progress * h_accepted and rho < rho_max:  rho *= rho_mult, W_new is dropped
    else:  accept W_new; alpha += rho * h_new; stop if h_new <= h_tol or rho >= rho_max
(h_accepted starts at infinity: the first solve is always accepted), for at most max_outer steps.
The estimate is the accepted W with entries |W_ij| < w_threshold set to 0.

Metrics (NOTEARS' count_accuracy, edges of the thresholded estimate vs the true DAG): shd = extra +
missing + reversed edges (a reversed edge counts once); tpr = correctly oriented true edges / true
edges; fdr = (reversed + edges absent in either direction) / predicted edges; nnz = predicted
edges; f1 = 2 TP / (predicted + true edges) over directed edges; h_final = h of the accepted W
before thresholding, h_thresholded after; is_dag; converged (h_final <= h_tol or rho reached
rho_max); steps (inner solves) and lbfgs_iters (their iterations).

Logged: one line per step with h, rho and alpha used, lbfgs_iters, accepted, the nnz and shd of
that solve's thresholded W, and total_steps = max_outer (an upper bound: runs stop when h <= h_tol,
typically after 25-35 steps). Checkpoint, after any step: the accepted W, rho, alpha, h_accepted,
the step and iteration counts. An inner solve is not interrupted: it starts afresh from the
accepted W, so nothing else (no optimizer memory) carries from one step to the next. The data are
regenerated from the seed. A resumed run is bit-identical to an uninterrupted one on CPU.
"""
import math
import random
import time

import numpy as np
import scipy.optimize
import threadpoolctl
import torch

from models import sem_data
from models.blocks import overlay, restore_same_config

CONFIG = {
    "seed": 0,
    "n_nodes": 10,
    "edge_prob": 0.3,             # Erdos-Renyi: each pair (in a random order) is an edge with this probability
    "n_samples": 1000,
    "noise_scale": 1.0,           # std of the Gaussian noise of every variable (equal variances)
    "lambda_sparse": 0.01,        # L1 weight on W
    "lambda_acyclic": 1.0,        # rho's starting value in the augmented Lagrangian (rho/2) h^2 + alpha h
    "max_outer": 100,             # rounds (inner solves) at most
    "inner_steps": 1000,          # L-BFGS-B iterations at most per round
    "rho_mult": 10.0,             # rho's growth when h did not fall enough
    "rho_max": 1e16,
    "h_progress": 0.25,           # h must fall below h_progress * (h accepted before) to keep rho
    "h_tol": 1e-8,
    "w_threshold": 0.3,
    # where the data come from; the keys below only matter for data: sem / file
    "data": "iid",                # iid: the SEM above | sem: models/sem_data.py's time series | file
    "n_timesteps": 10,
    "sem_type": "linear",         # linear | nonlinear
    "noise_type": "gaussian",     # gaussian | laplace | uniform
    "ar_coef": 0.5,
    "data_file": "",
    "graph_file": "",
}

CHOICES = {"data": ["iid", "sem", "file"], "sem_type": ["linear", "nonlinear"], "noise_type": ["gaussian", "laplace", "uniform"]}


# ---------------------------------------------------------------- data

def simulate(cfg):
    """(true weighted adjacency W_true (d, d) float64, centred data X (n, d) float64) for cfg['seed']."""
    d, n = cfg["n_nodes"], cfg["n_samples"]
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(d)
    upper = np.triu(rng.random((d, d)) < cfg["edge_prob"], k=1)       # i -> j for i < j in `order`
    weights = rng.uniform(0.5, 2.0, (d, d)) * rng.choice([-1.0, 1.0], (d, d))
    w_sorted = upper * weights
    w_true = np.zeros((d, d))
    w_true[np.ix_(order, order)] = w_sorted
    x = np.zeros((n, d))
    noise = rng.normal(0.0, cfg["noise_scale"], (n, d))
    for j in order:                                                   # parents come first in `order`
        x[:, j] = x @ w_true[:, j] + noise[:, j]
    return w_true, x - x.mean(axis=0, keepdims=True)


def load_data(cfg):
    """(true graph (d, d), data X (rows, d) float64) for cfg['data']: iid (simulate), sem or file."""
    if cfg["data"] == "iid":
        return simulate(cfg)
    x, b = sem_data.load(cfg)
    x = x.reshape(-1, x.shape[-1])
    x = (x - x.mean(axis=0, keepdims=True)) / (x.std(axis=0, keepdims=True) + 1e-8)
    return b.astype(np.float64), x


count_accuracy = sem_data.count_accuracy      # NOTEARS' shd / tpr / fdr / nnz (and f1): one copy
is_dag = sem_data.is_dag          # one copy: True when the graph (nonzero = edge i -> j) has no cycle


# ---------------------------------------------------------------- objective

def acyclicity(w):
    """h(W) = tr(exp(W o W)) - d: zero exactly when W is the adjacency of a DAG."""
    return torch.linalg.matrix_exp(w * w).diagonal().sum() - w.shape[0]


def objective(w, cov, rho, alpha):
    """(F(W) without the L1 term, its gradient (d, d), h(W)), all for W = W+ - W- as one tensor.

    The gradient is analytic: d fit/dW = -S (I - W),  dh/dW = 2 W o exp(W o W)^T.
    """
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    r = eye - w
    sr = cov @ r
    fit = 0.5 * (r * sr).sum()                           # 0.5/n ||X - XW||^2 = 0.5 tr((I-W)^T S (I-W))
    e = torch.linalg.matrix_exp(w * w)
    h = e.diagonal().sum() - d
    grad = -sr + (rho * h + alpha) * 2 * w * e.T
    return fit + 0.5 * rho * h * h + alpha * h, grad, h


def solve_inner(w0, cov, cfg, rho, alpha):
    """(W, h(W), L-BFGS-B iterations): argmin of F over W+, W- >= 0 (zero diagonal), from W0.

    As NOTEARS: the variables are [W+, W-] flattened, with bounds (0, None) off the diagonal and
    (0, 0) on it, so the L1 term is linear, lambda * sum(W+ + W-), and L-BFGS-B handles it exactly.
    """
    d = cov.shape[0]
    lam = cfg["lambda_sparse"]
    bounds = [(0, 0) if i == j else (0, None) for _ in range(2) for i in range(d) for j in range(d)]
    x0 = np.concatenate([np.clip(w0, 0, None).ravel(), np.clip(-w0, 0, None).ravel()])

    def fun(v):
        w = torch.as_tensor(v[:d * d] - v[d * d:], dtype=cov.dtype, device=cov.device).reshape(d, d)
        value, grad, _ = objective(w, cov, rho, alpha)
        g = grad.cpu().numpy().ravel()
        return value.item() + lam * v.sum(), np.concatenate([g + lam, -g + lam])

    # one BLAS thread: on a 200-variable problem OpenBLAS's threads cost 50x more than they save
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        res = scipy.optimize.minimize(fun, x0, method="L-BFGS-B", jac=True, bounds=bounds,
                                      options={"maxiter": cfg["inner_steps"]})
    w = (res.x[:d * d] - res.x[d * d:]).reshape(d, d)
    return w, acyclicity(torch.as_tensor(w)).item(), int(res.nit)


def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    cfg = overlay("structure", CONFIG, CHOICES, cfg)
    if cfg["data"] == "file" and not cfg["data_file"]:
        raise ValueError("structure: data: file needs data_file")
    for key in ("n_nodes", "n_samples", "n_timesteps", "max_outer", "inner_steps"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"structure: {key} must be an integer >= 1, got {cfg[key]!r}")
    if not (0 <= cfg["edge_prob"] <= 1):
        raise ValueError(f"structure: edge_prob must lie in [0, 1], got {cfg['edge_prob']!r}")
    for key in ("lambda_sparse", "w_threshold", "h_tol"):
        if not cfg[key] >= 0:
            raise ValueError(f"structure: {key} must be >= 0, got {cfg[key]!r}")
    for key in ("lambda_acyclic", "noise_scale"):
        if not cfg[key] > 0:
            raise ValueError(f"structure: {key} must be > 0, got {cfg[key]!r}")
    if not (cfg["rho_mult"] > 1 and 0 < cfg["h_progress"] < 1):
        raise ValueError("structure: rho_mult must be > 1 and h_progress in (0, 1)")
    return cfg


# ---------------------------------------------------------------- the task

def train(cfg, ctx):
    """The task: simulate the SEM from the seed, run NOTEARS, return the recovery metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    w_true, x = load_data(cfg)
    cov = torch.as_tensor(x.T @ x / len(x), dtype=torch.float64, device=ctx.device)
    d, total = x.shape[1], cfg["max_outer"]

    w_acc = np.zeros((d, d))
    rho, alpha, h_acc = float(cfg["lambda_acyclic"]), 0.0, math.inf
    step, iters, spent, done = 0, 0, 0.0, False
    state = restore_same_config(ctx, cfg, "structure")
    if state is not None:
        w_acc = state["w_accepted"].numpy()
        rho, alpha, h_acc = state["rho"], state["alpha"], state["h_accepted"]
        step, iters, spent, done = state["step"], state["lbfgs_iters"], state["train_time_s"], state["done"]

    resumed_at = time.time()
    while not done and step < total:
        w_new, h_new, nit = solve_inner(w_acc, cov, cfg, rho, alpha)
        step, iters = step + 1, iters + nit
        row = {"total_steps": total, "h": h_new, "rho": rho, "alpha": alpha, "lbfgs_iters": nit}
        if h_new > cfg["h_progress"] * h_acc and rho < cfg["rho_max"]:
            rho *= cfg["rho_mult"]                   # not enough progress: solve again, from w_acc, with more rho
            row["accepted"] = False
        else:
            w_acc, h_acc = w_new, h_new
            alpha += rho * h_new
            done = h_new <= cfg["h_tol"] or rho >= cfg["rho_max"]
            row["accepted"] = True
        acc = count_accuracy(w_true, np.abs(w_new) >= cfg["w_threshold"])
        ctx.log(step, **row, nnz=acc["nnz"], shd=acc["shd"])
        if ctx.should_checkpoint(step):
            ctx.save(step, {"w_accepted": torch.from_numpy(w_acc.copy()), "rho": rho, "alpha": alpha,
                            "h_accepted": h_acc, "step": step, "lbfgs_iters": iters, "done": done,
                            "train_time_s": spent + time.time() - resumed_at, "config": cfg})

    b_est = np.abs(w_acc) >= cfg["w_threshold"]
    acc = count_accuracy(w_true, b_est)
    return {**acc, "h_final": h_acc if step else 0.0,
            "h_thresholded": acyclicity(torch.as_tensor(w_acc * b_est)).item(), "is_dag": bool(is_dag(b_est)),
            "converged": bool(done), "n_true_edges": int((w_true != 0).sum()), "rho_final": rho,
            "steps": step, "lbfgs_iters": iters, "train_time_s": round(spent + time.time() - resumed_at, 3)}
