"""Pointer-over-heads dependency parser: does deep supervision or differentiable halting make its
inner iterations pay off?

Question: a parser whose attention block refines the token context over max_inner_iters inner
iterations gains nothing from iterations 2..T when trained only on the final output (the signal
reaching early iterations is diluted). Either deep supervision (a weighted loss at every
iteration) unlocks gains, or the task saturates at one iteration (dependencies mostly local) and
the iterations only buy adaptive computation (halting).

    python main.py run sweeps/deep_supervision.yaml --only deep_supervision=True,seed=1
    python main.py run sweeps/ponder.yaml --only ponder_coef=0.001,seed=1

Data (models/treebank.py): data_source "synthetic" (a generated projective treebank of
n_train_sents / n_dev_sents sentences, fixed by treebank_seed, the same for every training seed)
or "conllu" (conllu_dir holding one *-train.conllu and one *-dev.conllu, e.g. UD English EWT, used
as is). Vocabulary: every training form (case kept) plus PAD, UNK, ROOT; dev forms not seen in
training map to UNK. A ROOT token is put at position 0 so that heads index positions 0..n.

Encoder (`encoder`):
    scratch    x = word_emb + upos_emb + sinusoidal position; n_encoder_layers pre-norm Transformer
               layers of width d_model, trained from random initialisation. It trains at lr ~1e-3; at
               the study's 3e-5 it underfits (synthetic treebank, 64 wide, 315 steps: dev UAS 0.51 vs 0.92).
    a name or a folder of a pretrained Hugging Face encoder (e.g. distilbert-base-uncased, the
               study's regime, fine-tuned at lr 3e-5): the sentence's words go through its tokenizer
               (is_split_into_words), a word is the encoder's last hidden state at its first subword,
               projected to d_model when the sizes differ, plus upos_emb; ROOT is a learned vector.
               Loaded offline only (transformers' local_files_only): from a folder, or from the
               Hugging Face cache where an earlier from_pretrained put it. Needs the `studies` extra.
               Every encoder weight is fine-tuned with the rest at lr; n_encoder_layers is unused.

Model (d = d_model, H = n_heads, I = max_inner_iters):
    x = the encoder's output (above).
    The pointer-over-heads block, iteration t = 1..I, starting from c_0 = x:
        per-head attention outputs o_h = Attn_h(LN1(c_{t-1}))                 (B, n, H, d/H)
        routing logits r = MLP_s(LN1 c) + MLP_r([LN1 c, mean_d o_h])          (B, n, H), the controller
        alphas = softmax(r / routing_tau);  routed = W_o concat_h(alphas_h o_h)
        c_t = x + routed;   y_t = c_t + FFN(LN2 c_t);   halting logit g_t = w_g LN_g(y_t) + b_g
    Every iteration's y_t goes through the same pointer scorer (biaffine-style, self-loops masked):
        s_t[i, j] = (W_d LN_s y_t,i) . (W_h LN_s y_t,j) / sqrt(d) + u . W_h LN_s y_t,j
    a distribution over the head j in {ROOT, 1..n} of each token i. CE_t = token-level cross-entropy.

Training (collect_all: all I iterations are computed and enter the loss, no early break):
    standard                      L = mean CE_I
    deep_supervision              L = sum_t w_t mean CE_t / sum_t w_t, w = loss_weights(ds_schedule, I)
                                  (models/refine.py: linear = linspace(0.3, 1, I) [default], exp = 2^t,
                                  uniform); ds_weights, when not empty, gives w explicitly instead,
                                  e.g. [0.3, 0.5, 1.0], the 3-iteration weights also stated for this study
    act_halting                   per token, p = halting_distribution(g_1..g_I) (p_t = s_t prod_{s<t}(1-s_s),
                                  the remainder on the last iteration);
                                  L = mean_tokens sum_t p_t CE_t + ponder_coef * mean_tokens sum_t t p_t
    deep_supervision+act_halting  the same with p_t replaced by p_t w_t / sum_s p_s w_s
AdamW (lr, weight_decay), constant learning rate, gradient clipping at max-norm grad_clip (1.0),
batches of batch_size sentences from one permutation per epoch (torch.Generator seeded by seed).

Inference (halting_mode), from the same all-iterations pass (iteration t never depends on later ones):
    fixed     every sentence uses I iterations
    entropy   a sentence stops after the first iteration t >= min_inner_iters whose mean routing
              entropy (of alphas, nats) over its tokens is below the threshold, else at I. The
              threshold: ent_threshold, or with ent_quantile q > 0 the q-quantile of that entropy
              at iteration min_inner_iters over up to 256 training sentences, recomputed at every
              evaluation (so about a fraction q of sentences stops there). Whether a fixed 0.7
              fires depends on how sharp a run's routing is: with 4 heads (at most ln 4 = 1.39
              nats) and routing_tau 0.7 the alphas' entropy after iteration 1 measured 0.49-0.59
              nats on the synthetic treebank, so 0.7 stops every sentence there (the entropy of
              softmax(r) without tau, read before, sat near 1.1-1.2 and 0.7 never fired). The
              specs therefore calibrate (q = 0.5).
    halting   the learned halting head (needs act_halting): a token stops at the first t with
              sigmoid(g_t) > 0.5 (else I) and is predicted from y_t; a sentence runs max over its tokens

Logged per step (every log_every steps): loss, ce_iter{t} (train CE per iteration), train_uas
(final iteration), ponder (act: mean expected iterations), grad_norm (before clipping), lr. Every
eval_every_steps steps (0: at the end of each epoch) and at the end: dev_uas_iter{t}, dev_ce_iter{t},
dev_entropy_iter{t} (mean routing entropy), dev_uas (under halting_mode), dev_iters (mean
iterations per sentence under halting_mode), dev_expected_iters (act: mean sum_t t p_t over dev
tokens; else I), dev_uas_entropy_halt / dev_iters_entropy_halt (entropy halting, whatever the mode),
dev_ent_threshold (the entropy threshold in force), and UAS by gold head distance under halting_mode:
dev_uas_dist1, dev_uas_dist2, dev_uas_dist3_6, dev_uas_dist7p (|dependent - head| = 1, 2, 3-6, >= 7)
and dev_uas_root (tokens whose head is ROOT), with dev_uas_iter1_dist{...} the same at iteration 1.

Diagnostics. The controller gradient check (the study's static vs recurrent controller): every
logged step, ctrl_grad_static and ctrl_grad_recurrent, the mean |gradient| over the parameters of the
controller's static MLP_s and recurrent MLP_r branches (before clipping), and their ratio
ctrl_grad_ratio = static / recurrent; the results hold their means over the last epoch. After
training, at the last step, one line per inner iteration t: dev_iter = t, dev_uas_at_iter,
dev_entropy_at_iter, route_weights (the mean routing weight alpha of each head over dev tokens) and
head_edges (0..H, to draw them as a histogram per iteration); and one line per distance bucket:
dist_bucket (its lower bound: 1, 2, 3, 7), dev_uas_by_dist (under halting_mode), dev_uas_by_dist_iter1.

Results (result.json): the dev metrics above, dev_uas_last (iteration I), train_loss (mean over
the last epoch's steps), ctrl_grad_static, ctrl_grad_recurrent, ctrl_grad_ratio, n_params, train_sentences, dev_sentences, steps, epochs_done, train_time_s.

Checkpoint: weights, optimizer, the shuffling generator's state, the epoch's permutation and the
position in it, the running loss sums, step and training time; ctx restores the global RNG states
(dropout). A resumed run is bit-identical to an uninterrupted one on CPU.
"""
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import treebank
from models.blocks import overlay, restore_same_config
from models.refine import (act_ds_weights, entropy, expected_loss, halting_distribution, halting_step,
                           loss_weights, ponder_cost)

