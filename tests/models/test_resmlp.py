"""The resmlp workload: exact resume, k semantics, FA/DFA feedback paths, the datasets, frozen_check.

Tiny configs (d=16, a few epochs of digits) keep the whole file to a few seconds on two cores.
"""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from jobs.runtime import checkpoint
from jobs.runtime.context import Interrupted, RunContext
from models import data as datasets
from models import frozen_check, resmlp
from tests.taskctx import StoppingContext, metrics_of, strip_times

TINY = {"dataset": "digits", "d_hidden": 16, "num_blocks": 3, "k": 2, "mlp_ratio": 2,
        "epochs": 2, "batch_size": 128, "seed": 7}
STEPS_PER_EPOCH = 12            # ceil(1438 digits training images / 128)


def _last_state(run_dir):
    return checkpoint.load_latest(run_dir / "checkpoints")[1]["state"]


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("method", ["bp", "fa", "dfa"])
def test_resume_is_bit_identical(tmp_path, method):
    cfg = {**TINY, "method": method}
    last = 2 * STEPS_PER_EPOCH
    straight = tmp_path / "straight run"
    expected = resmlp.train(cfg, StoppingContext(straight, cfg, every_steps=STEPS_PER_EPOCH))

    # stopped mid-epoch (step 7), then at an epoch's last step (12); each attempt a fresh model and ctx
    resumed = tmp_path / "resumed run"
    for stop in (7, STEPS_PER_EPOCH):
        with pytest.raises(Interrupted):
            resmlp.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=STEPS_PER_EPOCH))
        random.seed(999), np.random.seed(999), torch.manual_seed(999)   # a new process's RNG, not ours
    got = resmlp.train(cfg, StoppingContext(resumed, cfg, every_steps=STEPS_PER_EPOCH))

    assert strip_times(got) == strip_times(expected)
    logs, want = metrics_of(resumed), metrics_of(straight)
    assert [strip_times(r) for r in logs] == [strip_times(r) for r in want]
    assert [r["step"] for r in logs] == [STEPS_PER_EPOCH, last]
    a, b = _last_state(straight), _last_state(resumed)
    assert a["step"] == b["step"] == last
    for key in ("model", "optimizers", "feedback", "data"):
        _assert_same_tensors(a[key], b[key], key)


@pytest.mark.parametrize("task", ["resmlp", "poh", "structure"])
def test_a_checkpoint_saved_under_another_config_is_refused(tmp_path, task):
    # every task restores through models.blocks.restore_same_config
    import importlib
    module = importlib.import_module(f"models.{task}")
    cfg = {"resmlp": TINY, "poh": {"d_model": 32, "d_ff": 64, "n_train_sents": 96, "n_dev_sents": 40, "epochs": 1,
                                   "batch_size": 16, "seed": 7},
           "structure": {"n_nodes": 4, "n_samples": 100, "max_outer": 3, "seed": 7}}[task]
    cfg = module.resolve(cfg)
    with pytest.raises(Interrupted):
        module.train(cfg, StoppingContext(tmp_path, cfg, stop_at=2, every_steps=1))
    other = {**cfg, "seed": 8}
    with pytest.raises(ValueError, match=rf"{task}: .*other values of \['seed'\]"):
        module.train(other, StoppingContext(tmp_path, other))


# ---------------------------------------------------------------- k semantics

@pytest.mark.parametrize("method", ["bp", "fa", "dfa"])
def test_only_the_last_k_blocks_train(tmp_path, method):
    cfg = resmlp.resolve({**TINY, "method": method, "epochs": 1, "k": 1})
    metrics = resmlp.train(cfg, StoppingContext(tmp_path, cfg, every_steps=STEPS_PER_EPOCH))
    init = resmlp.build_model(cfg, 64, 10).state_dict()
    final = _last_state(tmp_path)["model"]
    changed = {name for name in init if not torch.equal(init[name], final[name])}
    frozen = {n for n in init if n.startswith(("blocks.0.", "blocks.1."))}
    assert not changed & frozen, f"frozen blocks moved: {sorted(changed & frozen)}"
    assert {n for n in init if n.startswith("blocks.2.")} <= changed
    assert {"embed.weight", "embed.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"} <= changed
    n_frozen = sum(init[n].numel() for n in frozen)
    assert metrics["n_trainable"] == metrics["n_params"] - n_frozen


@pytest.mark.parametrize("k", [-1, 4, 2.0])
def test_k_outside_0_to_num_blocks_is_a_clear_error(k):
    with pytest.raises(ValueError, match=r"k=.*num_blocks=3"):
        resmlp.resolve({**TINY, "k": k})


def test_unknown_keys_and_methods_are_named():
    with pytest.raises(ValueError, match="methd"):
        resmlp.resolve({**TINY, "methd": "fa"})
    with pytest.raises(ValueError, match="'hebb'.*bp"):
        resmlp.resolve({**TINY, "method": "hebb"})


