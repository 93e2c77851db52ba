"""Time-series structural equation models with a known DAG, and a reader for a user's own arrays.

Shared by the `neural_dag` task and the `structure` (NOTEARS) task (with its `data: sem`), so both
read the same data for the same config keys: seed, n_nodes, edge_prob, n_samples, n_timesteps,
sem_type, noise_type, noise_scale, ar_coef (or data_file / graph_file).

Generated data (`generate`; everything from numpy's default_rng(seed), so the seed fixes the graph,
the weights and every sample). The graph is drawn exactly as the structure task draws it: a random
order of the d = n_nodes variables; each pair (i before j in that order) is an edge i -> j with
probability edge_prob; each edge weight is uniform in [0.5, 2] with a random sign (W_true, d x d).
Then n_samples independent series of n_timesteps steps, x_t in R^d, t = 0..T-1, x_{-1} = 0:

    x_{t,j} = ar_coef * x_{t-1,j} + sum_i W_true[i, j] * g(x_{t,i}) + e_{t,j}     (parents first)

    sem_type   linear:     g(u) = u
               nonlinear:  g(u) = tanh(u) + 0.5 cos(u)      (an additive nonlinear SEM)
    noise_type gaussian:   e ~ N(0, s^2)
               laplace:    e ~ Laplace(0, s / sqrt(2))      (std s)
               uniform:    e ~ U(-s sqrt(3), s sqrt(3))      (std s)
    with s = noise_scale. The true graph is the contemporaneous DAG W_true != 0; the lag acts only on
    a variable's own past (no lagged cross edges), so it adds no edge to the graph.

The result is X, float64 (n_samples, n_timesteps, n_nodes), and the binary graph B (n_nodes,
n_nodes), B[i, j] = 1 for an edge i -> j, plus W_true.

A user's own data (`load_arrays`; nothing is generated): `data_file` is either
  - an .npz holding `X` (or `data`), shaped (samples, time, variables) or (samples, variables)
    (read as time = 1), and `B` (or `graph`, `adjacency`, `W`), the true graph (variables,
    variables), nonzero [i, j] meaning i -> j; or
  - an .npy of the data alone, with `graph_file` an .npy of the graph.
Both are read with allow_pickle=False; the data must be finite, the graph square, matching the
number of variables, with an empty diagonal.
"""
from pathlib import Path

import numpy as np

SEM_TYPES = ["linear", "nonlinear"]
NOISE_TYPES = ["gaussian", "laplace", "uniform"]
DATA_KEYS = ("X", "data")
GRAPH_KEYS = ("B", "graph", "adjacency", "W")


def random_dag(rng, d, edge_prob):
    """Weighted DAG W (d, d): a random order, Erdos-Renyi edges along it, weights +-U[0.5, 2]."""
    order = rng.permutation(d)
    upper = np.triu(rng.random((d, d)) < edge_prob, k=1)
    weights = rng.uniform(0.5, 2.0, (d, d)) * rng.choice([-1.0, 1.0], (d, d))
    w = np.zeros((d, d))
    w[np.ix_(order, order)] = upper * weights
    return w, order


def _noise(rng, kind, scale, shape):
    if kind == "gaussian":
        return rng.normal(0.0, scale, shape)
    if kind == "laplace":
        return rng.laplace(0.0, scale / np.sqrt(2.0), shape)
    if kind == "uniform":
        half = scale * np.sqrt(3.0)
        return rng.uniform(-half, half, shape)
    raise ValueError(f"sem_data: noise_type={kind!r} is not one of {NOISE_TYPES}")


def _g(kind, u):
    if kind == "linear":
        return u
    if kind == "nonlinear":
        return np.tanh(u) + 0.5 * np.cos(u)
    raise ValueError(f"sem_data: sem_type={kind!r} is not one of {SEM_TYPES}")


def generate(cfg):
    """(X (n_samples, n_timesteps, n_nodes) float64, B (d, d) 0/1 int, W_true (d, d)) for cfg's keys."""
    d, n, T = cfg["n_nodes"], cfg["n_samples"], cfg["n_timesteps"]
    rng = np.random.default_rng(cfg["seed"])
    w, order = random_dag(rng, d, cfg["edge_prob"])
    noise = _noise(rng, cfg["noise_type"], cfg["noise_scale"], (n, T, d))
    x = np.zeros((n, T, d))
    prev = np.zeros((n, d))
    for t in range(T):
        cur = cfg["ar_coef"] * prev + noise[:, t]
        for j in order:                                      # parents come first in `order`
            parents = np.flatnonzero(w[:, j])
            if len(parents):
                cur[:, j] += _g(cfg["sem_type"], cur[:, parents]) @ w[parents, j]
        x[:, t] = cur
        prev = cur
    return x, (w != 0).astype(np.int64), w


