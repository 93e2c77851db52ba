"""The neural_dag workload: mean-reduced losses, the plateau schedule, clip counting, the threshold
search, the SEM generator and file reader, the health log and warnings, exact resume.

Tiny configs (5 variables, tens of short series, a few epochs) keep the file to seconds on two cores.
"""
import json
import random
import warnings

import numpy as np
import pytest
import torch

from jobs.spec import task_schema
from models import neural_dag, sem_data, structure
from tests.taskctx import StoppingContext, metrics_of, strip_times

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::models.neural_dag.HealthWarning")

TINY = {"n_nodes": 5, "edge_prob": 0.5, "n_samples": 40, "n_timesteps": 4, "batch_size": 8,
        "latent_dim": 4, "hidden_dim": 8, "epochs": 6, "seed": 3}
SEM = {"seed": 0, "n_nodes": 8, "edge_prob": 0.4, "n_samples": 30, "n_timesteps": 6, "sem_type": "linear",
       "noise_type": "gaussian", "noise_scale": 1.0, "ar_coef": 0.5}


def _model_and_batch(seed=0, b=6, t=5, d=5):
    torch.manual_seed(seed)
    model = neural_dag.NeuralDAG(d, 4, 8)
    with torch.no_grad():
        model.logits.normal_()                  # an A with cycles, so the acyclicity term is not 0
    x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


# ---------------------------------------------------------------- config

def test_config_is_a_literal_the_spec_validator_reads_with_the_studys_defaults():
    defaults, choices, _ = task_schema("neural_dag")
    assert defaults == neural_dag.CONFIG and choices == neural_dag.CHOICES
    c = neural_dag.CONFIG
    assert (c["lambda_recon"], c["lambda_sparse"], c["lambda_acyclic"], c["lambda_disen"]) == (10.0, 1e-4, 1e-5, 1e-4)
    assert (c["lr"], c["weight_decay"], c["max_norm"], c["seed"], c["epochs"]) == (5e-4, 1e-4, 1.0, 1337, 100)
    assert (c["lr_factor"], c["lr_patience"], c["lr_cooldown"], c["n_power"], c["acyclicity"]) == (0.5, 3, 1, 3, "power")
    with pytest.raises(ValueError, match="lambda_sparsity"):
        neural_dag.resolve({"lambda_sparsity": 0.1})
    with pytest.raises(ValueError, match="'logdet'"):
        neural_dag.resolve({"acyclicity": "logdet"})


# ---------------------------------------------------------------- losses

def test_every_loss_is_mean_reduced():
    """The same batch twice over gives the same value (a sum over samples would double it)."""
    model, x = _model_and_batch()
    cfg = neural_dag.resolve({})
    x2 = torch.cat([x, x])
    out, out2 = model(x), model(x2)
    total, parts = neural_dag.losses(out, x, cfg)
    total2, parts2 = neural_dag.losses(out2, x2, cfg)
    assert set(parts) == {"recon", "sparse", "acyclic", "disen"}
    for k in parts:
        assert parts[k].ndim == 0 and parts[k].item() > 0, k
        assert parts2[k].item() == pytest.approx(parts[k].item(), rel=1e-5), k
    assert total2.item() == pytest.approx(total.item(), rel=1e-5)
    # and so are the gradients
    g1 = torch.autograd.grad(total, model.w1)[0]
    g2 = torch.autograd.grad(neural_dag.losses(model(x2), x2, cfg)[0], model.w1)[0]
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)
    # more time steps or more variables do not grow them either: recon of a constant error is that error^2
    assert neural_dag.reconstruction_loss(torch.zeros(3, 7, 4), torch.full((3, 7, 4), 2.0)).item() == 4.0
    assert neural_dag.sparsity_loss(torch.full((6, 6), 0.25)).item() == 0.25


def test_acyclicity_is_zero_on_dags_and_positive_on_cycles():
    dag = torch.tensor([[0, 0.9, 0.8], [0, 0, 0.7], [0, 0, 0]])
    cyc = dag.clone()
    cyc[2, 0] = 0.6
    for kind in ("power", "expm"):
        assert neural_dag.acyclicity_loss(dag, kind).item() == pytest.approx(0, abs=1e-6), kind
        assert neural_dag.acyclicity_loss(cyc, kind).item() > 1e-4, kind
    # power: tr((I + A/d)^3) - d, by hand for a 2-cycle of weights a, b: 3 * 2ab / d^2
    two = torch.tensor([[0, 0.5], [0.4, 0]])
    assert neural_dag.acyclicity_loss(two, "power", 3).item() == pytest.approx(3 * 2 * 0.5 * 0.4 / 4, rel=1e-5)


