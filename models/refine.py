"""Per-step loss weighting and differentiable halting for models that refine a state step after step.

Not a task (no CONFIG): the shared arithmetic of the two refinement studies, used by models/poh.py
(a pointer-over-heads dependency parser whose inner loop runs max_inner_iters iterations) and by
models/trm.py (a tiny recursive language model supervised after each of its H_cycles). Every
function works on plain floats/lists or on torch tensors, and is pinned by tests/test_refine.py.

Deep-supervision schedules: `loss_weights(schedule, T, weight)` gives the RAW weights w_1..w_T of
the T per-step losses; the loss is always the normalised sum  sum_i w_i L_i / sum_i w_i
(`weighted_loss`). The six schedules, i = 0..T-1:

    parser study (weights rise with the step; `weight` is not used):
      linear             w_i = linspace(0.3, 1.0, T)[i]     T=3: [0.3, 0.65, 1.0]  (the default there)
      exp                w_i = 2^i                          T=3: [1, 2, 4]
      uniform            w_i = 1                            (ablation)
    recursive-LM study (the last step always weighs 1.0; `weight` is deep_supervision_weight):
      constant           w_i = weight (i < T-1)             T=3, 0.5: [0.5, 0.5, 1.0]
      linear_decay       w_i = weight (i+1)/T (i < T-1)     T=3, 0.5: [0.167, 0.333, 1.0]
      exponential_decay  w_i = weight 2^i / 2^(T-1) (i<T-1) T=4, 0.5: [0.0625, 0.125, 0.25, 1.0]

The "decay" schedules are named for the share of the earlier steps: their weights INCREASE with
the step, exactly as written above. The parser study also states its 3-step loss as
0.3 L1 + 0.5 L2 + 1.0 L3, which is not linspace(0.3, 1.0, 3) = [0.3, 0.65, 1.0]; both are
supported: `linear` is the linspace, and explicit weights (models/poh.py's `ds_weights`, e.g.
[0.3, 0.5, 1.0]) go through `weighted_loss` unchanged.

Curriculum (`curriculum_weight(step, start, end, target)`): 0 up to `start`, then linear to `target`
at `end`, `target` after. With start 1000, end 10000, target 0.7: steps 0, 1000, 5500, 10000, 15000
give 0, 0, 0.35, 0.7, 0.7. The weight feeds the schedules' `weight`, so at 0 only the last step
is supervised.

Differentiable halting (no break: every step is computed and enters the loss). With halting
logits h_1..h_T (last axis) and sigma = sigmoid(h):

    p_t = sigma_t prod_{s<t} (1 - sigma_s)       t < T
    p_T = prod_{s<T} (1 - sigma_s)               the mass not yet spent halts at the last step
                                                 (= sigma_T prod_{s<T}(1 - sigma_s) + the remainder)

so sum_t p_t = 1 exactly and h_T does not matter: sigma = [.3, .5, .9] gives p = [.3, .35, .35].
    expected_loss(p, L) = sum_t p_t L_t          the loss, alongside lambda * ponder_cost(p)
    ponder_cost(p)      = sum_t t p_t            the expected number of steps (1-based), in [1, T]
    act_ds_weights(p, w) = p_t w_t / sum_s p_s w_s   halting and deep supervision together: the
                                                 halting distribution reweighted by the schedule
Graves' ACT (2016; halt once the cumulative probability reaches 1 - eps, remainder R, ponder N + R)
is kept as the named alternative `graves_act`.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "exp", "uniform", "constant", "linear_decay", "exponential_decay")
PARSER_SCHEDULES = ("linear", "exp", "uniform")
LM_SCHEDULES = ("constant", "linear_decay", "exponential_decay")


def loss_weights(schedule: str, n_steps: int, weight: float = 0.5) -> list[float]:
    """The raw (unnormalised) weights of the n_steps per-step losses under `schedule` (module docstring)."""
    T = int(n_steps)
    if T < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    if schedule == "linear":
        return [0.3] if T == 1 else [0.3 + 0.7 * i / (T - 1) for i in range(T)]
    if schedule == "exp":
        return [2.0 ** i for i in range(T)]
    if schedule == "uniform":
        return [1.0] * T
    if schedule == "constant":
        early = [float(weight)] * (T - 1)
    elif schedule == "linear_decay":
        early = [weight * (i + 1) / T for i in range(T - 1)]
    elif schedule == "exponential_decay":
        early = [weight * 2.0 ** i / 2.0 ** (T - 1) for i in range(T - 1)]
    else:
        raise ValueError(f"unknown deep-supervision schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return early + [1.0]


def normalise(weights):
    """w / sum(w) (a list, or a tensor along its last axis)."""
    if isinstance(weights, torch.Tensor):
        return weights / weights.sum(dim=-1, keepdim=True)
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {list(weights)}")
    return [w / total for w in weights]


def weighted_loss(losses, weights):
    """sum_i w_i L_i / sum_i w_i over the per-step losses (floats or scalar tensors)."""
    if len(losses) != len(weights):
        raise ValueError(f"{len(losses)} losses but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {list(weights)}")
    out = 0.0
    for loss, w in zip(losses, weights):
        out = out + (w / total) * loss
    return out


def curriculum_weight(step: int, start: int, end: int, target: float) -> float:
    """0 until `start`, linear to `target` at `end`, then `target` (start == end: a jump at end)."""
    if step <= start:
        return 0.0 if step < end else float(target)
    if step >= end:
        return float(target)
    return float(target) * (step - start) / (end - start)


def halting_distribution(halt_logits: torch.Tensor) -> torch.Tensor:
    """p over the last axis (the steps) from halting logits; sums to 1 (module docstring)."""
    return halting_from_probs(torch.sigmoid(halt_logits))


def halting_from_probs(sigma: torch.Tensor) -> torch.Tensor:
    """halting_distribution for given halting probabilities sigma = sigmoid(h) (last axis = steps)."""
    sigma = torch.as_tensor(sigma)
    T = sigma.shape[-1]
    keep = torch.cumprod(1.0 - sigma, dim=-1)                       # prod_{s<=t} (1 - sigma_s)
    before = torch.cat([torch.ones_like(sigma[..., :1]), keep[..., :-1]], dim=-1)   # prod_{s<t}
    p = sigma * before
    if T == 1:
        return torch.ones_like(sigma)
    return torch.cat([p[..., :-1], before[..., -1:]], dim=-1)


def expected_loss(p: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """sum_t p_t L_t over the last axis."""
    return (p * losses).sum(dim=-1)


def ponder_cost(p: torch.Tensor) -> torch.Tensor:
    """sum_t t p_t over the last axis (t = 1..T): the expected number of steps."""
    steps = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype, device=p.device)
    return (p * steps).sum(dim=-1)


def act_ds_weights(p: torch.Tensor, weights) -> torch.Tensor:
    """p_t w_t / sum_s p_s w_s over the last axis: halting reweighted by a deep-supervision schedule."""
    w = torch.as_tensor(weights, dtype=p.dtype, device=p.device)
    pw = p * w
    return pw / pw.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def halting_step(sigma: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Inference: the first step t (1-based) with sigma_t > threshold, else T (int64, last axis reduced)."""
    T = sigma.shape[-1]
    over = sigma > threshold
    over[..., -1] = True
    return over.to(torch.int64).argmax(dim=-1) + 1


def graves_act(p: torch.Tensor, eps: float = 0.01):
    """Graves' ACT from per-step halting probabilities p (..., T): (weights, N, R).

    N is the first step whose cumulative probability reaches 1 - eps (T if none); the weights are p_t
    before N, the remainder R = 1 - sum_{t<N} p_t at N and 0 after; the ponder cost is N + R.
    """
    T = p.shape[-1]
    reached = p.cumsum(dim=-1) >= 1.0 - eps
    reached[..., -1] = True
    n = reached.to(torch.int64).argmax(dim=-1)
    steps = torch.arange(T, device=p.device)
    before = steps < n[..., None]
    remainder = 1.0 - (p * before).sum(dim=-1)
    weights = p * before + remainder[..., None] * (steps == n[..., None])
    return weights, n + 1, remainder


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Categorical entropy (nats) of softmax(logits) over the last axis."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def max_entropy(n: int) -> float:
    return math.log(n)