def test_config_is_a_literal_the_spec_validator_reads():
    from jobs.spec import task_schema
    for task in (resmlp, frozen_check):
        defaults, choices, _ = task_schema(task.__name__.split(".")[-1])
        assert defaults == task.CONFIG and choices == task.CHOICES


# ---------------------------------------------------------------- feedback paths

def _grads(method, k=3, feedback=None):
    """Parameter gradients of one step (lr=0, so nothing moves) on a fixed digits batch."""
    cfg = resmlp.resolve({**TINY, "method": method, "k": k})
    data = datasets.load("digits")
    model = resmlp.build_model(cfg, 64, 10)
    fb = resmlp.make_feedback(model, cfg)
    if feedback:
        fb.update(feedback(model))
    opts = resmlp.make_optimizers(model, cfg)
    resmlp.train_step(model, fb, opts, cfg, data["x_train"][:128], data["y_train"][:128], lr=0.0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _transposes(model):
    """FA 'feedback' equal to the forward weights: FA then computes backprop's direction."""
    fb = {"head": model.head.weight.detach().clone()}
    for i, block in enumerate(model.blocks):
        fb[f"block{i}.fc1"] = block.fc1.weight.detach().clone()
        fb[f"block{i}.fc2"] = block.fc2.weight.detach().clone()
    return fb


def test_fa_with_the_weights_as_feedback_is_backprop_up_to_scale():
    bp, fa_exact = _grads("bp"), _grads("fa", feedback=_transposes)
    assert bp.keys() == fa_exact.keys()
    for name in bp:
        assert _cos(bp[name], fa_exact[name]) > 0.9999, name


@pytest.mark.parametrize("method", ["fa", "dfa"])
def test_fa_and_dfa_send_the_error_through_their_random_matrices(method):
    bp, other = _grads("bp"), _grads(method)
    assert torch.allclose(bp["head.weight"], other["head.weight"])        # the readout's own gradient is exact
    for name in ("blocks.0.fc1.weight", "blocks.2.fc1.weight", "embed.weight"):
        assert _cos(bp[name], other[name]) < 0.99, name


def test_dfa_is_local_and_fa_propagates():
    """Changing the top block's feedback moves only that block's gradient under DFA, all below under FA."""
    def scaled_top(name):
        return lambda model: {name: -resmlp.make_feedback(model, resmlp.resolve(
            {**TINY, "method": "dfa" if name == "block2" else "fa", "k": 3}))[name]}
    dfa, dfa2 = _grads("dfa"), _grads("dfa", feedback=scaled_top("block2"))
    assert not torch.allclose(dfa["blocks.2.fc1.weight"], dfa2["blocks.2.fc1.weight"])
    assert torch.equal(dfa["blocks.1.fc1.weight"], dfa2["blocks.1.fc1.weight"])
    assert torch.equal(dfa["embed.weight"], dfa2["embed.weight"])
    fa, fa2 = _grads("fa"), _grads("fa", feedback=scaled_top("block2.fc2"))
    assert torch.equal(fa["blocks.2.fc2.weight"], fa2["blocks.2.fc2.weight"])   # B2 only acts below W2
    assert not torch.allclose(fa["blocks.2.fc1.weight"], fa2["blocks.2.fc1.weight"])
    assert not torch.allclose(fa["blocks.0.fc1.weight"], fa2["blocks.0.fc1.weight"])


def test_feedback_matrices_do_not_depend_on_k():
    cfgs = [resmlp.resolve({**TINY, "method": "fa", "k": k}) for k in (1, 3)]
    fbs = [resmlp.make_feedback(resmlp.build_model(c, 64, 10), c) for c in cfgs]
    assert set(fbs[0]) == {"head", "block2.fc1", "block2.fc2"}
    for name in fbs[0]:
        assert torch.equal(fbs[0][name], fbs[1][name])


# ---------------------------------------------------------------- data

def _write_cifar(folder, n=20, skip=()):
    """Files in the real CIFAR-10 python format: pickled dicts with b'data' (uint8, N x 3072), b'labels'."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in datasets.CIFAR10_TRAIN + [datasets.CIFAR10_TEST]:
        if name in skip:
            continue
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(n) % 10], b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_reads_the_python_batches(tmp_path):
    root = tmp_path / "my data 'cifar'"
    _write_cifar(root / "cifar-10-batches-py")                 # the tarball's own folder is found too
    d = datasets.load("cifar10", root)
    assert d["x_train"].shape == (100, 3072) and d["x_test"].shape == (20, 3072)
    assert d["y_train"].dtype == torch.int64 and d["n_classes"] == 10 and d["in_dim"] == 3072
    per_channel = d["x_train"].reshape(100, 3, 1024)
    assert per_channel.mean(dim=(0, 2)).abs().max() < 1e-4
    cfg = {**TINY, "dataset": "cifar10", "data_dir": str(root), "epochs": 1}
    metrics = resmlp.train(cfg, RunContext(tmp_path / "run", cfg))
    assert metrics["steps"] == 1 and 0 <= metrics["test_acc"] <= 1


def test_cifar10_missing_files_are_named(tmp_path):
    _write_cifar(tmp_path, skip={"data_batch_3", "test_batch"})
    with pytest.raises(FileNotFoundError, match="data_batch_3, test_batch"):
        datasets.load("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        datasets.load("cifar10", None)


def test_cifar10_batch_with_code_in_it_is_refused(tmp_path):
    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        datasets.load("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_digits_split_is_fixed_and_stratified():
    a, b = datasets.load("digits"), datasets.load("digits")
    assert torch.equal(a["x_test"], b["x_test"]) and len(a["y_train"]) + len(a["y_test"]) == 1797
    per_class = torch.bincount(a["y_train"]) + torch.bincount(a["y_test"])
    assert torch.bincount(a["y_test"]).tolist() == [round(0.2 * int(c)) for c in per_class]


def test_digits_backprop_learns(tmp_path):
    cfg = {**TINY, "d_hidden": 32, "num_blocks": 2, "k": 2, "epochs": 4}
    metrics = resmlp.train(cfg, RunContext(tmp_path, cfg))
    assert metrics["test_acc"] > 0.8, metrics                  # chance is 0.1
    logs = metrics_of(tmp_path)
    assert [r["epoch"] for r in logs] == [1, 2, 3, 4] and "test_acc" in logs[-1]


# ---------------------------------------------------------------- frozen_check

def test_frozen_check_is_deterministic_and_matches_the_training_init(capsys):
    argv = ["--d-hidden", "16", "--num-blocks", "2", "--seeds", "1", "2"]
    first, second = frozen_check.main(argv), frozen_check.main(argv)
    assert first == second
    assert set(first) == {"block1_ratio", "block2_ratio", "stack_rel_change", "stack_cos"}
    assert 0 < first["stack_rel_change"][0] and -1 <= first["stack_cos"][0] <= 1
    assert "cos(h_L, h_0)" in capsys.readouterr().out
    # the same weights as resmlp trains from: frozen blocks really are this init
    x = datasets.load("digits")["x_train"]
    one = frozen_check.measure(x, 1, 16, 2, 4)
    model = resmlp.build_model(resmlp.resolve({**TINY, "seed": 1, "num_blocks": 2, "k": 0, "mlp_ratio": 4}), 64, 10)
    with torch.no_grad():
        h = model.embed(x)
        ratio = (model.blocks[0].branch(h).norm(dim=1) / h.norm(dim=1)).mean().item()
    assert one["block1_ratio"] == ratio


def test_fa_last_block_sees_the_exact_output_gradient_unless_fa_head_is_random():
    """fa_head=exact: the top block's W2 gradient is backprop's (its input gradient is H^T e, and W2's
    own gradient needs no transport); fa_head=random sends e through B_H, and it is not."""
    bp = _grads("bp")
    exact = _grads("fa")
    cfg = {**TINY, "method": "fa", "k": 3, "fa_head": "random"}
    model = resmlp.build_model(resmlp.resolve(cfg), 64, 10)
    data = datasets.load("digits")
    fb = resmlp.make_feedback(model, resmlp.resolve(cfg))
    opts = resmlp.make_optimizers(model, resmlp.resolve(cfg))
    resmlp.train_step(model, fb, opts, resmlp.resolve(cfg), data["x_train"][:128], data["y_train"][:128], lr=0.0)
    random_head = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert _cos(bp["blocks.2.fc2.weight"], exact["blocks.2.fc2.weight"]) > 0.9999
    assert _cos(bp["blocks.2.fc2.weight"], random_head["blocks.2.fc2.weight"]) < 0.99
    assert _cos(bp["blocks.1.fc1.weight"], exact["blocks.1.fc1.weight"]) < 0.99     # below it, FA's random paths


def test_normal_init_reproduces_the_studys_anchors_on_a_cifar_sized_input():
    """init=normal(0.02) on 3072-dim standardised inputs: per block ~0.10, stack ~0.20, cos ~0.981
    (the study's 0.10; 0.196, 0.981); PyTorch's default is ~3x further from the identity."""
    x = torch.randn(400, 3072, generator=torch.Generator().manual_seed(0))
    normal = frozen_check.measure(x, 42, 256, 4, 4, init="normal")
    torch_init = frozen_check.measure(x, 42, 256, 4, 4, init="torch")
    assert all(0.09 < normal[f"block{i}_ratio"] < 0.11 for i in range(1, 5))
    assert 0.18 < normal["stack_rel_change"] < 0.22 and 0.975 < normal["stack_cos"] < 0.985
    assert torch_init["stack_rel_change"] > 3 * normal["stack_rel_change"] - 0.1


def test_init_choices_are_checked():
    with pytest.raises(ValueError, match="init"):
        resmlp.resolve({**TINY, "init": "xavier"})
    with pytest.raises(ValueError, match="init_std"):
        resmlp.resolve({**TINY, "init": "normal", "init_std": -1})
