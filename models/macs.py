"""Exact multiply-accumulate counts of one forward pass of the models in models/cotformer.py.

    forward_macs(cfg, counts) -> tensor (B,)     MACs of each sequence of the batch
    macs_per_token(cfg, counts) -> float          their sum over the batch / (B x T)

`counts` is what the model's forward returns: T (tokens per sequence), per repeat r the number
a_r of real tokens of each sequence that ran it, and per router the number that it scored. Only
matrix products count (LayerNorm, softmax, GELU, the residual adds and the router's sigmoid are
O(T C) and left out, as MAC counters do); with C = n_embd, V = vocab_size, per sequence:

    one block on n query tokens attending over L keys:   12 C^2 n   (qkv 3C^2, out-proj C^2, MLP 8C^2)
                                                         + 2 C n L  (Q K^T and A V, every key of the
                                                                     block's window, as computed)
    prefix / suffix block:    n = L = T
    mid block at repeat r:    n = a_r,  L = a_1 + ... + a_r   (the accumulated keys of repeats 1..r)
    router r:                 C x (tokens it scored)
    LM head:                  C V T

Attention is counted dense over the window the implementation computes (the causal mask does not
halve it), which is what torch.utils.flop_counter.FlopCounterMode counts: for a fixed-depth model
its total equals 2 x forward_macs (tests/test_cotformer.py checks it). With padding (threshold
routing, rows keeping different numbers of tokens) the count is that of the real tokens only.
"""
import torch


def forward_macs(cfg, counts):
    """MACs per sequence (a tensor over the batch) for the routed token counts of one forward."""
    C, V, T = cfg["n_embd"], cfg["vocab_size"], counts["T"]
    reps = [torch.as_tensor(a, dtype=torch.float64) for a in counts["repeats"]]
    B = counts["B"]
    block = lambda n, L: 12 * C * C * n + 2 * C * n * L
    total = torch.zeros(B, dtype=torch.float64)
    if cfg["model"] == "base":
        total += cfg["n_layer"] * block(T, T)
    else:
        n_mid = cfg["n_layer"] - cfg["n_layer_begin"] - cfg["n_layer_end"]
        total += (cfg["n_layer_begin"] + cfg["n_layer_end"]) * block(T, T)
        keys = torch.zeros(B, dtype=torch.float64)
        for a in reps:
            keys = keys + a.cpu()
            total += n_mid * block(a.cpu(), keys)
        for n in counts.get("routed", []):
            total += C * torch.as_tensor(n, dtype=torch.float64).cpu()
    total += C * V * T
    return total


def macs_per_token(cfg, counts):
    m = forward_macs(cfg, counts)
    return float(m.sum()) / (m.shape[0] * counts["T"])
