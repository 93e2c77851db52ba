"""The refine workload: ACT halting arithmetic, deep-supervision weights, MACs, learning, exact resume.

Tiny configs (d=32, 3-4 refinement steps, a few epochs of digits) keep the file to seconds on two cores.
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import checkpoint
from jobs.context import Interrupted, RunContext
from jobs.spec import load_sweep, task_schema
from models import refine
from tests.taskctx import StoppingContext, metrics_of, strip_times

TINY = {"d_hidden": 32, "max_steps": 3, "epochs": 2, "batch_size": 128, "seed": 7}
STEPS_PER_EPOCH = 12            # ceil(1438 digits training images / 128)
SWEEPS = ("ponder.yaml", "deep_supervision.yaml", "ds_schedules.yaml", "refine_random.yaml")
RESULT_KEYS = {"test_acc", "test_loss", "train_loss", "mean_ponder_steps", "macs_per_sample", "n_params", "steps"}


def _run(tmp_path, name, **over):
    cfg = {**TINY, **over}
    return refine.train(cfg, RunContext(tmp_path / name, cfg))


# ---------------------------------------------------------------- config

def test_config_is_a_literal_the_spec_validator_reads():
    defaults, choices, _ = task_schema("refine")
    assert defaults == refine.CONFIG and choices == refine.CHOICES


def test_the_keys_the_sweeps_use_exist_with_their_types():
    expected = {"seed": int, "halting": str, "ponder_coef": float, "deep_supervision": bool,
                "ds_schedule": str, "ds_weight": float, "d_hidden": int, "lr": float}
    for key, kind in expected.items():
        assert type(refine.CONFIG[key]) is kind, key
    assert refine.CONFIG["ponder_coef"] == 1e-3 and refine.CONFIG["ds_weight"] == 0.5
    assert refine.CONFIG["deep_supervision"] is False and refine.CONFIG["d_hidden"] == 128
    assert refine.CHOICES["halting"] == ["none", "act"]
    assert refine.CHOICES["ds_schedule"] == ["constant", "linear_decay", "exponential_decay"]


def test_every_refine_sweep_plans_against_the_task():
    sweeps = Path(__file__).resolve().parent.parent / "sweeps"
    for name in SWEEPS:
        sweep = load_sweep(sweeps / name)
        for run in sweep.runs:
            assert set(run.config) == set(refine.CONFIG), name
            refine.resolve(run.config)


def test_unknown_keys_and_choices_are_named():
    with pytest.raises(ValueError, match="haltng"):
        refine.resolve({"haltng": "act"})
    with pytest.raises(ValueError, match="'pondernet'.*none"):
        refine.resolve({"halting": "pondernet"})
    with pytest.raises(ValueError, match="max_steps"):
        refine.resolve({"max_steps": 0})


# ---------------------------------------------------------------- ACT, deep supervision, MACs

def test_act_halting_follows_graves():
    p = torch.tensor([[0.5, 0.6, 0.9, 0.9],       # cumulative 0.5, 1.1: halts at 2, R = 0.5
                      [0.1, 0.2, 0.3, 0.2],       # never reaches 0.99: halts at T = 4, R = 0.4
                      [0.995, 0.1, 0.1, 0.1],     # halts at once: N = 1, R = 1
                      [0.3, 0.3, 0.385, 0.5]])    # cumulative 0.985 < 0.99 at step 3: halts at 4, R = 0.015
    weights, n, r = refine.act_halting(p, eps=0.01)
    assert n.tolist() == [2, 4, 1, 4]
    assert torch.allclose(r, torch.tensor([0.5, 0.4, 1.0, 0.015]))
    assert torch.allclose(weights, torch.tensor([[0.5, 0.5, 0, 0], [0.1, 0.2, 0.3, 0.4],
                                                 [1.0, 0, 0, 0], [0.3, 0.3, 0.385, 0.015]]))
    assert torch.allclose(weights.sum(1), torch.ones(4))


def test_act_ponder_gradient_flows_through_the_remainder_only():
    p = torch.tensor([[0.2, 0.3, 0.9]], requires_grad=True)
    _, n, r = refine.act_halting(p, eps=0.01)
    (n + r).sum().backward()
    assert p.grad.tolist() == [[-1.0, -1.0, 0.0]]


def test_ds_weights_match_the_docstring():
    cfg = lambda kind, T=5: refine.resolve({"max_steps": T, "ds_schedule": kind, "ds_decay": 0.5})
    assert refine.ds_weights(cfg("constant")) == [0.25] * 4
    assert refine.ds_weights(cfg("linear_decay")) == pytest.approx([0.4, 0.3, 0.2, 0.1])      # 4,3,2,1 / 10
    assert refine.ds_weights(cfg("exponential_decay")) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert refine.ds_weights(cfg("constant", T=1)) == []


def test_deep_supervision_with_zero_weight_is_plain_training(tmp_path):
    plain = _run(tmp_path, "plain", epochs=1)
    zero = _run(tmp_path, "zero", epochs=1, deep_supervision=True, ds_weight=0.0)
    other = _run(tmp_path, "on", epochs=1, deep_supervision=True, ds_weight=0.5)
    assert strip_times(plain) == strip_times(zero)
    assert other["test_loss"] != plain["test_loss"]


def test_macs_count_the_steps_used():
    cfg = refine.resolve({"d_hidden": 8, "mlp_ratio": 2, "max_steps": 3})
    cell = 2 * 8 * 16 + 16 * 8
    assert refine.macs(cfg, 64, 10, 3) == 64 * 8 + 3 * cell + 8 * 10
    act = {**cfg, "halting": "act"}
    assert refine.macs(act, 64, 10, 1.5) == 64 * 8 + 1.5 * (cell + 8 * 10 + 8)


# ---------------------------------------------------------------- training

def test_a_short_run_learns_and_logs_every_step(tmp_path):
    metrics = _run(tmp_path, "run", epochs=3)
    assert RESULT_KEYS <= set(metrics)
    assert metrics["test_acc"] > 0.6, metrics                   # chance is 0.1
    assert metrics["mean_ponder_steps"] == 3 and metrics["steps"] == 3 * STEPS_PER_EPOCH
    cfg = refine.resolve(TINY)
    assert metrics["macs_per_sample"] == refine.macs(cfg, 64, 10, 3)
    logs = metrics_of(tmp_path / "run")
    assert [r["step"] for r in logs] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert all(r["total_steps"] == 3 * STEPS_PER_EPOCH and {"loss", "acc", "ponder"} <= set(r) for r in logs)
    assert [r["epoch"] for r in logs if "test_acc" in r] == [1, 2, 3]
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_act_ponder_steps_fall_with_a_larger_ponder_cost(tmp_path):
    act = {"halting": "act", "max_steps": 4, "epochs": 3, "act_bias_init": -2.0, "lr": 3e-3}
    cheap = _run(tmp_path, "cheap", **act, ponder_coef=1e-4)
    dear = _run(tmp_path, "dear", **act, ponder_coef=1.0)
    for m in (cheap, dear):
        assert 1 <= m["mean_ponder_steps"] <= 4 and RESULT_KEYS <= set(m)
    assert dear["mean_ponder_steps"] < cheap["mean_ponder_steps"] - 1, (cheap, dear)
    assert dear["macs_per_sample"] < cheap["macs_per_sample"]
    assert cheap["test_acc"] > 0.5 and dear["test_acc"] > 0.5


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("over", [{"halting": "act", "deep_supervision": True, "ds_schedule": "linear_decay"},
                                  {"halting": "none"}])
def test_resume_is_bit_identical(tmp_path, over):
    cfg = {**TINY, **over}
    straight = tmp_path / "straight run"
    expected = refine.train(cfg, StoppingContext(straight, cfg, every_steps=STEPS_PER_EPOCH))

    # stopped mid-epoch (step 7), then at an epoch's last step (12); each attempt a fresh model and ctx
    resumed = tmp_path / "resumed 'run'"
    for stop in (7, STEPS_PER_EPOCH):
        with pytest.raises(Interrupted):
            refine.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=STEPS_PER_EPOCH))
        random.seed(999), np.random.seed(999), torch.manual_seed(999)   # a new process's RNG, not ours
    got = refine.train(cfg, StoppingContext(resumed, cfg, every_steps=STEPS_PER_EPOCH))

    assert strip_times(got) == strip_times(expected)
    logs, want = metrics_of(resumed), metrics_of(straight)
    assert [strip_times(r) for r in logs] == [strip_times(r) for r in want]
    assert len(logs) == 2 * STEPS_PER_EPOCH
    a = checkpoint.load_latest(straight / "checkpoints")[1]["state"]
    b = checkpoint.load_latest(resumed / "checkpoints")[1]["state"]
    assert a["step"] == b["step"] == 2 * STEPS_PER_EPOCH
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_changed_config_does_not_resume(tmp_path):
    cfg = {**TINY, "epochs": 1}
    with pytest.raises(Interrupted):
        refine.train(cfg, StoppingContext(tmp_path, cfg, stop_at=3, every_steps=STEPS_PER_EPOCH))
    with pytest.raises(ValueError, match="lr"):
        refine.train({**cfg, "lr": 0.5}, StoppingContext(tmp_path, cfg))