CONFIG = {
    "seed": 0,
    "data_source": "synthetic",   # synthetic (generated treebank) | conllu (conllu_dir)
    "conllu_dir": None,           # a UD treebank folder with *-train.conllu and *-dev.conllu
    "n_train_sents": 4000,        # synthetic only
    "n_dev_sents": 500,           # synthetic only
    "treebank_seed": 0,           # synthetic only: the treebank, independent of the training seed
    "max_len": 0,                 # drop training sentences longer than this (0: keep all)
    "encoder": "scratch",         # scratch | a pretrained Hugging Face encoder: name (in the local cache) or folder
    "d_model": 128,
    "n_heads": 4,
    "d_ff": 256,
    "n_encoder_layers": 1,
    "dropout": 0.1,
    "routing_tau": 0.7,
    "max_inner_iters": 3,
    "min_inner_iters": 1,
    "deep_supervision": False,
    "ds_schedule": "linear",      # linear | exp | uniform
    "ds_weights": [],             # explicit per-iteration weights (len max_inner_iters); overrides ds_schedule
    "act_halting": False,         # differentiable halting: expected loss + ponder_coef * expected iterations
    "ponder_coef": 1e-3,
    "halting_mode": "fixed",      # inference: fixed | entropy | halting (learned; needs act_halting)
    "ent_threshold": 0.7,         # entropy halting: mean routing entropy (nats) below which a sentence stops
    "ent_quantile": 0.0,          # > 0: calibrate the threshold instead, the quantile of training sentences' entropy
    "epochs": 3,
    "batch_size": 32,
    "lr": 3e-5,
    "weight_decay": 0.01,
    "grad_clip": 1.0,             # max-norm gradient clipping (0: off)
    "log_every": 10,
    "eval_every_steps": 0,        # 0: evaluate on dev at the end of every epoch
}