def test_disentanglement_is_zero_for_uncorrelated_and_large_for_copied_latents():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200, 10, 3, generator=gen)
    indep = neural_dag.disentanglement_loss(z, torch.randn(200, 10, 3, generator=gen),
                                            torch.randn(200, 10, 3, generator=gen))
    same = neural_dag.disentanglement_loss(z, z, -z)
    assert indep.item() < 0.1 and same.item() > 0.9


# ---------------------------------------------------------------- schedule and clipping

def test_the_scheduler_halves_the_lr_after_three_flat_epochs():
    model, _ = _model_and_batch()
    cfg = neural_dag.resolve({})
    opt = neural_dag.make_optimizer(model, cfg)
    sched = neural_dag.make_scheduler(opt, cfg)
    assert opt.param_groups[0]["lr"] == 5e-4 and opt.param_groups[0]["weight_decay"] == 1e-4
    lrs = []
    for val in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        sched.step(val)
        lrs.append(opt.param_groups[0]["lr"])
    # epoch 1 sets the best; epochs 2-4 are 3 flat ones (patience 3); the 5th flat epoch cuts;
    # one cooldown epoch, then 4 more flat ones cut again
    assert lrs[:4] == [5e-4] * 4
    assert lrs[4] == 2.5e-4
    assert lrs[5:9] == [2.5e-4] * 4 and lrs[9] == 1.25e-4


def test_improving_epochs_keep_the_lr():
    model, _ = _model_and_batch()
    cfg = neural_dag.resolve({})
    opt = neural_dag.make_optimizer(model, cfg)
    sched = neural_dag.make_scheduler(opt, cfg)
    for val in np.linspace(1, 0.5, 12):
        sched.step(float(val))
    assert opt.param_groups[0]["lr"] == 5e-4


