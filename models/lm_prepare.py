"""The corpus stage of the language-model pipelines: tokenise a text directory into train.bin / val.bin.

    stages: [{name: prepare, task: lm_prepare, base: {max_bytes: 2000000}}, {name: train, after: prepare, ...}]

Writes `<run dir>/data/{train.bin, val.bin, meta.json}` with models/corpus.py: byte-level ids
(vocabulary 256), every regular file of `text_dir` (empty: the Python standard library's *.py
sources, present on every machine), files in a fixed pseudo-random order, cut at `max_bytes` (0: no
cut), the last `val_fraction` of the stream held out. Deterministic; nothing is downloaded.

`data_dir_for(cfg, ctx)` is how the training and evaluation tasks find their data: `cfg["data_dir"]`
when set (used as is: any nanoGPT-style train.bin / val.bin of uint16 ids, e.g. GPT-2-tokenised
OpenWebText2), else the upstream prepare stage's `<run dir>/data`, else (a run with no prepare
stage) the default corpus built into the run's own dir.
"""
from pathlib import Path

from models import corpus

CONFIG = {
    "text_dir": "",               # a local directory of text files; empty: the Python standard library's sources
    "max_bytes": 4_000_000,       # corpus size cap in bytes (= tokens); 0: everything
    "val_fraction": 0.1,
}


def train(cfg, ctx):
    out = Path(ctx.run_dir) / "data"
    if ctx.is_main:
        meta = corpus.build(out, cfg["text_dir"] or None, max_bytes=cfg["max_bytes"], val_fraction=cfg["val_fraction"])
    ctx.barrier()
    if not ctx.is_main:
        import json
        meta = json.loads((out / "meta.json").read_text())
    return {"n_train": meta["n_train"], "n_val": meta["n_val"], "vocab_size": meta["vocab_size"],
            "n_files": meta["n_files"]}


def data_dir_for(cfg, ctx) -> Path:
    """Where a language-model task reads train.bin / val.bin (see the module docstring)."""
    if cfg.get("data_dir"):
        return Path(cfg["data_dir"])
    upstream = getattr(ctx, "upstream", None) or {}
    if "prepare" in upstream:
        return Path(upstream["prepare"].run_dir) / "data"
    out = Path(ctx.run_dir) / "data"
    if not (out / "meta.json").is_file():
        if ctx.is_main:
            corpus.build(out)
        ctx.barrier()
    return out