CHOICES = {"data_source": ["synthetic", "conllu"], "ds_schedule": ["linear", "exp", "uniform"],
           "halting_mode": ["fixed", "entropy", "halting"]}

PAD, UNK, ROOT = 0, 1, 2
UPOS_IDS = {u: i + 2 for i, u in enumerate(treebank.UPOS)}       # 0 pad, 1 unknown tag (ROOT uses 1 too)


def resolve(cfg):
    """CONFIG overlaid with cfg, checked: an error names the key and what it accepts."""
    cfg = overlay("poh", CONFIG, CHOICES, cfg)
    for key in ("d_model", "n_heads", "d_ff", "max_inner_iters", "min_inner_iters", "epochs", "batch_size",
                "log_every", "n_train_sents", "n_dev_sents"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ValueError(f"poh: {key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("n_encoder_layers", "max_len", "eval_every_steps"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], int) and cfg[key] >= 0):
            raise ValueError(f"poh: {key} must be an integer >= 0, got {cfg[key]!r}")
    for key in ("ponder_coef", "lr", "weight_decay", "grad_clip", "ent_threshold", "dropout", "ent_quantile"):
        if isinstance(cfg[key], bool) or not (isinstance(cfg[key], (int, float)) and cfg[key] >= 0):
            raise ValueError(f"poh: {key} must be a number >= 0, got {cfg[key]!r}")
    if cfg["ent_quantile"] >= 1:
        raise ValueError(f"poh: ent_quantile must be below 1 (0: use ent_threshold), got {cfg['ent_quantile']!r}")
    if not (isinstance(cfg["encoder"], str) and cfg["encoder"].strip()):
        raise ValueError(f"poh: encoder must be 'scratch' or a Hugging Face encoder's name or folder, "
                         f"got {cfg['encoder']!r}")
    if cfg["d_model"] % cfg["n_heads"]:
        raise ValueError(f"poh: d_model={cfg['d_model']} must be a multiple of n_heads={cfg['n_heads']}")
    if cfg["min_inner_iters"] > cfg["max_inner_iters"]:
        raise ValueError("poh: min_inner_iters must not exceed max_inner_iters")
    if cfg["halting_mode"] == "halting" and not cfg["act_halting"]:
        raise ValueError("poh: halting_mode=halting needs act_halting=True (only the ACT loss trains the halting head)")
    w = cfg["ds_weights"]
    if w and (len(w) != cfg["max_inner_iters"] or any(not isinstance(v, (int, float)) or v < 0 for v in w)
              or sum(w) <= 0):
        raise ValueError(f"poh: ds_weights must be {cfg['max_inner_iters']} numbers >= 0 with a positive sum "
                         f"(one per inner iteration), got {w!r}")
    if cfg["data_source"] == "conllu" and not cfg["conllu_dir"]:
        raise ValueError("poh: data_source=conllu needs conllu_dir (a folder with *-train.conllu, *-dev.conllu)")
    return cfg


def ds_weight_list(cfg):
    """The raw per-iteration weights deep supervision uses."""
    return [float(v) for v in cfg["ds_weights"]] or loss_weights(cfg["ds_schedule"], cfg["max_inner_iters"])


# ---------------------------------------------------------------- data

def load_data(cfg):
    """{"train": [sentence], "dev": [sentence], "vocab": {form: id}}."""
    if cfg["data_source"] == "conllu":
        train, dev = treebank.load_conllu_dir(cfg["conllu_dir"])
    else:
        train = treebank.generate(cfg["n_train_sents"], seed=cfg["treebank_seed"])
        dev = treebank.generate(cfg["n_dev_sents"], seed=cfg["treebank_seed"] + 1_000_003)
    if cfg["max_len"]:
        train = [s for s in train if len(s["form"]) <= cfg["max_len"]]
    vocab = {}
    for s in train:
        for w in s["form"]:
            vocab.setdefault(w, len(vocab) + 3)
    return {"train": train, "dev": dev, "vocab": vocab}


def encode(sentences, vocab, tokenizer=None):
    """Sentences as tuples (word ids, upos ids, heads), each with ROOT at position 0; with a pretrained
    encoder's tokenizer, also (subword ids, position of each word's first subword; 0 for ROOT)."""
    out = []
    for s in sentences:
        words = [ROOT] + [vocab.get(w, UNK) for w in s["form"]]
        tags = [1] + [UPOS_IDS.get(u, 1) for u in s["upos"]]
        item = (words, tags, [0] + list(s["head"]))
        out.append(item + subwords(tokenizer, s["form"]) if tokenizer is not None else item)
    return out


def subwords(tokenizer, forms):
    """(subword ids of the sentence, the index of each word's first subword, ROOT's slot 0 first).

    A word the tokenizer cut off (past its maximum length) or gave no subword reads the subword of
    the word before it, so every word has a representation."""
    enc = tokenizer(list(forms), is_split_into_words=True, truncation=True)
    first = [0] * (len(forms) + 1)
    for pos, w in reversed(list(enumerate(enc.word_ids()))):
        if w is not None:
            first[w + 1] = pos
    for i in range(2, len(first)):
        if first[i] == 0:
            first[i] = first[i - 1]
    return list(enc["input_ids"]), first


def load_encoder(name):
    """(encoder module, tokenizer) of a pretrained Hugging Face encoder, offline: a folder, or a name
    found in the local Hugging Face cache. A ValueError says what is missing."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ValueError(f"poh: encoder={name!r} needs the transformers library: pip install -e '.[studies]'") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"poh: encoder {name!r} is neither a folder with a saved encoder and tokenizer nor in the local "
            f"Hugging Face cache (runs never download). Fetch it once where there is network: python -c "
            f"\"from transformers import AutoModel, AutoTokenizer; AutoModel.from_pretrained('{name}'); "
            f"AutoTokenizer.from_pretrained('{name}')\", or save both to a folder and give its path "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not getattr(tokenizer, "is_fast", True):
        raise ValueError(f"poh: encoder {name!r}: its tokenizer has no fast (word-aligned) version")
    return model, tokenizer


def collate(items, device):
    """(words, tags, heads, token mask) tensors (B, n+1); the mask is False on ROOT and padding."""
    n = max(len(it[0]) for it in items)
    words = torch.zeros(len(items), n, dtype=torch.int64)
    tags, heads = torch.zeros_like(words), torch.zeros_like(words)
    for b, (w, t, h, *_) in enumerate(items):
        words[b, :len(w)] = torch.tensor(w)
        tags[b, :len(t)] = torch.tensor(t)
        heads[b, :len(h)] = torch.tensor(h)
    mask = words != PAD
    mask[:, 0] = False
    return words.to(device), tags.to(device), heads.to(device), mask.to(device)


def collate_subwords(items, device):
    """(subword ids (B, m), their attention mask, first-subword index per position (B, n+1)), or None
    for the scratch encoder's items."""
    if len(items[0]) < 5:
        return None
    m, n = max(len(it[3]) for it in items), max(len(it[0]) for it in items)
    ids = torch.zeros(len(items), m, dtype=torch.int64)
    att, first = torch.zeros_like(ids), torch.zeros(len(items), n, dtype=torch.int64)
    for b, it in enumerate(items):
        ids[b, :len(it[3])] = torch.tensor(it[3])
        att[b, :len(it[3])] = 1
        first[b, :len(it[4])] = torch.tensor(it[4])
    return ids.to(device), att.to(device), first.to(device)


def batch_of(items, device):
    """(words, tags, heads, mask, subwords or None): what the model and the loss take."""
    return (*collate(items, device), collate_subwords(items, device))


# ---------------------------------------------------------------- model

def sinusoid(n, d, device):
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, device=device, dtype=torch.float32)
    ang = pos / torch.pow(10000.0, i / d)
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(ang), torch.cos(ang[:, :d // 2])
    return pe


class PointerOverHeads(nn.Module):
    """Attention whose heads are mixed per token by a pointer controller, iterated max_inner_iters times."""

    def __init__(self, d, n_heads, d_ff, iters, tau, dropout, halting=True):
        super().__init__()
        self.h, self.dh, self.iters, self.tau = n_heads, d // n_heads, iters, tau
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        hid = max(32, d // 2)
        self.ctrl_static = nn.Sequential(nn.Linear(d, hid), nn.GELU(), nn.Linear(hid, n_heads))
        self.ctrl_recur = nn.Sequential(nn.Linear(d + n_heads, hid), nn.GELU(), nn.Linear(hid, n_heads))
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)
        self.halt = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1)) if halting else None   # only act trains it

    def forward(self, x, pad):
        """Per iteration: y (B, I, n, d), routing logits (B, I, n, H), halting logits (B, I, n)."""
        B, n, d = x.shape
        bias = torch.zeros(B, 1, 1, n, device=x.device).masked_fill(pad[:, None, None, :], float("-inf"))
        c, ys, routes, halts = x, [], [], []
        for _ in range(self.iters):
            u = self.ln1(c)
            q, k, v = (f(u).view(B, n, self.h, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh) + bias, dim=-1)
            heads = (self.drop(att) @ v).transpose(1, 2)                           # (B, n, H, dh)
            logits = self.ctrl_static(u) + self.ctrl_recur(torch.cat([u, heads.mean(-1)], dim=-1))
            alphas = torch.softmax(logits / self.tau, dim=-1)
            routed = self.o((heads * alphas[..., None]).reshape(B, n, d))
            c = x + self.drop(routed)
            y = c + self.drop(self.ff(self.ln2(c)))
            g = self.halt(y).squeeze(-1) if self.halt is not None else torch.zeros_like(y[..., 0])
            ys.append(y), routes.append(logits), halts.append(g)
        return torch.stack(ys, 1), torch.stack(routes, 1), torch.stack(halts, 1)


class Parser(nn.Module):
    def __init__(self, n_words, cfg, pretrained=None):
        super().__init__()
        d = cfg["d_model"]
        self.d = d
        self.tags = nn.Embedding(len(UPOS_IDS) + 2, d, padding_idx=0)
        self.pretrained = pretrained
        if pretrained is None:
            self.words = nn.Embedding(n_words, d, padding_idx=PAD)
            self.encoder = nn.ModuleList(
                nn.TransformerEncoderLayer(d, cfg["n_heads"], cfg["d_ff"], cfg["dropout"], batch_first=True,
                                           norm_first=True) for _ in range(cfg["n_encoder_layers"]))
        else:
            width = pretrained.config.hidden_size
            self.proj = nn.Linear(width, d) if width != d else nn.Identity()
            self.root = nn.Parameter(torch.randn(d) * 0.02)
        self.poh = PointerOverHeads(d, cfg["n_heads"], cfg["d_ff"], cfg["max_inner_iters"], cfg["routing_tau"],
                                    cfg["dropout"], halting=cfg["act_halting"])
        self.ln_s = nn.LayerNorm(d)
        self.dep, self.head = nn.Linear(d, d), nn.Linear(d, d)
        self.head_bias = nn.Linear(d, 1, bias=False)

    def embed(self, words, tags, sub):
        """x (B, n, d): the encoder's output per position (module docstring)."""
        pad = words == PAD
        B, n = words.shape
        if self.pretrained is None:
            x = self.words(words) + self.tags(tags) + sinusoid(n, self.d, words.device)
            for layer in self.encoder:
                x = layer(x, src_key_padding_mask=pad)
            return x
        if sub is None:
            raise ValueError("poh: a pretrained encoder needs the subword batch (batch_of)")
        ids, att, first = sub
        hidden = self.pretrained(input_ids=ids, attention_mask=att).last_hidden_state       # (B, m, width)
        x = self.proj(hidden.gather(1, first[..., None].expand(-1, -1, hidden.shape[-1])))
        x = torch.cat([self.root.expand(B, 1, -1), x[:, 1:]], dim=1)
        return x + self.tags(tags)

    def forward(self, words, tags, sub=None):
        """(pointer logits (B, I, n, n): token i's head j, routing logits (B, I, n, H), halting logits (B, I, n))."""
        pad = words == PAD
        B, n = words.shape
        x = self.embed(words, tags, sub)
        y, routes, halts = self.poh(x, pad)
        z = self.ln_s(y)
        dep, head = self.dep(z), self.head(z)
        scores = dep @ head.transpose(-1, -2) / math.sqrt(self.d) + self.head_bias(head).transpose(-1, -2)
        eye = torch.eye(n, dtype=torch.bool, device=words.device)
        scores = scores.masked_fill(pad[:, None, None, :] | eye, float("-inf"))
        return scores, routes, halts


def per_token_ce(scores, heads, mask):
    """CE per iteration and token (B, I, n), 0 where mask is False."""
    B, I, n, _ = scores.shape
    logp = torch.log_softmax(scores.masked_fill(~mask[:, None, :, None], 0.0), dim=-1)
    ce = -logp.gather(-1, heads[:, None, :, None].expand(B, I, n, 1)).squeeze(-1)
    return ce.masked_fill(~mask[:, None, :], 0.0)


def objective(cfg, scores, halts, heads, mask):
    """(loss, per-iteration mean CE list, mean expected iterations or None)."""
    ce = per_token_ce(scores, heads, mask)                      # (B, I, n)
    ntok = mask.sum()
    ce_iter = ce.sum(dim=(0, 2)) / ntok                         # (I,)
    ponder = None
    if cfg["act_halting"]:
        p = halting_distribution(halts.transpose(1, 2))         # (B, n, I): steps on the last axis
        alpha = act_ds_weights(p, ds_weight_list(cfg)) if cfg["deep_supervision"] else p
        per_tok = expected_loss(alpha, ce.transpose(1, 2))
        pc = ponder_cost(p)
        ponder = (pc * mask).sum() / ntok
        loss = (per_tok * mask).sum() / ntok + cfg["ponder_coef"] * ponder
    elif cfg["deep_supervision"]:
        w = torch.tensor(ds_weight_list(cfg), dtype=ce_iter.dtype, device=ce_iter.device)
        loss = (w * ce_iter).sum() / w.sum()
    else:
        loss = ce_iter[-1]
    return loss, ce_iter, ponder


DIST_BUCKETS = (("1", 1, 1), ("2", 2, 2), ("3_6", 3, 6), ("7p", 7, 10**9))    # |dependent - head|; ROOT apart


def distance_bucket(heads, mask):
    """(B, n) bucket index per token: 0..3 by |i - head_i| (DIST_BUCKETS), 4 when the head is ROOT, -1 off mask."""
    pos = torch.arange(heads.shape[1], device=heads.device)[None, :]
    dist = (pos - heads).abs()
    out = torch.full_like(heads, -1)
    for b, (_, lo, hi) in enumerate(DIST_BUCKETS):
        out[(dist >= lo) & (dist <= hi)] = b
    out[heads == 0] = len(DIST_BUCKETS)
    return out.masked_fill(~mask, -1)


def sentence_entropy(routes, words, tau):
    """(B, I): mean routing entropy (nats) of the alphas = softmax(r / tau) over a sentence's positions."""
    real = (words != PAD)
    return (entropy(routes / tau) * real[:, None]).sum(-1) / real.sum(-1)[:, None]


@torch.no_grad()
def calibrate_entropy(model, data, cfg, device, chunk=128, limit=256):
    """The entropy-halting threshold: ent_threshold, or the ent_quantile-quantile of the sentence
    entropy at iteration min_inner_iters over the first `limit` sentences of `data`."""
    if not cfg["ent_quantile"]:
        return float(cfg["ent_threshold"])
    was = model.training
    model.eval()
    values = []
    for s in range(0, min(len(data), limit), chunk):
        words, tags, _, _, sub = batch_of(data[s:min(s + chunk, limit)], device)
        _, routes, _ = model(words, tags, sub)
        values.append(sentence_entropy(routes, words, cfg["routing_tau"])[:, cfg["min_inner_iters"] - 1])
    model.train(was)
    return float(torch.quantile(torch.cat(values).double().cpu(), cfg["ent_quantile"]))


@torch.no_grad()
def evaluate(model, data, cfg, device, chunk=128, threshold=None, detail=None):
    """Dev metrics (module docstring), floats. `threshold`: the entropy-halting threshold (default
    ent_threshold). `detail`, a dict, receives route_weights (I, H), uas_by_dist and
    uas_by_dist_iter1 (per DIST_BUCKETS bucket) for the lines logged after training."""
    I = cfg["max_inner_iters"]
    threshold = float(cfg["ent_threshold"] if threshold is None else threshold)
    nb = len(DIST_BUCKETS) + 1
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    correct = torch.zeros(I, dtype=torch.float64)
    ce_sum, ent_sum = torch.zeros(I, dtype=torch.float64), torch.zeros(I, dtype=torch.float64)
    route_sum = None
    dist_hit, dist_hit1, dist_n = (torch.zeros(nb, dtype=torch.float64) for _ in range(3))
    ntok = 0
    mode_correct, mode_iters, ent_correct, ent_iters, exp_iters = 0.0, 0.0, 0.0, 0.0, 0.0
    for s in range(0, len(order), chunk):
        words, tags, heads, mask, sub = batch_of([data[i] for i in order[s:s + chunk]], device)
        scores, routes, halts = model(words, tags, sub)
        pred = scores.argmax(-1)                                             # (B, I, n)
        hit = (pred == heads[:, None]) & mask[:, None]                       # (B, I, n)
        ce = per_token_ce(scores, heads, mask)
        ent = entropy(routes / cfg["routing_tau"]) * mask[:, None]           # (B, I, n)
        n_b = mask.sum(-1)                                                    # tokens per sentence
        correct += hit.sum(dim=(0, 2)).double().cpu()
        ce_sum += ce.sum(dim=(0, 2)).double().cpu()
        ent_sum += ent.sum(dim=(0, 2)).double().cpu()
        alphas = torch.softmax(routes / cfg["routing_tau"], -1) * mask[:, None, :, None]   # (B, I, n, H)
        route_sum = alphas.sum(dim=(0, 2)).double().cpu() + (0 if route_sum is None else route_sum)
        ntok += int(n_b.sum())
        # entropy halting, per sentence: mean routing entropy over its tokens at each iteration
        below = sentence_entropy(routes, words, cfg["routing_tau"]) < threshold          # (B, I)
        below[:, :cfg["min_inner_iters"] - 1] = False
        below[:, -1] = True
        t_ent = below.to(torch.int64).argmax(-1)                             # (B,) 0-based
        ent_hit = hit.gather(1, t_ent[:, None, None].expand(-1, 1, hit.shape[-1])).squeeze(1)
        ent_correct += float(ent_hit.sum())
        ent_iters += float((t_ent + 1).sum())
        # learned halting, per token
        if cfg["act_halting"]:
            p = halting_distribution(halts.transpose(1, 2))
            exp_iters += float((ponder_cost(p) * mask).sum())
            t_tok = halting_step(torch.sigmoid(halts.transpose(1, 2))) - 1    # (B, n)
            t_tok = torch.maximum(t_tok, torch.full_like(t_tok, cfg["min_inner_iters"] - 1))
            halt_hit = hit.gather(1, t_tok[:, None, :]).squeeze(1)
            halt_sent = (t_tok.masked_fill(~mask, 0).amax(-1) + 1)
        else:
            exp_iters += float(I * n_b.sum())
        if cfg["halting_mode"] == "fixed":
            mode_hit = hit[:, -1]
            mode_iters += I * len(n_b)
        elif cfg["halting_mode"] == "entropy":
            mode_hit = ent_hit
            mode_iters += float((t_ent + 1).sum())
        else:
            mode_hit = halt_hit
            mode_iters += float(halt_sent.sum())
        mode_correct += float(mode_hit.sum())
        bucket = distance_bucket(heads, mask)
        for b in range(nb):
            at = bucket == b
            dist_n[b] += float(at.sum())
            dist_hit[b] += float((mode_hit & at).sum())
            dist_hit1[b] += float((hit[:, 0] & at).sum())
    n_sent = len(data)
    out = {f"dev_uas_iter{t + 1}": float(correct[t]) / ntok for t in range(I)}
    out.update({f"dev_ce_iter{t + 1}": float(ce_sum[t]) / ntok for t in range(I)})
    out.update({f"dev_entropy_iter{t + 1}": float(ent_sum[t]) / ntok for t in range(I)})
    out.update(dev_uas=mode_correct / ntok, dev_iters=mode_iters / n_sent, dev_expected_iters=exp_iters / ntok,
               dev_uas_entropy_halt=ent_correct / ntok, dev_iters_entropy_halt=ent_iters / n_sent,
               dev_uas_last=float(correct[-1]) / ntok, dev_ent_threshold=threshold)
    names = [name for name, _, _ in DIST_BUCKETS] + ["root"]
    by_dist = [float(dist_hit[b] / dist_n[b]) if dist_n[b] else None for b in range(nb)]
    by_dist1 = [float(dist_hit1[b] / dist_n[b]) if dist_n[b] else None for b in range(nb)]
    out.update({f"dev_uas_dist{name}": v for name, v in zip(names, by_dist)})
    out.update({f"dev_uas_iter1_dist{name}": v for name, v in zip(names, by_dist1)})
    if detail is not None:
        detail["route_weights"] = (route_sum / max(ntok, 1)).tolist()
        detail["uas_by_dist"], detail["uas_by_dist_iter1"] = by_dist[:-1], by_dist1[:-1]
    return out


def detail_lines(dev, detail, cfg):
    """The lines logged once after training: one per inner iteration, one per distance bucket."""
    H = cfg["n_heads"]
    lines = [{"dev_iter": t + 1, "dev_uas_at_iter": dev[f"dev_uas_iter{t + 1}"],
              "dev_entropy_at_iter": dev[f"dev_entropy_iter{t + 1}"],
              "route_weights": detail["route_weights"][t], "head_edges": [float(h) for h in range(H + 1)]}
             for t in range(cfg["max_inner_iters"])]
    lines += [{"dist_bucket": lo, "dev_uas_by_dist": v, "dev_uas_by_dist_iter1": v1}
              for (_, lo, _), v, v1 in zip(DIST_BUCKETS, detail["uas_by_dist"], detail["uas_by_dist_iter1"])
              if v is not None]
    return lines


def mean_abs_grad(module):
    """Mean |gradient| over every parameter entry of `module` (0 when none has a gradient)."""
    grads = [p.grad.abs().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).mean()) if grads else 0.0


