"""CoTFormer, LN-CoTFormer and the Adaptive LN-CoTFormer (mixture-of-repeats router).

    build_model(cfg)     "base" (models/gpt.py) | "cotformer" | "ln_cotformer" | "adm" from the training task's config
    CoTFormer(cfg)       fixed depth; forward(idx, targets, depth=None)
    AdaptiveCoTFormer    forward(idx, targets, depth=None, length_factors=None, threshold=None)

Layers. n_layer blocks: the first n_layer_begin run once (prefix), the last n_layer_end run once
(suffix), the n_layer - n_layer_begin - n_layer_end in between (the mid stack) run n_repeat times.
Cross-repeat KV accumulation: each mid block keeps the keys/values it computed at every repeat of
this forward; a token of repeat r at position t attends to the representations of positions <= t
from repeats 1..r (its own earlier repeats included), so the sequence the mid stack attends over
grows to n_repeat x T. Prefix and suffix blocks are plain causal attention over T tokens.
Effective depth: n_layer_begin + n_mid x n_repeat + n_layer_end.

Variants. "cotformer": the vanilla CoTFormer, the repeats chained directly (no ln_mid, no depth
embedding whatever the flags say). "ln_cotformer": after every repeat (the last included) the
LayerNorm ln_mid (`disable_ln_mid: true` makes it the identity); before repeat r the depth
embedding of index n_repeat - r is added: `linear_learned` adds (n_repeat - r) * e with one learned
vector e, `learned` adds a learned vector per index, None adds nothing. "adm" is the LN-CoTFormer
with a router after every repeat but the last.

Adaptive model (mixture of repeats). Router r (r = 1..n_repeat-1, a bias-free Linear C -> 1) reads
the output of repeat r of the tokens still active and gives w = sigmoid(logit). The tokens it lets
continue run repeat r+1 and their output is mixed, x <- (1 - w) x_in + w f(x_in), with x_in the
token's representation before the repeat; a token that stops keeps its last representation, and
each token's final representation (the last repeat it reached) goes through the suffix. Which
tokens continue:
  - training: length factors f_1 >= ... >= f_{R-1} drawn per forward (`depth_random_method`;
    `uniform`: sort(min(U(0,1) x 1.05, 1)) descending, as the authors' code does) or fixed
    (`training_length_factor`); router r keeps the top int(f_r / f_{r-1} x n_active) tokens of
    each sequence by router weight (the capacity). Top-k over a sequence looks at later tokens'
    router weights: training-time routing is not causal (as in the authors' model).
  - inference, `length_factors`: the same top-k with fixed factors; `depth=d` is the factors
    (1,..,1,0,..,0) with d-1 ones (every token runs exactly d repeats, still mixed by w).
  - inference, `threshold` (the cascaded rule): per token, causal: a token continues past router
    r iff its weight w_r >= 1 - threshold (the authors' convention: threshold 0 stops nearly every
    token after repeat 1, threshold 1 runs every token through every repeat; more threshold, more
    MACs). The authors' Figure 4 instead turns a threshold into length factors (the share of all
    tokens whose full-depth w_r >= 1 - threshold, per router) and runs the top-k above:
    models/lm_eval.py's threshold_rule capacity (its default) does that; cascaded calls this.
Rows of a batch may keep different numbers of tokens under a threshold: the active set is padded
to the longest row, padding slots are never keys and write nowhere (the `counts` returned count only
real tokens).

forward returns {"logits", "loss", "depth" (B, T) repeats each token ran, "router": [w_r (B, T),
NaN where the token did not reach router r], "counts": the per-repeat numbers of tokens (for
models/macs.py)}.
"""
import torch
import torch.nn as nn

from models.gpt import GPT, KVCache, LMBase

MODELS = ("base", "cotformer", "ln_cotformer", "adm")
DEPTH_RANDOM_METHODS = ("uniform", "uniform_random_range", "more_chance_for_zero_too", "exponential_decay",
                        "pick_mid_and_recurse")


def build_model(cfg):
    """The model the config names, from the training task's keys (vocab_size filled in)."""
    kind = cfg["model"]
    if kind == "base":
        return GPT(cfg)
    if kind in ("cotformer", "ln_cotformer"):
        return CoTFormer(cfg)
    if kind == "adm":
        return AdaptiveCoTFormer(cfg)
    raise ValueError(f"unknown model {kind!r}: expected one of {list(MODELS)}")


class DepthEmbedding(nn.Module):
    def __init__(self, kind, n_repeat, n_embd):
        super().__init__()
        self.kind = kind
        self.emb = nn.Embedding(1 if kind == "linear_learned" else n_repeat, n_embd)

    def forward(self, x, index):
        if self.kind == "linear_learned":
            return x + self.emb.weight[0] * index
        return x + self.emb.weight[index]