def load_arrays(data_file, graph_file=""):
    """(X (samples, time, variables) float64, B (d, d) 0/1 int) from a user's .npz / .npy files."""
    path = Path(data_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"sem_data: data_file {str(path)!r} does not exist")
    graph = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            x_key = next((k for k in DATA_KEYS if k in names), None)
            if x_key is None:
                raise ValueError(f"sem_data: {path.name} holds {names}; the data must be under one of {list(DATA_KEYS)}")
            x = z[x_key]
            g_key = next((k for k in GRAPH_KEYS if k in names), None)
            if g_key is not None:
                graph = z[g_key]
    else:
        x = np.load(path, allow_pickle=False)
    if graph_file:
        gpath = Path(graph_file).expanduser()
        if not gpath.is_file():
            raise FileNotFoundError(f"sem_data: graph_file {str(gpath)!r} does not exist")
        graph = np.load(gpath, allow_pickle=False)
    if graph is None:
        raise ValueError(f"sem_data: no true graph for {path.name}: put it in the .npz under one of "
                         f"{list(GRAPH_KEYS)} or name an .npy with graph_file")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"sem_data: the data must be (samples, time, variables), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("sem_data: the data hold NaN or infinite values")
    graph = np.asarray(graph)
    d = x.shape[2]
    if graph.shape != (d, d):
        raise ValueError(f"sem_data: the graph must be ({d}, {d}) for {d} variables, got {graph.shape}")
    b = (graph != 0).astype(np.int64)
    if np.diag(b).any():
        raise ValueError("sem_data: the true graph has self-loops (nonzero diagonal)")
    return x, b


def load(cfg):
    """(X (samples, time, variables), B (d, d)) for a task config: the file, or the generated SEM."""
    if cfg.get("data") == "file" or cfg.get("data_file"):
        if not cfg.get("data_file"):
            raise ValueError("sem_data: data: file needs data_file (an .npz, or an .npy with graph_file)")
        return load_arrays(cfg["data_file"], cfg.get("graph_file", ""))
    x, b, _ = generate(cfg)
    return x, b


def standardise(x_fit, *others):
    """Zero mean, unit variance per variable over (samples, time), fitted on x_fit, applied to all.

    mean = x_fit.mean((0, 1)), std = x_fit.std((0, 1)) + 1e-8; returns (x_fit', *others', mean, std).
    """
    mean = x_fit.mean(axis=(0, 1), keepdims=True)
    std = x_fit.std(axis=(0, 1), keepdims=True) + 1e-8
    return ((x_fit - mean) / std, *[(o - mean) / std for o in others], mean, std)


def is_dag(b):
    """True when the directed graph with adjacency b (nonzero = edge i -> j) has no cycle."""
    b = np.asarray(b) != 0
    indeg, left = b.sum(axis=0), set(range(len(b)))
    ready = [j for j in left if indeg[j] == 0]
    while ready:
        i = ready.pop()
        left.discard(i)
        for j in np.flatnonzero(b[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return not left


def count_accuracy(b_true, b_est):
    """{shd, tpr, fdr, nnz, f1} of a binary estimate against the true graph (NOTEARS' shd/tpr/fdr)."""
    b_true, b_est = np.asarray(b_true) != 0, np.asarray(b_est) != 0
    pred, cond, cond_rev = (set(np.flatnonzero(m)) for m in (b_est, b_true, b_true.T))
    true_pos = pred & cond
    extra = pred - cond
    reverse = extra & cond_rev
    und = lambda b: set(np.flatnonzero(np.tril(b | b.T)))
    shd = len(und(b_est) - und(b_true)) + len(und(b_true) - und(b_est)) + len(reverse)
    tp = len(true_pos)
    f1 = 2 * tp / (len(pred) + len(cond)) if (pred or cond) else 1.0
    return {"shd": shd, "tpr": tp / max(len(cond), 1), "fdr": len(extra) / max(len(pred), 1),
            "nnz": len(pred), "f1": f1}