def build_model(cfg, n_words, pretrained=None):
    torch.manual_seed(cfg["seed"])
    return Parser(n_words, cfg, pretrained)


# ---------------------------------------------------------------- the task

def train(cfg, ctx):
    """The task: build or read the treebank, train the parser, return the final dev metrics."""
    cfg = resolve(cfg)
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    device = ctx.device
    data = load_data(cfg)
    pretrained, tokenizer = load_encoder(cfg["encoder"]) if cfg["encoder"] != "scratch" else (None, None)
    train_set = encode(data["train"], data["vocab"], tokenizer)
    dev_set = encode(data["dev"], data["vocab"], tokenizer)
    model = build_model(cfg, len(data["vocab"]) + 3, pretrained).to(device)
    net = ctx.ddp(model) if hasattr(ctx, "ddp") else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    world, rank = getattr(ctx, "world_size", 1), getattr(ctx, "rank", 0)
    n, bs = len(train_set), cfg["batch_size"]
    per_epoch = math.ceil(n / bs)
    total = cfg["epochs"] * per_epoch
    gen = torch.Generator().manual_seed(seed)

    step, epoch, batch, perm, spent = 0, 0, 0, None, 0.0
    sums = {"loss": 0.0, "n": 0, "ctrl_static": 0.0, "ctrl_recurrent": 0.0}
    state = restore_same_config(ctx, cfg, "poh")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        pos = state["data"]
        gen.set_state(pos["generator"])
        epoch, batch, perm = pos["epoch"], pos["batch"], pos["perm"]
        step, spent, sums = state["step"], state["train_time_s"], dict(state["sums"])

    resumed_at = time.time()
    model.train()
    dev = None
    while epoch < cfg["epochs"]:
        if batch == 0:
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "n": 0, "ctrl_static": 0.0, "ctrl_recurrent": 0.0}
        while batch < per_epoch:
            idx = perm[batch * bs:(batch + 1) * bs].tolist()[rank::world]
            words, tags, heads, mask, sub = batch_of([train_set[i] for i in idx], device)
            scores, routes, halts = net(words, tags, sub)
            loss, ce_iter, ponder = objective(cfg, scores, halts, heads, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            g_static, g_recur = mean_abs_grad(model.poh.ctrl_static), mean_abs_grad(model.poh.ctrl_recur)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] if cfg["grad_clip"] > 0
                                                   else float("inf"))
            opt.step()
            step, batch = step + 1, batch + 1
            sums["loss"] += loss.item()
            sums["n"] += 1
            sums["ctrl_static"] += g_static
            sums["ctrl_recurrent"] += g_recur
            row = {}
            if step % cfg["log_every"] == 0 or step == total:
                with torch.no_grad():
                    uas = ((scores[:, -1].argmax(-1) == heads) & mask).sum().item() / max(int(mask.sum()), 1)
                row = {"total_steps": total, "loss": loss.item(), "train_uas": uas, "grad_norm": float(gnorm),
                       "lr": cfg["lr"], **{f"ce_iter{t + 1}": v for t, v in enumerate(ce_iter.tolist())},
                       "ctrl_grad_static": g_static, "ctrl_grad_recurrent": g_recur,
                       **({"ctrl_grad_ratio": g_static / g_recur} if g_recur else {})}
                if ponder is not None:
                    row["ponder"] = ponder.item()
            end_of_epoch = batch == per_epoch
            if (cfg["eval_every_steps"] and step % cfg["eval_every_steps"] == 0) or \
                    (not cfg["eval_every_steps"] and end_of_epoch) or step == total:
                model.eval()
                dev = evaluate(model, dev_set, cfg, device, threshold=calibrate_entropy(model, train_set, cfg, device))
                model.train()
                row.update(dev, epoch=epoch + int(end_of_epoch))
            if row:
                ctx.log(step, **row)
            if ctx.should_checkpoint(step):
                ctx.save(step, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "data": {"epoch": epoch + int(end_of_epoch), "batch": batch % per_epoch, "perm": perm,
                             "generator": gen.get_state()},
                    "sums": dict(sums), "step": step, "train_time_s": spent + time.time() - resumed_at,
                    "config": cfg})
        epoch, batch = epoch + 1, 0

    model.eval()
    detail = {}
    dev = evaluate(model, dev_set, cfg, device, threshold=calibrate_entropy(model, train_set, cfg, device),
                   detail=detail)
    for line in detail_lines(dev, detail, cfg):
        ctx.log(step, **line)
    n_params = sum(p.numel() for p in model.parameters())
    g_static, g_recur = sums["ctrl_static"] / max(sums["n"], 1), sums["ctrl_recurrent"] / max(sums["n"], 1)
    return {**dev, "train_loss": sums["loss"] / max(sums["n"], 1), "ctrl_grad_static": g_static,
            "ctrl_grad_recurrent": g_recur, "ctrl_grad_ratio": g_static / g_recur if g_recur else None,
            "n_params": n_params,
            "train_sentences": len(train_set), "dev_sentences": len(dev_set), "steps": step, "epochs_done": epoch,
            "train_time_s": round(spent + time.time() - resumed_at, 3)}