def test_clip_ratio_counts_the_batches_over_max_norm():
    """With lr 0 the weights stay put, so every pass sees the same per-batch norms; the ratio is the
    share of those above max_norm, and clipping really rescales them."""
    cfg = neural_dag.resolve(TINY)
    data = neural_dag.prepare_data(cfg)
    torch.manual_seed(0)
    model = neural_dag.NeuralDAG(5, 4, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, norms = neural_dag.run_epoch(model, opt, data["x_train"], {**cfg, "max_norm": 1e9},
                                    torch.Generator().manual_seed(1))
    assert len(norms) == 4                                    # 32 training series / batch 8
    cut = float(np.median(norms))
    _, again = neural_dag.run_epoch(model, opt, data["x_train"], {**cfg, "max_norm": cut},
                                    torch.Generator().manual_seed(1))
    assert again == norms
    expected = sum(n > cut for n in norms) / len(norms)
    assert 0 < expected < 1
    assert neural_dag.clip_ratio(again, cut) == expected
    assert neural_dag.clip_ratio([0.5, 1.0, 1.5, 3.0], 1.0) == 0.5       # exactly max_norm is not clipped
    # the gradient left after the last batch has norm <= max_norm
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert total.item() <= cut * (1 + 1e-5)


# ---------------------------------------------------------------- validation protocol

def test_threshold_search_finds_the_f1_best_of_the_21():
    rng = np.random.default_rng(0)
    b = (rng.random((7, 7)) < 0.3).astype(int)
    np.fill_diagonal(b, 0)
    a = np.clip(0.35 * b + rng.random((7, 7)) * 0.6, 0, 1)           # true edges score higher, with overlap
    np.fill_diagonal(a, 0.99)                                         # the diagonal is never an edge
    best_t, best = neural_dag.threshold_search(a, b)

    def f1(t):                                                        # an independent F1 over off-diagonal pairs
        off = ~np.eye(7, dtype=bool)
        pred, true = (a > t) & off, (b != 0) & off
        tp = (pred & true).sum()
        return 2 * tp / (pred.sum() + true.sum())
    scores = [f1(t) for t in np.linspace(0, 1, 21)]
    assert len(neural_dag.THRESHOLDS) == 21 and neural_dag.THRESHOLDS[1] == 0.05
    assert best["f1"] == pytest.approx(max(scores))
    assert best_t == pytest.approx(np.linspace(0, 1, 21)[int(np.argmax(scores))])
    assert 0 < best_t < 1 and best["f1"] > scores[0]
    assert best["shd"] == structure.count_accuracy(b, (a > best_t) & ~np.eye(7, dtype=bool))["shd"]


def test_count_accuracy_is_notears_and_adds_f1():
    true = np.zeros((4, 4))
    true[0, 1] = true[1, 2] = true[2, 3] = 1
    est = np.zeros((4, 4))
    est[0, 1] = est[2, 1] = est[0, 3] = 1
    m = neural_dag.count_accuracy(true, est)
    assert neural_dag.count_accuracy is structure.count_accuracy          # one scorer for both tasks
    assert {k: m[k] for k in ("shd", "tpr", "fdr", "nnz")} == {"shd": 3, "tpr": 1 / 3, "fdr": 2 / 3, "nnz": 3}
    assert m["f1"] == pytest.approx(2 * 1 / (3 + 3))


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("sem_type,noise_type", [("linear", "gaussian"), ("nonlinear", "laplace"),
                                                 ("linear", "uniform")])
def test_generated_dag_is_acyclic_and_fixed_by_the_seed(sem_type, noise_type):
    cfg = {**SEM, "sem_type": sem_type, "noise_type": noise_type}
    x, b, w = sem_data.generate(cfg)
    x2, b2, w2 = sem_data.generate(cfg)
    assert np.array_equal(x, x2) and np.array_equal(b, b2)
    assert not np.array_equal(x, sem_data.generate({**cfg, "seed": 1})[0])
    assert x.shape == (30, 6, 8) and b.shape == (8, 8) and b.sum() >= 5
    assert sem_data.is_dag(b) and not np.diag(b).any() and structure.is_dag(b)
    assert np.array_equal(b != 0, w != 0)
    # the same graph as the structure task draws for the same seed, n_nodes and edge_prob
    w_iid, _ = structure.simulate({"seed": 0, "n_nodes": 8, "edge_prob": 0.4, "n_samples": 5, "noise_scale": 1.0})
    assert np.array_equal(w, w_iid)


def test_the_linear_sem_holds_and_the_noise_has_its_scale():
    cfg = {**SEM, "n_samples": 3000, "noise_type": "uniform", "noise_scale": 0.7}
    x, b, w = sem_data.generate(cfg)
    resid = x[:, 1:] - 0.5 * x[:, :-1] - x[:, 1:] @ w
    assert np.allclose(resid.std(axis=(0, 1)), 0.7, rtol=0.05)
    assert np.abs(resid).max() <= 0.7 * np.sqrt(3) + 1e-9


def test_standardisation_is_fitted_on_train_and_applied_to_val():
    cfg = neural_dag.resolve({**TINY, "n_samples": 50})
    d = neural_dag.prepare_data(cfg)
    assert d["x_train"].shape == (40, 4, 5) and d["x_val"].shape == (10, 4, 5)
    tr = d["x_train"].double()
    assert torch.allclose(tr.mean((0, 1)), torch.zeros(5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(tr.std((0, 1), unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-5)
    x, _ = sem_data.load(cfg)
    perm = np.random.default_rng(cfg["seed"] + 1).permutation(50)
    raw_val = x[perm[:10]]
    assert np.allclose(d["x_val"].numpy(), (raw_val - d["mean"]) / d["std"], atol=1e-5)


def test_a_users_arrays_are_read_from_npz_or_npy(tmp_path):
    x, b, _ = sem_data.generate(SEM)
    np.savez(tmp_path / "mine.npz", X=x, B=b)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "g.npy", b.astype(float) * 1.7)
    for cfg in ({"data": "file", "data_file": str(tmp_path / "mine.npz")},
                {"data": "file", "data_file": str(tmp_path / "x.npy"), "graph_file": str(tmp_path / "g.npy")}):
        x2, b2 = sem_data.load(cfg)
        assert np.array_equal(x2, x) and np.array_equal(b2, b)
    np.savez(tmp_path / "nograph.npz", X=x)
    with pytest.raises(ValueError, match="graph_file"):
        sem_data.load_arrays(tmp_path / "nograph.npz")
    np.savez(tmp_path / "bad.npz", X=x, B=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        sem_data.load_arrays(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        sem_data.load_arrays(tmp_path / "missing.npz")
    # both tasks train on it
    cfg = {**TINY, "data": "file", "data_file": str(tmp_path / "mine.npz"), "epochs": 1}
    m = neural_dag.train(cfg, StoppingContext(tmp_path / "nd", cfg))
    assert m["n_true_edges"] == int(b.sum())
    scfg = {"data": "file", "data_file": str(tmp_path / "mine.npz"), "max_outer": 3}
    assert structure.train(scfg, StoppingContext(tmp_path / "st", scfg))["n_true_edges"] == int(b.sum())


def test_notears_reads_the_same_generated_data():
    cfg = structure.resolve({**SEM, "data": "sem"})
    b, x = structure.load_data(cfg)
    xs, bs, _ = sem_data.generate(cfg)
    assert np.array_equal(b != 0, bs != 0) and x.shape == (30 * 6, 8)
    flat = xs.reshape(-1, 8)
    assert np.allclose(x, (flat - flat.mean(0)) / (flat.std(0) + 1e-8))
    # the default still is the iid SEM, so old runs keep their ids and their data
    w, x_iid = structure.load_data(structure.resolve({"n_nodes": 5, "n_samples": 20}))
    assert np.array_equal(x_iid, structure.simulate(structure.resolve({"n_nodes": 5, "n_samples": 20}))[1])


# ---------------------------------------------------------------- the health log

HEALTH = ("epoch", "train_loss", "train_loss_components", "val_f1", "val_shd", "edge_count",
          "grad_clip_ratio", "learning_rate", "best_threshold", "epoch_time",
          "grad_adj_recon", "grad_adj_sparse", "grad_adj_acyclic")


def test_health_log_has_the_studys_fields_every_epoch(tmp_path, capsys):
    cfg = {**TINY, "epochs": 3}
    m = neural_dag.train(cfg, StoppingContext(tmp_path, cfg))
    logs = metrics_of(tmp_path)
    # the study's console line, one per epoch, from the same numbers as metrics.jsonl
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Epoch ")]
    assert len(lines) == 3, lines
    for ln, r in zip(lines, logs):
        assert ln.startswith(f"Epoch {r['epoch']:3d}/3 | Loss: ") and f"Val F1: {r['val_f1']:.4f}" in ln, ln
        assert f"Edges: {r['edge_count']:3d}/{m['n_true_edges']}" in ln and f"LR: {r['learning_rate']:.2e}" in ln, ln
    assert sum(ln.endswith("| NEW BEST") for ln in lines) >= 1 and lines[0].endswith("| NEW BEST")
    assert [r["epoch"] for r in logs] == [1, 2, 3] == [r["step"] for r in logs]
    for r in logs:
        assert set(HEALTH) <= set(r)
        assert set(r["train_loss_components"]) == {"recon", "sparse", "acyclic", "disen"}
        for k, v in r["train_loss_components"].items():
            assert r[f"loss_{k}"] == v
        assert r["train_loss"] == pytest.approx(sum(cfg.get(f"lambda_{k}", neural_dag.CONFIG[f"lambda_{k}"]) * v
                                                    for k, v in r["train_loss_components"].items()), rel=1e-5)
        assert 0 <= r["grad_clip_ratio"] <= 1 and np.abs(np.linspace(0, 1, 21) - r["best_threshold"]).min() < 1e-12
        assert isinstance(r["warnings"], list)
    assert m["epochs_run"] == 3 and m["val_f1"] == logs[-1]["val_f1"] and m["steps"] == 3 * 4


def test_collapsed_edges_raise_health_warnings(tmp_path, capsys):
    cfg = {**TINY, "epochs": 2, "lambda_sparse": 1e6, "lr": 0.5}
    with pytest.warns(neural_dag.HealthWarning, match="edge_count 0"):
        m = neural_dag.train(cfg, StoppingContext(tmp_path, cfg))
    assert m["edge_count"] == 0
    assert any("edge_count 0" in w for w in metrics_of(tmp_path)[-1]["warnings"])
    assert "neural_dag health: epoch 2: edge_count 0" in capsys.readouterr().err


def test_early_stopping_stops_after_patience_flat_epochs(tmp_path):
    cfg = {**TINY, "epochs": 50, "lr": 1e-12, "early_stop_patience": 2, "early_stop_metric": "val_f1"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", neural_dag.HealthWarning)
        m = neural_dag.train(cfg, StoppingContext(tmp_path, cfg))
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 1


# ---------------------------------------------------------------- resume

def test_resume_is_bit_identical(tmp_path):
    cfg = {**TINY, "epochs": 5}
    straight = tmp_path / "straight run"
    expected = neural_dag.train(cfg, StoppingContext(straight, cfg, every_steps=1))
    resumed = tmp_path / "resumed 'run'"
    for stop in (2, 4):
        with pytest.raises(Exception) as info:
            neural_dag.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=1))
        assert type(info.value).__name__ == "Interrupted"
        random.seed(999), np.random.seed(999), torch.manual_seed(999)   # a new process's RNG, not ours
    got = neural_dag.train(cfg, StoppingContext(resumed, cfg, every_steps=1))
    assert strip_times(got) == strip_times(expected)
    drop = lambda r: {k: v for k, v in strip_times(r).items() if k != "epoch_time"}
    assert [drop(r) for r in metrics_of(resumed)] == [drop(r) for r in metrics_of(straight)]


def test_a_changed_config_does_not_resume(tmp_path):
    cfg = {**TINY, "epochs": 4}
    with pytest.raises(Exception):
        neural_dag.train(cfg, StoppingContext(tmp_path, cfg, stop_at=1, every_steps=1))
    with pytest.raises(ValueError, match="lambda_sparse"):
        neural_dag.train({**cfg, "lambda_sparse": 0.5}, StoppingContext(tmp_path, cfg))


def test_health_checks_follow_the_healthy_ranges():
    row = {"grad_clip_ratio": 0.5, "learning_rate": 5e-4, "edge_count": 3, "val_f1": 0.2, "best_threshold": 0.45}
    falling = [5.0, 4.0, 3.0, 2.5, 2.2, 2.0]
    assert neural_dag.health_warnings(row, falling) == []
    bad = neural_dag.health_warnings({**row, "grad_clip_ratio": 0.9, "edge_count": 0, "val_f1": 0,
                                      "best_threshold": 0.5}, [2.0, 2.1, 1.9, 2.0, 2.05, 1.999])
    assert len(bad) == 5 and json.loads(json.dumps(bad)) == bad
    assert any("best_threshold 0.50" in w for w in bad) and any("train_loss flat" in w for w in bad)
    assert neural_dag.health_warnings(row, [2.0, 2.0, 2.0]) == []        # too few epochs to judge a trend


def test_early_stopping_watches_f1_by_default_and_val_loss_on_request(tmp_path):
    assert neural_dag.CONFIG["early_stop_metric"] == "val_f1"
    cfg = {**TINY, "epochs": 50, "early_stop_patience": 2, "early_stop_metric": "val_loss"}
    m = neural_dag.train(cfg, StoppingContext(tmp_path / "loss", cfg))
    logs = metrics_of(tmp_path / "loss")
    best = min(range(len(logs)), key=lambda i: logs[i]["val_loss"])
    assert m["best_epoch"] == best + 1


def test_adjacency_gradients_scale_with_their_lambda():
    """The diagnostic that says why the study's lambdas do nothing: each term's gradient on the logits."""
    model, x = _model_and_batch()
    cfg = neural_dag.resolve({})
    one = neural_dag.adjacency_gradients(model, x, cfg)
    ten = neural_dag.adjacency_gradients(model, x, {**cfg, "lambda_sparse": 10 * cfg["lambda_sparse"]})
    assert ten["grad_adj_sparse"] == pytest.approx(10 * one["grad_adj_sparse"], rel=1e-5)
    assert ten["grad_adj_recon"] == one["grad_adj_recon"] > 1e3 * one["grad_adj_sparse"] > 0


def test_the_choices_are_the_generators():
    for task in (neural_dag, structure):
        assert task.CHOICES["sem_type"] == sem_data.SEM_TYPES and task.CHOICES["noise_type"] == sem_data.NOISE_TYPES
