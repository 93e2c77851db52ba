"""The structure workload (NOTEARS): the simulated SEM, the metrics, the gradient, recovery, exact resume.

Small graphs (5-6 nodes, a few hundred samples) keep the file to seconds on two cores.
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.runtime import checkpoint
from jobs.runtime.context import Interrupted, RunContext
from jobs.spec import load_sweep, task_schema
from models import structure
from tests.taskctx import StoppingContext, metrics_of, strip_times

SMALL = {"n_nodes": 5, "edge_prob": 0.5, "n_samples": 500, "lambda_sparse": 0.01, "lambda_acyclic": 1.0}


# ---------------------------------------------------------------- config

def test_config_is_a_literal_the_spec_validator_reads():
    defaults, choices, _ = task_schema("structure")
    assert defaults == structure.CONFIG and choices == structure.CHOICES


def test_the_keys_the_sweep_uses_exist_with_their_types():
    c = structure.CONFIG
    assert (c["n_nodes"], c["edge_prob"], c["n_samples"], c["w_threshold"]) == (10, 0.3, 1000, 0.3)
    for key, kind in {"seed": int, "n_nodes": int, "edge_prob": float, "n_samples": int,
                      "lambda_sparse": float, "lambda_acyclic": float}.items():
        assert type(c[key]) is kind, key
    sweep = load_sweep(Path(__file__).resolve().parents[2] / "sweeps" / "lambda_grid.yaml")
    assert len(sweep.runs) == 27
    for run in sweep.runs:
        assert set(run.config) == set(c)
        structure.resolve(run.config)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="lambda_sparsity"):
        structure.resolve({"lambda_sparsity": 0.1})
    with pytest.raises(ValueError, match="lambda_acyclic"):
        structure.resolve({"lambda_acyclic": 0.0})


# ---------------------------------------------------------------- data and metrics

def test_simulated_graph_is_a_weighted_dag_fixed_by_the_seed():
    cfg = structure.resolve({"n_nodes": 12, "edge_prob": 0.4, "n_samples": 200, "seed": 3})
    w, x = structure.simulate(cfg)
    w2, x2 = structure.simulate(cfg)
    assert np.array_equal(w, w2) and np.array_equal(x, x2)
    assert not np.array_equal(w, structure.simulate({**cfg, "seed": 4})[0])
    assert structure.is_dag(w) and np.all(np.diag(w) == 0)
    mags = np.abs(w[w != 0])
    assert len(mags) > 10 and mags.min() >= 0.5 and mags.max() <= 2.0
    assert (w > 0).any() and (w < 0).any()
    assert x.shape == (200, 12) and np.allclose(x.mean(0), 0)
    # the SEM holds: the residual of each variable on its parents is the unit-variance noise
    resid = x - x @ w
    assert np.allclose(resid.std(0), 1.0, atol=0.2)


def test_count_accuracy_follows_notears():
    true = np.zeros((4, 4))
    true[0, 1] = true[1, 2] = true[2, 3] = 1                     # 0 -> 1 -> 2 -> 3
    est = np.zeros((4, 4))
    est[0, 1] = 1                                                # right
    est[2, 1] = 1                                                # reversed
    est[0, 3] = 1                                                # extra; 2 -> 3 missing
    m = structure.count_accuracy(true, est)
    assert m == {"shd": 3, "tpr": 1 / 3, "fdr": 2 / 3, "nnz": 3, "f1": pytest.approx(1 / 3)}
    assert structure.count_accuracy(true, true) == {"shd": 0, "tpr": 1.0, "fdr": 0.0, "nnz": 3, "f1": 1.0}


def test_acyclicity_is_zero_exactly_on_dags():
    dag = torch.tensor([[0, 1.5, 0], [0, 0, -0.7], [0, 0, 0]], dtype=torch.float64)
    assert structure.acyclicity(dag).item() == pytest.approx(0, abs=1e-12)
    cyc = dag.clone()
    cyc[2, 0] = 0.5
    assert structure.acyclicity(cyc).item() > 1e-3
    assert structure.is_dag(dag.numpy()) and not structure.is_dag(cyc.numpy())


def test_analytic_gradient_matches_autograd():
    cfg = structure.resolve({"n_nodes": 6, "n_samples": 100, "seed": 1})
    _, x = structure.simulate(cfg)
    cov = torch.as_tensor(x.T @ x / len(x))
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(6, 6, generator=gen, dtype=torch.float64) * 0.5).fill_diagonal_(0).requires_grad_()
    value, grad, h = structure.objective(w, cov, rho=3.0, alpha=0.7)
    value.backward()
    assert torch.allclose(w.grad, grad, rtol=1e-8, atol=1e-10)
    assert h.item() > 0


# ---------------------------------------------------------------- learning

@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_a_small_dag(tmp_path, seed):
    cfg = {**SMALL, "seed": seed}
    m = structure.train(cfg, RunContext(tmp_path, cfg))
    assert m["n_true_edges"] >= 3
    assert m["shd"] <= 1 and m["tpr"] >= 0.75, m
    assert m["is_dag"] and m["converged"] and 0 <= m["h_final"] <= structure.CONFIG["h_tol"]
    logs = metrics_of(tmp_path)
    assert [r["step"] for r in logs] == list(range(1, m["steps"] + 1))
    assert all(r["total_steps"] == structure.CONFIG["max_outer"] for r in logs)
    assert {"h", "rho", "alpha", "shd", "nnz", "accepted"} <= set(logs[-1])


def test_a_huge_sparsity_weight_empties_the_graph(tmp_path):
    cfg = {**SMALL, "seed": 1, "lambda_sparse": 10.0}
    m = structure.train(cfg, RunContext(tmp_path, cfg))
    assert m["nnz"] == 0 and m["tpr"] == 0 and m["shd"] == m["n_true_edges"]


# ---------------------------------------------------------------- resume

def test_resume_is_bit_identical(tmp_path):
    cfg = {**SMALL, "seed": 3}
    straight = tmp_path / "straight run"
    expected = structure.train(cfg, StoppingContext(straight, cfg, every_steps=4))
    assert expected["steps"] > 8

    resumed = tmp_path / "resumed 'run'"
    for stop in (3, 8):
        with pytest.raises(Interrupted):
            structure.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=4))
        random.seed(999), np.random.seed(999), torch.manual_seed(999)   # a new process's RNG, not ours
    got = structure.train(cfg, StoppingContext(resumed, cfg, every_steps=4))

    assert strip_times(got) == strip_times(expected)
    assert [strip_times(r) for r in metrics_of(resumed)] == [strip_times(r) for r in metrics_of(straight)]
    a = checkpoint.load_latest(straight / "checkpoints")[1]["state"]
    b = checkpoint.load_latest(resumed / "checkpoints")[1]["state"]
    assert torch.equal(a["w_accepted"], b["w_accepted"]) and a["rho"] == b["rho"] and a["alpha"] == b["alpha"]


def test_a_changed_config_does_not_resume(tmp_path):
    cfg = {**SMALL, "seed": 1}
    with pytest.raises(Interrupted):
        structure.train(cfg, StoppingContext(tmp_path, cfg, stop_at=2, every_steps=10))
    with pytest.raises(ValueError, match="lambda_sparse"):
        structure.train({**cfg, "lambda_sparse": 0.5}, StoppingContext(tmp_path, cfg))
