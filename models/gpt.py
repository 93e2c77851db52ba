"""A GPT-style decoder, and the pieces the depth-recurrent language models reuse.

    rope(x, pos)                 rotary position embedding of x (B, H, n, hs) at integer positions pos (B, n)
    Attention / MLP / Block      pre-LN block: x + attn(LN(x)); x + mlp(LN(x)); GELU MLP of width 4C; no bias
    KVCache                      the keys/values one block accumulates over the repeats of a forward
    LMBase                       token embedding tied to the LM head, final LN, init, loss, parameter groups
    GPT(cfg)                     LMBase + n_layer blocks (the "base" model of the training task)

Attention. Queries at positions q attend to keys at positions k <= q. Without a cache the n
tokens are positions 0..n-1 (a plain causal mask). With a KVCache the block appends this call's
keys/values (after RoPE at their own positions) to those of earlier calls in the same forward, and a
query at position q sees every cached key with position <= q that is marked valid: in the
CoTFormer, tokens of repeat r attend to the representations of all tokens at or before their
position from repeats 1..r. Padding slots (valid = False) are never keys.

RoPE pairs adjacent channels (2i, 2i+1) with frequency 10000^(-2i/hs). Init (GPT-2): every Linear
and Embedding N(0, 0.02); the residual output projections (attention and MLP `c_proj`) N(0,
0.02/sqrt(2 n_layer)). Weight decay goes to Linear weights only, the tied embedding / LM head,
LayerNorms and routers' biases (none here: bias=False) excluded.

On CUDA attention uses torch's scaled_dot_product_attention; on CPU it is the explicit
softmax(QK^T/sqrt(hs) + mask) V, whose two matmuls torch's FLOP counter sees (it does not count
the CPU SDPA kernel) — the same arithmetic.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope(x, pos):
    """Rotate channel pairs (2i, 2i+1) of x (B, H, n, hs) by angle pos * 10000^(-2i/hs); pos (B, n) or (n,)."""
    hs = x.shape[-1]
    freqs = 10000.0 ** (-torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    ang = pos.to(torch.float32).unsqueeze(-1) * freqs            # (B, n, hs/2)
    cos, sin = ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)     # (B, 1, n, hs/2)
    x2 = x.float().reshape(*x.shape[:-1], hs // 2, 2)
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.reshape(x.shape).to(x.dtype)


class KVCache:
    """Keys, values, positions and validity of every token one block has seen in this forward."""

    def __init__(self):
        self.k, self.v, self.pos, self.valid = [], [], [], []

    def extend(self, k, v, pos, valid):
        self.k.append(k), self.v.append(v), self.pos.append(pos), self.valid.append(valid)
        cat = lambda xs, d: xs[0] if len(xs) == 1 else torch.cat(xs, dim=d)
        return cat(self.k, 2), cat(self.v, 2), cat(self.pos, 1), cat(self.valid, 1)


class Attention(nn.Module):
    def __init__(self, n_embd, n_head, dropout=0.0, bias=False):
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, pos=None, cache=None, valid=None):
        B, n, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = lambda t: t.view(B, n, self.n_head, C // self.n_head).transpose(1, 2)
        q, k, v = shape(q), shape(k), shape(v)
        if pos is None:
            pos = torch.arange(n, device=x.device).unsqueeze(0).expand(B, n)
        q, k = rope(q, pos), rope(k, pos)
        if cache is None:
            mask = None
        else:
            if valid is None:
                valid = torch.ones(B, n, dtype=torch.bool, device=x.device)
            k, v, kpos, kvalid = cache.extend(k, v, pos, valid)
            mask = ((kpos.unsqueeze(1) <= pos.unsqueeze(2)) & kvalid.unsqueeze(1)).unsqueeze(1)   # (B,1,n,L)
        p = self.dropout if self.training else 0.0
        if x.is_cuda:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            if mask is None:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            att = F.dropout(att.masked_fill(~mask, float("-inf")).softmax(-1), p)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, n, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout=0.0, bias=False):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout=0.0, bias=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = Attention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x, pos=None, cache=None, valid=None):
        x = x + self.attn(self.ln_1(x), pos, cache, valid)
        return x + self.mlp(self.ln_2(x))


class LMBase(nn.Module):
    """Token embedding (tied to the LM head), dropout, final LayerNorm; init; loss; parameter groups."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        C = cfg["n_embd"]
        self.wte = nn.Embedding(cfg["vocab_size"], C)
        self.drop = nn.Dropout(cfg["dropout"])
        self.ln_f = nn.LayerNorm(C, bias=cfg["bias"])
        self.lm_head = nn.Linear(C, cfg["vocab_size"], bias=False)
        self.wte.weight = self.lm_head.weight

    def block(self):
        c = self.cfg
        return Block(c["n_embd"], c["n_head"], c["dropout"], c["bias"])

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg["n_layer"]))

    def head(self, x, targets=None):
        """(logits (B, T, V), mean cross-entropy or None) from the last hidden states."""
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def param_groups(self, weight_decay):
        """[Linear weights (decayed), everything else (not)]; the tied LM head counts as the embedding."""
        decay_ids = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)} - {id(self.wte.weight)}
        params = list(self.parameters())          # each tensor once (the tied weight too)
        return [{"params": [p for p in params if id(p) in decay_ids], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0}]


class GPT(LMBase):
    """The plain decoder: embedding, n_layer causal blocks, LN, tied head."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.blocks = nn.ModuleList(self.block() for _ in range(cfg["n_layer"]))
        self.init_weights()

    def forward(self, idx, targets=None, **_):
        x = self.drop(self.wte(idx))
        for b in self.blocks:
            x = b(x)
        logits, loss = self.head(x, targets)
        B, T = idx.shape
        counts = {"B": B, "T": T, "repeats": []}
        return {"logits": logits, "loss": loss, "counts": counts,
                "depth": torch.full((B, T), len(self.blocks), device=idx.device)}