class CoTFormer(LMBase):
    def __init__(self, cfg):
        super().__init__(cfg)
        n_mid = cfg["n_layer"] - cfg["n_layer_begin"] - cfg["n_layer_end"]
        if n_mid < 1 or cfg["n_repeat"] < 1:
            raise ValueError("need n_layer > n_layer_begin + n_layer_end and n_repeat >= 1")
        self.n_repeat = cfg["n_repeat"]
        mr = cfg.get("min_repeat", 0)
        if isinstance(mr, bool) or not isinstance(mr, int) or not 0 <= mr <= self.n_repeat:
            raise ValueError(f"min_repeat {mr!r}: expected an integer from 0 to n_repeat={self.n_repeat} "
                             f"(0: n_repeat for fixed-depth models, 1 for adm)")
        method = cfg.get("depth_random_method", "uniform")
        if cfg["model"] != "adm" and min_repeat_of(cfg) < self.n_repeat and method != "uniform":
            # without a router a fixed-depth model draws one depth per batch, uniformly: another method
            # would be silently ignored
            raise ValueError(f"depth_random_method {method!r} needs the adaptive model (model: adm); a fixed-depth "
                             f"model with min_repeat < n_repeat draws one depth per batch (depth_random_method: uniform)")
        self.h_begin = nn.ModuleList(self.block() for _ in range(cfg["n_layer_begin"]))
        self.h_mid = nn.ModuleList(self.block() for _ in range(n_mid))
        self.h_end = nn.ModuleList(self.block() for _ in range(cfg["n_layer_end"]))
        ln = cfg["model"] != "cotformer"
        self.ln_mid = nn.LayerNorm(cfg["n_embd"], bias=cfg["bias"]) if ln and not cfg["disable_ln_mid"] else nn.Identity()
        kind = cfg["depth_embedding"] if ln else None
        if kind not in (None, "linear_learned", "learned"):
            raise ValueError(f"depth_embedding {kind!r}: expected linear_learned, learned or None")
        self.depth_emb = DepthEmbedding(kind, self.n_repeat, cfg["n_embd"]) if kind else None
        self.init_weights()

    def _prefix(self, idx):
        x = self.drop(self.wte(idx))
        for b in self.h_begin:
            x = b(x)
        return x

    def _repeat(self, x, r, pos, caches, valid=None):
        """Repeat r (1-based) of the mid stack on the tokens x at positions pos."""
        if self.depth_emb is not None:
            x = self.depth_emb(x, self.n_repeat - r)
        for b, c in zip(self.h_mid, caches):
            x = b(x, pos, c, valid)
        return self.ln_mid(x)

    def _suffix(self, x, targets):
        for b in self.h_end:
            x = b(x)
        return self.head(x, targets)

    def forward(self, idx, targets=None, depth=None, **_):
        B, T = idx.shape
        if depth is None and self.training and min_repeat_of(self.cfg) < self.n_repeat:
            # stochastic depth without a router: one depth for the whole forward, uniform in
            # [min_repeat, n_repeat] (the authors draw it per token; a fixed-depth model has no
            # router to gate single tokens with, so the draw is per batch here)
            depth = int(torch.randint(min_repeat_of(self.cfg), self.n_repeat + 1, (1,)))
        R = self.n_repeat if depth is None else int(depth)
        if not 1 <= R <= self.n_repeat:
            raise ValueError(f"depth {R} outside 1..{self.n_repeat}")
        x = self._prefix(idx)
        pos = torch.arange(T, device=idx.device).unsqueeze(0).expand(B, T)
        caches = [KVCache() for _ in self.h_mid]
        for r in range(1, R + 1):
            x = self._repeat(x, r, pos, caches)
        logits, loss = self._suffix(x, targets)
        full = torch.full((B,), T, device=idx.device)
        return {"logits": logits, "loss": loss, "router": [],
                "depth": torch.full((B, T), R, device=idx.device),
                "counts": {"B": B, "T": T, "repeats": [full] * R, "routed": []}}


def min_repeat_of(cfg):
    """The fewest repeats a token runs in training: cfg['min_repeat'], where 0 means n_repeat for the
    fixed-depth models (trained at full depth) and 1 for the adaptive one."""
    if cfg.get("min_repeat", 0):
        return int(cfg["min_repeat"])
    return 1 if cfg["model"] == "adm" else cfg["n_repeat"]


