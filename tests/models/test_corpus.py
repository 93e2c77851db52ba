"""models/corpus.py: the byte-level corpus both language-model studies share."""
import json

import numpy as np
import pytest
import torch

from models import corpus


def _text_dir(tmp_path):
    d = tmp_path / "texts"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("hello world\n" * 50)
    (d / "sub" / "b.md").write_text("ünïcode bytes " * 40)
    (d / ".hidden").write_text("never read")
    return d


def test_build_writes_byte_ids_and_meta(tmp_path):
    src = _text_dir(tmp_path)
    meta = corpus.build(tmp_path / "out", src, max_bytes=0, val_fraction=0.25)
    raw = (src / "a.txt").read_bytes() + (src / "sub" / "b.md").read_bytes()
    n = len(raw) + 2                                   # a newline after each file
    assert meta["n_train"] + meta["n_val"] == n and meta["n_val"] == round(n * 0.25)
    assert meta["vocab_size"] == corpus.VOCAB_BYTES == corpus.vocab_size(tmp_path / "out") == 256
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    train, val = corpus.open_split(tmp_path / "out", "train"), corpus.open_split(tmp_path / "out", "val")
    assert train.dtype == np.uint16 and len(train) == meta["n_train"] and len(val) == meta["n_val"]
    stream = bytes(np.concatenate([train, val]).astype(np.uint8))
    assert sorted(stream) == sorted(raw + b"\n\n")     # every byte of both files, nothing else
    assert b"never read" not in stream
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_build_is_deterministic_and_capped(tmp_path):
    a = corpus.build(tmp_path / "a", max_bytes=300_000)
    b = corpus.build(tmp_path / "b", max_bytes=300_000)
    assert a["n_train"] + a["n_val"] == 300_000 and a["source"].startswith("python-stdlib:")
    for split in corpus.SPLITS:
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (tmp_path / "b" / f"{split}.bin").read_bytes()
    srcs = corpus.default_sources()
    assert srcs == sorted(srcs) and all(p.suffix == ".py" and "site-packages" not in p.parts for p in srcs)


def test_nanogpt_style_bins_open_as_is(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) * 50
    ids.tofile(tmp_path / "train.bin")
    ids[:300].tofile(tmp_path / "val.bin")
    assert corpus.vocab_size(tmp_path) == 50304
    assert np.array_equal(corpus.open_split(tmp_path, "val"), ids[:300])
    with pytest.raises(ValueError):
        corpus.open_split(tmp_path, "test")


def test_get_batch_windows(tmp_path):
    data = np.arange(500, dtype=np.uint16)
    g = torch.Generator().manual_seed(3)
    x, y = corpus.get_batch(data, 8, 16, g)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)                       # consecutive ids: y is x shifted by one
    assert int(y.max()) <= 499
    x2, _ = corpus.get_batch(data, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    starts = torch.cat([corpus.get_batch(data[:20], 64, 19, g)[0][:, 0] for _ in range(4)])
    assert set(starts.tolist()) == {0}                 # only one window fits
    with pytest.raises(ValueError):
        corpus.get_batch(data[:10], 1, 10, g)
