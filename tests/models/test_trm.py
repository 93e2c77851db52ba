"""models/trm.py: per-cycle weights and curriculum, the loss split, gradient paths, the corpus, exact resume.

Tiny configs (d=16, one layer, 8-byte windows, a few dozen steps) keep the file to seconds on two cores.
"""
import json
import random

import numpy as np
import pytest
import torch

from jobs.runtime import checkpoint
from jobs.runtime.context import Interrupted, RunContext
from jobs.spec import task_schema
from models import corpus, trm
from tests.taskctx import StoppingContext, metrics_of, strip_times

TINY = {"hidden_size": 16, "num_heads": 2, "expansion": 2, "L_layers": 1, "H_cycles": 3, "L_cycles": 2,
        "seq_len": 16, "global_batch_size": 4, "max_steps": 12, "lr": 3e-3, "log_every": 2, "eval_every": 6,
        "eval_batches": 2, "compute_gradient_stats": True, "seed": 3}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    text = tmp_path_factory.mktemp("text")
    for i in range(5):
        (text / f"f{i}.txt").write_text(("the quick brown fox jumps over the lazy dog %d\n" % i) * 40)
    out = tmp_path_factory.mktemp("corpus")
    corpus.build(out, text)
    return str(out)


def test_config_is_a_literal_with_the_studys_defaults():
    defaults, choices, _ = task_schema("trm")
    assert defaults == trm.CONFIG and choices == trm.CHOICES
    c = trm.CONFIG
    assert (c["deep_supervision_enabled"], c["deep_supervision_weight"], c["deep_supervision_schedule"]) == \
        (False, 0.5, "linear_decay")
    assert (c["curriculum_enabled"], c["curriculum_start_step"], c["curriculum_end_step"]) == (False, 1000, 10000)
    assert (c["H_cycles"], c["grad_clip"], c["lr"], c["log_per_step_losses"]) == (3, 1.0, 1e-4, True)
    assert trm.CHOICES["deep_supervision_schedule"] == ["constant", "linear_decay", "exponential_decay"]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="H_cycle"):
        trm.resolve({"H_cycle": 2})
    with pytest.raises(ValueError, match="deep_supervision_enabled"):
        trm.resolve({"curriculum_enabled": True})
    with pytest.raises(ValueError, match="'inverse_u'"):
        trm.resolve({"deep_supervision_schedule": "inverse_u"})


def test_weights_per_step():
    base = trm.resolve({})
    assert trm.step_weights(base, 0) == ([0.0, 0.0, 1.0], 0.0)
    lin = trm.resolve({"deep_supervision_enabled": True})
    w, now = trm.step_weights(lin, 0)
    assert w == pytest.approx([1 / 6, 1 / 3, 1.0]) and now == 0.5
    exp4 = trm.resolve({"deep_supervision_enabled": True, "deep_supervision_schedule": "exponential_decay",
                        "H_cycles": 4})
    assert trm.step_weights(exp4, 0)[0] == pytest.approx([0.0625, 0.125, 0.25, 1.0])
    cur = trm.resolve({"deep_supervision_enabled": True, "deep_supervision_schedule": "constant",
                       "deep_supervision_weight": 0.7, "curriculum_enabled": True})
    assert [trm.step_weights(cur, s)[1] for s in (0, 1000, 5500, 10000, 15000)] == pytest.approx(
        [0.0, 0.0, 0.35, 0.7, 0.7])
    assert trm.step_weights(cur, 0)[0] == [0.0, 0.0, 1.0]
    assert trm.step_weights(cur, 5500)[0] == pytest.approx([0.35, 0.35, 1.0])


def _rows(tmp_path, data_dir, **over):
    cfg = {**TINY, "data_dir": data_dir, **over}
    m = trm.train(cfg, RunContext(tmp_path, cfg))
    return m, [r for r in metrics_of(tmp_path) if "total_loss" in r]


def test_baseline_supervises_and_backpropagates_only_the_last_cycle(tmp_path, data_dir):
    m, rows = _rows(tmp_path, data_dir)
    for r in rows:
        assert r["supervised_loss"] == 0.0 and r["curriculum_weight"] == 0.0
        assert r["total_loss"] == r["act_loss"] == r["lm_loss"] == r["step_2_loss"]
        assert r["step_0_grad_norm_mean"] == r["step_1_grad_norm_mean"] == 0.0 < r["step_2_grad_norm_mean"]
    assert set(m) >= {"val_loss", "val_bpb", "val_step_0_loss", "val_step_2_loss", "train_lm_loss"}
    assert m["val_loss"] == m["val_step_2_loss"] and m["val_bpb"] == pytest.approx(m["val_loss"] / np.log(2))