def random_length_factors(method, n, gen=None, min_repeat=1):
    """n descending shares of the sequence that reach repeats 2..n+1 (the authors' training draws).

    min_repeat: every token runs at least that many repeats (the shares of repeats 2..min_repeat
    are 1). uniform_random_range: a range [a, b] drawn uniformly in [min_repeat, n + 1] (a <= b),
    then token depths spread evenly over it: share 1 up to repeat a, (b - q + 1) / (b - a + 1) for
    repeat q in (a, b], 0 after b."""
    rand = lambda k: torch.rand(k, generator=gen)
    lo = max(1, int(min_repeat))
    if lo > n + 1:
        raise ValueError(f"min_repeat {min_repeat} exceeds n_repeat {n + 1}")
    if method == "uniform_random_range":
        a, b = sorted(int(v) for v in torch.randint(lo, n + 2, (2,), generator=gen))
        return [1.0 if q <= a else 0.0 if q > b else (b - q + 1) / (b - a + 1) for q in range(2, n + 2)]
    if lo > 1:
        rest = random_length_factors(method, n + 1 - lo, gen) if n + 1 - lo > 0 else []
        return [1.0] * (lo - 1) + rest
    if method == "uniform":
        return torch.clamp(rand(n) * 1.05, max=1).sort(descending=True).values.tolist()
    if method == "more_chance_for_zero_too":
        return torch.clamp(rand(n) * 1.1 - 0.05, min=0, max=1).sort(descending=True).values.tolist()
    if method == "exponential_decay":
        return (torch.clamp(rand(1) * 1.05, min=0, max=1) ** torch.arange(1, n + 1)).tolist()
    if method == "pick_mid_and_recurse":
        def split(k, low, high):
            if k == 0:
                return []
            mid = torch.clamp(rand(1) * 1.05, min=0, max=1).item() * (high - low) + low
            left = (k - 1) // 2
            return split(left, mid, high) + [mid] + split(k - 1 - left, low, mid)
        return split(n, 0.0, 1.0)
    raise ValueError(f"unknown depth_random_method {method!r}: expected one of {list(DEPTH_RANDOM_METHODS)}")


class AdaptiveCoTFormer(CoTFormer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.routers = nn.ModuleList(nn.Linear(cfg["n_embd"], 1, bias=False) for _ in range(self.n_repeat - 1))
        for m in self.routers:
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _factors(self, depth, length_factors):
        n = self.n_repeat - 1
        if depth is not None:
            if not 1 <= int(depth) <= self.n_repeat:
                raise ValueError(f"depth {depth} outside 1..{self.n_repeat}")
            return [1.0] * (int(depth) - 1) + [0.0] * (n - int(depth) + 1)
        if length_factors is not None and len(length_factors):
            if len(length_factors) != n:
                raise ValueError(f"length factors need n_repeat - 1 = {n} values, got {len(length_factors)}")
            return [float(f) for f in length_factors]
        if self.training:
            fixed = self.cfg.get("training_length_factor") or []
            if fixed:
                return self._factors(None, fixed)
            return random_length_factors(self.cfg["depth_random_method"], n, min_repeat=min_repeat_of(self.cfg))
        return [1.0] * n

    def forward(self, idx, targets=None, depth=None, length_factors=None, threshold=None, **_):
        B, T = idx.shape
        dev = idx.device
        x = self._prefix(idx)
        C = x.shape[-1]
        # state[:, T] is a scratch row: padding slots read from and write to it
        state = torch.cat([x, x.new_zeros(B, 1, C)], dim=1)
        act = torch.arange(T, device=dev).unsqueeze(0).expand(B, T)
        valid = torch.ones(B, T, dtype=torch.bool, device=dev)
        factors = None if threshold is not None else self._factors(depth, length_factors)
        caches = [KVCache() for _ in self.h_mid]
        depth_out = torch.zeros(B, T + 1, dtype=torch.long, device=dev)
        router_out, q_counts, routed = [], [], []
        w, prev = None, 1.0
        for r in range(1, self.n_repeat + 1):
            gidx = act.unsqueeze(-1).expand(-1, -1, C)
            x_in = state.gather(1, gidx)
            h = self._repeat(x_in, r, act, caches, valid)
            if w is not None:
                h = x_in * (1 - w) + h * w
            h = torch.where(valid.unsqueeze(-1), h, x_in)
            state = state.scatter(1, gidx, h)
            depth_out.scatter_(1, act, r)
            q_counts.append(valid.sum(1))
            if r == self.n_repeat:
                break
            wr = torch.sigmoid(self.routers[r - 1](h).squeeze(-1).float()).to(h.dtype)     # (B, n)
            routed.append(valid.sum(1))
            rec = torch.full((B, T + 1), float("nan"), device=dev)
            router_out.append(rec.scatter(1, act, torch.where(valid, wr.detach().float(), float("nan")))[:, :T])
            if threshold is not None:
                keep = valid & (wr >= 1.0 - float(threshold))
            else:
                cap = factors[r - 1] / prev if prev > 0 else 0.0
                prev = factors[r - 1]
                k = min(int(cap * act.shape[1]), act.shape[1])
                keep = torch.zeros_like(valid)
                if k > 0:
                    keep.scatter_(1, torch.topk(wr.detach(), k, dim=1).indices, True)
                keep &= valid
            n_new = int(keep.sum(1).max())
            if n_new == 0:
                break
            # the kept tokens of each row first, in position order; padding (index T) after them
            key = torch.where(keep, act, T + 1 + act)
            order = key.argsort(dim=1)[:, :n_new]
            act = torch.where(keep.gather(1, order), act.gather(1, order), T)
            valid = act < T
            w = wr.gather(1, order).unsqueeze(-1)
        x = state[:, :T]
        if self.training:       # every router in the graph (DDP needs it) even when routing stopped early
            x = x + 0.0 * sum(m.weight.sum() for m in self.routers)
        logits, loss = self._suffix(x, targets)
        return {"logits": logits, "loss": loss, "router": router_out, "depth": depth_out[:, :T],
                "counts": {"B": B, "T": T, "repeats": q_counts, "routed": routed}}
