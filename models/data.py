"""Datasets for the workloads, loaded whole into tensors on the training device.

    load("digits")                     scikit-learn's bundled 8x8 digits; a fixed stratified split
    load("cifar10", data_dir="...")    the CIFAR-10 python batches already on disk

Both return {"x_train", "y_train", "x_test", "y_test"} (float32 inputs flattened to (N, in_dim),
int64 labels) plus "in_dim", "n_classes" and "name". Inputs are scaled to [0, 1] and standardised
per channel with the training set's mean and std. Nothing is downloaded: a missing file is an error
that names it. Batches are index slices of these tensors (`x[idx]`), not a per-sample DataLoader.
"""
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
DATASETS = ("digits", "cifar10")


def load(name, data_dir=None, device="cpu", test_fraction=0.2):
    """The dataset `name` as tensors on `device` (see the module docstring for the keys)."""
    if name == "digits":
        x_tr, y_tr, x_te, y_te = _digits(test_fraction)
        channels, scale = 1, 16.0
    elif name == "cifar10":
        x_tr, y_tr, x_te, y_te = _cifar10(data_dir)
        channels, scale = 3, 255.0
    else:
        raise ValueError(f"unknown dataset {name!r}: expected one of {list(DATASETS)}")
    x_tr, x_te = _standardise(x_tr / scale, x_te / scale, channels)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt).to(device)
    return {"name": name, "x_train": t(x_tr, torch.float32), "y_train": t(y_tr, torch.int64),
            "x_test": t(x_te, torch.float32), "y_test": t(y_te, torch.int64),
            "in_dim": int(x_tr.shape[1]), "n_classes": int(max(y_tr.max(), y_te.max()) + 1)}


def _standardise(x_tr, x_te, channels):
    """Per-channel (x - mean) / std with the training set's statistics; channel-major layout (C*H*W)."""
    n, dim = x_tr.shape
    tr = x_tr.reshape(n, channels, dim // channels)
    mean = tr.mean(axis=(0, 2), keepdims=True)
    std = tr.std(axis=(0, 2), keepdims=True) + 1e-8
    norm = lambda x: ((x.reshape(len(x), channels, -1) - mean) / std).reshape(len(x), dim).astype(np.float32)
    return norm(x_tr), norm(x_te)


def _digits(test_fraction):
    """scikit-learn's digits (1797 images, shipped with the package), split by class, fixed seed.

    Read straight from the package's digits.csv.gz: importing scikit-learn costs a second and more
    per process, paid again by every attempt of every run. The split does not depend on the run's
    seed: every run of a sweep is scored on the same test set (per class, a fixed permutation
    of its samples sends round(test_fraction * count) of them to the test set).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset digits needs scikit-learn installed (it ships the data): "
                                "pip install -r env/requirements.txt")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    rng = np.random.RandomState(0)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        test[rng.permutation(members)[:int(round(test_fraction * len(members)))]] = True
    return x[~test], y[~test], x[test], y[test]


def cifar10_dir(data_dir):
    """The folder holding the CIFAR-10 batches: data_dir itself or its cifar-10-batches-py/."""
    if data_dir is None:
        raise ValueError("dataset cifar10 needs data_dir: the folder with data_batch_1..5 and test_batch "
                         "(cifar-10-python.tar.gz extracted); nothing is downloaded at run time")
    root = Path(data_dir).expanduser()
    nested = root / "cifar-10-batches-py"
    return nested if not (root / CIFAR10_TEST).exists() and nested.is_dir() else root


def _cifar10(data_dir):
    root = cifar10_dir(data_dir)
    missing = [f for f in CIFAR10_TRAIN + [CIFAR10_TEST] if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"cifar10: missing {', '.join(missing)} in {root} (expected the CIFAR-10 python batches "
            f"data_batch_1..5 and test_batch from cifar-10-python.tar.gz; nothing is downloaded at run time)")
    parts = [read_cifar10_batch(root / f) for f in CIFAR10_TRAIN]
    x_te, y_te = read_cifar10_batch(root / CIFAR10_TEST)
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te


def read_cifar10_batch(path):
    """(uint8 data (N, 3072), int64 labels (N,)) from one CIFAR-10 python batch file.

    The batches are Python pickles: that is the format CIFAR-10 is published in. The unpickler
    builds only dicts, lists, strings, numbers and numpy arrays; any other object in the file is
    refused, so a tampered batch cannot run code.
    """
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: not a CIFAR-10 batch: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, "
                         f"got data {data.shape} and {len(labels)} labels")
    return data, labels


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only (what a CIFAR-10 batch holds), nothing callable else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
