"""Building blocks shared by the MLP-style workloads: the pre-norm residual MLP block, the pieces
that turn backprop into feedback alignment, and the cosine learning-rate schedule.

    Block(d, mlp_ratio)              h -> h + W2 gelu(W1 LN(h) + b1) + b2
    feedback_linear(x, W, b, B)      forward x W^T + b; backward sends g B to x instead of g W
    normalise_grad(h)                identity forward; backward g -> g / (rms(g) * batch)
    rms_normalise(t)                 t / rms(t), rms over every element of t
    cosine_lr(step, total, base_lr)  base_lr * (1 + cos(pi * step / total)) / 2
    restore_same_config(ctx, cfg, task)   ctx.restore(), refusing a checkpoint saved under another config
    overlay(task, config, choices, cfg)   CONFIG overlaid with cfg; unknown keys and values off CHOICES refused

Nothing here keeps state of its own: feedback matrices are plain tensors the caller owns (and
checkpoints), and the learning rate is a function of the step, so there is no scheduler to save.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_TINY = 1e-30          # keeps rsqrt finite for an all-zero signal; far below any real mean square


class _FeedbackLinear(torch.autograd.Function):
    """y = x W^T + b, whose backward uses a fixed matrix B (shaped like W) where backprop uses W."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, feedback = ctx.saved_tensors
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = (g @ feedback) if ctx.needs_input_grad[0] else None
        gw = (g2.t() @ x2) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def feedback_linear(x, weight, bias, feedback):
    """F.linear(x, weight, bias) whose gradient to x is g @ feedback (FA) rather than g @ weight (BP).

    The weight's own gradient, g^T x, is the usual one: it needs no weight transport.
    """
    return _FeedbackLinear.apply(x, weight, bias, feedback)


def rms_normalise(t):
    """t divided by its root mean square over all elements (a single scalar for the whole batch).

    One scalar, not one per sample: samples the model already gets right keep their small signal.
    """
    return t * torch.rsqrt(t.pow(2).mean() + _TINY)


class _NormaliseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):
        return rms_normalise(g) / g.shape[0]


def normalise_grad(h):
    """h unchanged; in the backward pass the gradient g arriving at h becomes g / (rms(g) * batch).

    Placed at the output of a block, it makes that block's parameter gradient the gradient of the
    local surrogate loss (1/B) sum_b <h_b, sg(g_b / rms(g))>.
    """
    return _NormaliseGrad.apply(h)


class Block(nn.Module):
    """Pre-norm residual MLP block: h + W2 gelu(W1 LN(h) + b1) + b2, PyTorch's default init.

    `forward(h, feedback)`: with feedback={"fc1": B1, "fc2": B2} the two linear layers send their
    input gradient through B1, B2 (feedback alignment); LayerNorm, GELU and the residual path keep
    their exact backward, as they carry no learned matrix.
    """

    def __init__(self, d, mlp_ratio=4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)

    def branch(self, h, feedback=None):
        """The residual branch f(h), so that the block computes h + f(h)."""
        u = self.norm(h)
        if feedback is None:
            return self.fc2(F.gelu(self.fc1(u)))
        u = F.gelu(feedback_linear(u, self.fc1.weight, self.fc1.bias, feedback["fc1"]))
        return feedback_linear(u, self.fc2.weight, self.fc2.bias, feedback["fc2"])

    def forward(self, h, feedback=None):
        return h + self.branch(h, feedback)


def cosine_lr(step, total_steps, base_lr, final_lr=0.0):
    """The learning rate for 0-based `step` of `total_steps`: cosine from base_lr down to final_lr."""
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def restore_same_config(ctx, cfg, task):
    """ctx.restore(): the state last saved (None on a fresh run), refused when it was saved with
    another config. Every task's state carries the `config` it was trained with. A search trial's
    budget key (ctx.budget_key) may grow: promotion trains the same run further."""
    state = ctx.restore()
    if state is not None:
        raised = getattr(ctx, "budget_key", None)
        saved = state["config"]
        # a key the checkpoint does not know came after it, with a default the run keeps (a run that sets
        # it otherwise has another id, so another run dir)
        changed = sorted(k for k in cfg if k in saved and saved[k] != cfg[k]
                         and not (k == raised and cfg[k] >= saved[k]))
        if changed:
            raise ValueError(f"{task}: the checkpoint was saved with other values of {changed}; "
                             f"a run's config cannot change once it has checkpoints")
    return state


def overlay(task, config, choices, cfg):
    """`config` (a task's CONFIG) overlaid with `cfg`; an unknown key or a value outside `choices`
    is a ValueError naming the task, the key and what it accepts."""
    unknown = sorted(set(cfg) - set(config))
    if unknown:
        raise ValueError(f"{task}: unknown config keys {unknown}; known: {sorted(config)}")
    cfg = {**config, **cfg}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise ValueError(f"{task}: {key}={cfg[key]!r} is not one of {allowed}")
    return cfg
