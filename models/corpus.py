"""A byte-level language-model corpus shared by the language-model tasks.

    VOCAB_BYTES = 256
    default_sources()                          the Python standard library's *.py files (exist everywhere)
    build(out_dir, text_dir=None, max_bytes=4_000_000, val_fraction=0.1) -> meta
    open_split(data_dir, "train" | "val")      np.memmap of uint16 token ids
    get_batch(data, batch_size, seq_len, generator, device) -> (x, y)
    vocab_size(data_dir)                       meta.json's vocab_size, else 50304 (GPT-2, padded)

Tokenisation is one id per byte (0..255), so any text directory works and nothing is downloaded.
The on-disk layout is nanoGPT's: `train.bin` / `val.bin` are flat arrays of np.uint16 token ids,
so a GPT-2-tokenised corpus (OpenWebText2 prepared the nanoGPT way, vocabulary 50304 once padded
to a multiple of 64) opens with the same open_split / get_batch. `meta.json` holds
{"vocab_size", "n_train", "n_val", "source", "n_files"}.

build() is deterministic: the files under the source (every regular file of `text_dir`, or every
*.py of the standard library) are ordered by the sha256 of their relative path (a fixed shuffle,
so the corpus mixes modules rather than running through them alphabetically), concatenated with
a newline between files, cut at `max_bytes` (0: no cut), and split: the first (1 - val_fraction) of
the stream is train, the rest val. Each output file is written atomically (a temporary file in
the same directory, fsync, os.replace), so a reader never sees a half-written split.
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import torch

VOCAB_BYTES = 256
GPT2_PADDED_VOCAB = 50304
SPLITS = ("train", "val")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def default_sources() -> list[Path]:
    """The standard library's *.py sources (no site-packages), sorted: text present on every machine."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(files)


def _source_files(text_dir):
    if text_dir is None or str(text_dir) == "":
        files = default_sources()
        root = Path(sysconfig.get_paths()["stdlib"])
        return root, files, f"python-stdlib:{root}"
    root = Path(text_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"text_dir {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"text_dir {root} holds no files")
    return root, files, str(root)


def _write_atomic(path: Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(out_dir, text_dir=None, *, max_bytes=4_000_000, val_fraction=0.1) -> dict:
    """Tokenise the source into out_dir/{train.bin, val.bin, meta.json}; returns the meta dict."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root, files, source = _source_files(text_dir)
    order = sorted(files, key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())
    chunks, total = [], 0
    for p in order:
        if max_bytes and total >= max_bytes:
            break
        b = p.read_bytes() + b"\n"
        chunks.append(b)
        total += len(b)
    stream = b"".join(chunks)
    if max_bytes:
        stream = stream[:max_bytes]
    n_val = max(1, int(round(len(stream) * val_fraction)))
    n_train = len(stream) - n_val
    if n_train < 2 or n_val < 2:
        raise ValueError(f"corpus from {source} too small: {len(stream)} bytes")
    ids = np.frombuffer(stream, dtype=np.uint8).astype(np.uint16)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "train.bin", ids[:n_train].tobytes())
    _write_atomic(out / "val.bin", ids[n_train:].tobytes())
    meta = {"vocab_size": VOCAB_BYTES, "n_train": int(n_train), "n_val": int(n_val),
            "source": source, "n_files": len(chunks)}
    _write_atomic(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def open_split(data_dir, split) -> np.memmap:
    """The split's token ids as a read-only np.uint16 memmap (nanoGPT's train.bin / val.bin)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (build the corpus first)")
    return np.memmap(path, dtype=np.uint16, mode="r")


def get_batch(data, batch_size, seq_len, generator: torch.Generator, device="cpu"):
    """batch_size random windows of seq_len tokens: x (int64), y = x shifted one token left.

    Window starts are drawn with `generator` (a CPU torch.Generator), uniformly over every start
    that leaves room for the shifted target.
    """
    n_starts = len(data) - seq_len
    if n_starts < 1:
        raise ValueError(f"split of {len(data)} tokens is too short for seq_len {seq_len}")
    ix = torch.randint(n_starts, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([np.asarray(data[i:i + seq_len], dtype=np.int64) for i in ix]))
    y = torch.from_numpy(np.stack([np.asarray(data[i + 1:i + 1 + seq_len], dtype=np.int64) for i in ix]))
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def vocab_size(data_dir) -> int:
    """meta.json's vocab_size; 50304 (GPT-2's 50257 padded to a multiple of 64) for a bare train.bin."""
    meta = Path(data_dir) / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["vocab_size"])
    return GPT2_PADDED_VOCAB