def test_deep_supervision_loss_split_and_gradients(tmp_path, data_dir):
    m, rows = _rows(tmp_path, data_dir, deep_supervision_enabled=True, deep_supervision_schedule="constant")
    for r in rows:
        w = [0.5, 0.5, 1.0]
        want = sum(wi * r[f"step_{i}_loss"] for i, wi in enumerate(w)) / 2.0
        assert r["total_loss"] == pytest.approx(want, rel=1e-5)
        assert r["act_loss"] == pytest.approx(r["step_2_loss"] / 2.0, rel=1e-5)
        assert r["act_loss"] + r["supervised_loss"] == pytest.approx(r["total_loss"], rel=1e-6)
        assert min(r[f"step_{i}_grad_norm_mean"] for i in range(3)) > 0
        assert r["curriculum_weight"] == 0.5


def test_curriculum_ramps_the_weight_in(tmp_path, data_dir):
    _, rows = _rows(tmp_path, data_dir, deep_supervision_enabled=True, curriculum_enabled=True,
                    curriculum_start_step=2, curriculum_end_step=8, deep_supervision_weight=0.6)
    # a row at step s logs the weight of the update that was step s - 1 (0-based)
    got = {r["step"]: r["curriculum_weight"] for r in rows}
    assert got[2] == 0.0 and got[6] == pytest.approx(0.6 * 3 / 6) and got[10] == got[12] == pytest.approx(0.6)
    assert rows[0]["supervised_loss"] == 0.0 and rows[-1]["supervised_loss"] > 0


def _smoothed(losses, beta):
    ema, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        ema = beta * ema + (1 - beta) * loss
        out.append(ema / (1 - beta ** i))
    return out


def test_steps_to_target_is_the_first_step_the_smoothed_loss_reaches_it(tmp_path, data_dir):
    never, rows = _rows(tmp_path / "a", data_dir, log_every=1, target_loss=1e-6)
    assert never["steps_to_target"] is None and never["val_steps_to_target"] is None
    assert never["target_reached"] == 0.0
    smooth = _smoothed([r["lm_loss"] for r in rows], 0.9)
    target = sorted(smooth)[len(smooth) // 2]                        # reached about half way
    want = next(i for i, s in enumerate(smooth, 1) if s <= target)
    m, rows = _rows(tmp_path / "b", data_dir, log_every=1, target_loss=target)
    assert m["steps_to_target"] == want and m["target_reached"] == 1.0
    assert [r["step"] for r in metrics_of(tmp_path / "b") if "steps_to_target" in r] == [want]
    evals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert m["val_steps_to_target"] == next((s for s, v in evals if v <= target), None)
    off, _ = _rows(tmp_path / "c", data_dir, target_loss=0)
    assert "steps_to_target" not in off
    with pytest.raises(ValueError, match="target_smoothing"):
        trm.resolve({"target_smoothing": 1.0})


def test_the_default_corpus_is_built_into_the_run_dir(tmp_path):
    cfg = {**TINY, "max_steps": 2, "corpus_max_bytes": 20000}
    m = trm.train(cfg, RunContext(tmp_path, cfg))
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["vocab_size"] == 256 and meta["n_train"] + meta["n_val"] == 20000
    assert m["steps"] == 2 and m["tokens_seen"] == 2 * 4 * 16


def test_resume_is_bit_identical(tmp_path, data_dir):
    cfg = {**TINY, "data_dir": data_dir, "deep_supervision_enabled": True, "curriculum_enabled": True,
           "curriculum_start_step": 2, "curriculum_end_step": 8, "target_loss": 5.55}
    straight = tmp_path / "straight"
    expected = trm.train(cfg, StoppingContext(straight, cfg, every_steps=1))
    resumed = tmp_path / "resumed"
    for stop in (3, 6):
        with pytest.raises(Interrupted):
            trm.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=4))
        random.seed(999), np.random.seed(999), torch.manual_seed(999)
    got = trm.train(cfg, StoppingContext(resumed, cfg, every_steps=1))     # so that step 12 is saved too
    assert strip_times(got) == strip_times(expected)
    assert 4 <= got["steps_to_target"] <= 12          # reached after the first interruption: its state was kept
    assert [strip_times(r) for r in metrics_of(resumed)] == [strip_times(r) for r in metrics_of(straight)]
    a = checkpoint.load_latest(straight / "checkpoints")[1]["state"]
    b = checkpoint.load_latest(resumed / "checkpoints")[1]["state"]
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_checkpoint_saved_under_another_config_is_refused(tmp_path, data_dir):
    cfg = trm.resolve({**TINY, "data_dir": data_dir})
    with pytest.raises(Interrupted):
        trm.train(cfg, StoppingContext(tmp_path, cfg, stop_at=2, every_steps=1))
    other = {**cfg, "seed": 8}
    with pytest.raises(ValueError, match=r"trm: .*other values of \['seed'\]"):
        trm.train(other, StoppingContext(tmp_path, other))
