"""models/poh.py: the parser's losses per mode, halting at inference, CoNLL-U input, learning, exact resume.

Tiny configs (d=32, a few hundred synthetic sentences, 1-2 epochs) keep the file to seconds on two cores.
"""
import random

import numpy as np
import pytest
import torch

from jobs.runtime import checkpoint
from jobs.runtime.context import Interrupted, RunContext
from jobs.spec import task_schema
from models import poh, treebank
from models.refine import halting_distribution
from tests.taskctx import StoppingContext, metrics_of, strip_times

TINY = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_train_sents": 96, "n_dev_sents": 40, "epochs": 2,
        "batch_size": 16, "lr": 1e-3, "log_every": 2, "seed": 7}
STEPS_PER_EPOCH = 6                 # 96 sentences / 16


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_config_is_a_literal_with_the_studys_defaults():
    defaults, choices, _ = task_schema("poh")
    assert defaults == poh.CONFIG and choices == poh.CHOICES
    c = poh.CONFIG
    assert (c["max_inner_iters"], c["batch_size"], c["lr"], c["epochs"]) == (3, 32, 3e-5, 3)
    assert (c["deep_supervision"], c["act_halting"], c["ponder_coef"], c["grad_clip"]) == (False, False, 1e-3, 1.0)
    assert c["ds_schedule"] == "linear" and poh.CHOICES["ds_schedule"] == ["linear", "exp", "uniform"]
    assert poh.CHOICES["halting_mode"] == ["fixed", "entropy", "halting"]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="max_iner_iters"):
        poh.resolve({"max_iner_iters": 2})
    with pytest.raises(ValueError, match="act_halting"):
        poh.resolve({"halting_mode": "halting"})
    with pytest.raises(ValueError, match="ds_weights must be 3"):
        poh.resolve({"ds_weights": [0.3, 1.0]})
    with pytest.raises(ValueError, match="conllu_dir"):
        poh.resolve({"data_source": "conllu"})
    assert poh.ds_weight_list(poh.resolve({"ds_weights": [0.3, 0.5, 1.0]})) == [0.3, 0.5, 1.0]
    assert poh.ds_weight_list(poh.resolve({})) == pytest.approx([0.3, 0.65, 1.0])


# ---------------------------------------------------------------- losses per mode

def _batch(cfg, n=8):
    cfg = poh.resolve({**TINY, **cfg})
    data = poh.load_data(cfg)
    items = poh.encode(data["train"][:n], data["vocab"])
    model = poh.build_model(cfg, len(data["vocab"]) + 3)
    model.eval()
    words, tags, heads, mask = poh.collate(items, "cpu")
    scores, routes, halts = model(words, tags)
    return cfg, model, scores, halts, heads, mask


def test_standard_and_deep_supervision_losses():
    cfg, _, scores, halts, heads, mask = _batch({})
    ce = poh.per_token_ce(scores, heads, mask)
    ce_iter = ce.sum(dim=(0, 2)) / mask.sum()
    loss, got_iter, ponder = poh.objective(cfg, scores, halts, heads, mask)
    assert torch.allclose(got_iter, ce_iter) and ponder is None
    assert torch.allclose(loss, ce_iter[-1])
    # per-token CE is the pointer's cross-entropy over heads ROOT..n
    b, i = 0, 1
    manual = -torch.log_softmax(scores[b, 0, i], -1)[heads[b, i]]
    assert torch.allclose(ce[b, 0, i], manual)
    ds = poh.resolve({**cfg, "deep_supervision": True})
    w = torch.tensor([0.3, 0.65, 1.0])
    assert torch.allclose(poh.objective(ds, scores, halts, heads, mask)[0], (w * ce_iter).sum() / w.sum())
    stated = poh.resolve({**ds, "ds_weights": [0.3, 0.5, 1.0]})
    w = torch.tensor([0.3, 0.5, 1.0])
    assert torch.allclose(poh.objective(stated, scores, halts, heads, mask)[0], (w * ce_iter).sum() / w.sum())


def test_act_loss_is_the_expected_loss_plus_ponder():
    cfg, _, scores, halts, heads, mask = _batch({"act_halting": True, "ponder_coef": 0.01})
    ce = poh.per_token_ce(scores, heads, mask)
    p = halting_distribution(halts.transpose(1, 2))                     # (B, n, I)
    steps = torch.tensor([1.0, 2.0, 3.0])
    tok = mask.nonzero().tolist()
    exp_loss = sum((p[b, i] * ce[b, :, i]).sum() for b, i in tok) / len(tok)
    ponder = sum((p[b, i] * steps).sum() for b, i in tok) / len(tok)
    loss, _, got_ponder = poh.objective(cfg, scores, halts, heads, mask)
    assert torch.allclose(got_ponder, ponder) and torch.allclose(loss, exp_loss + 0.01 * ponder)
    both = poh.resolve({**cfg, "deep_supervision": True, "ds_schedule": "uniform"})
    assert torch.allclose(poh.objective(both, scores, halts, heads, mask)[0], loss)   # uniform w: p unchanged


def test_deep_supervision_sends_gradient_to_every_iteration_readout():
    """The first iteration's output gets gradient from the loss only when it is supervised."""
    cfg, model, scores, halts, heads, mask = _batch({"dropout": 0.0})
    for ds, first_iter_grad in ((False, 0), (True, 1)):
        c = poh.resolve({**cfg, "deep_supervision": ds})
        s = scores.detach().requires_grad_(True)
        poh.objective(c, s, halts, heads, mask)[0].backward()
        assert (s.grad[:, 0].abs().sum() > 0) == bool(first_iter_grad)
        assert s.grad[:, -1].abs().sum() > 0


# ---------------------------------------------------------------- inference halting

def _eval(cfg, halt_bias=None):
    cfg = poh.resolve({**TINY, **cfg})
    data = poh.load_data(cfg)
    model = poh.build_model(cfg, len(data["vocab"]) + 3).eval()
    if halt_bias is not None:
        with torch.no_grad():
            model.poh.halt[1].weight.zero_()
            model.poh.halt[1].bias.fill_(halt_bias)
    return poh.evaluate(model, poh.encode(data["dev"], data["vocab"]), cfg, "cpu")


def test_entropy_halting_at_inference():
    never = _eval({"ent_threshold": 0.0})
    always = _eval({"ent_threshold": 100.0, "halting_mode": "entropy"})
    assert never["dev_iters_entropy_halt"] == 3.0 and never["dev_uas_entropy_halt"] == never["dev_uas_iter3"]
    assert always["dev_iters_entropy_halt"] == 1.0 and always["dev_uas_entropy_halt"] == always["dev_uas_iter1"]
    assert always["dev_uas"] == always["dev_uas_iter1"] and always["dev_iters"] == 1.0
    assert never["dev_uas"] == never["dev_uas_last"] == never["dev_uas_iter3"] and never["dev_iters"] == 3.0
    late = _eval({"ent_threshold": 100.0, "halting_mode": "entropy", "min_inner_iters": 2})
    assert late["dev_iters"] == 2.0 and late["dev_uas"] == late["dev_uas_iter2"]
    for t in (1, 2, 3):
        assert 0 < never[f"dev_entropy_iter{t}"] <= np.log(4) + 1e-6


def test_learned_halting_at_inference():
    act = {"act_halting": True, "halting_mode": "halting"}
    early, late = _eval(act, halt_bias=20.0), _eval(act, halt_bias=-20.0)
    assert early["dev_iters"] == 1.0 and early["dev_uas"] == early["dev_uas_iter1"]
    assert early["dev_expected_iters"] == pytest.approx(1.0, abs=1e-6)
    assert late["dev_iters"] == 3.0 and late["dev_uas"] == late["dev_uas_iter3"]
    assert late["dev_expected_iters"] == pytest.approx(3.0, abs=1e-6)      # the leftover mass halts at the last step
    mid = _eval(act, halt_bias=0.0)                 # sigmoid 0.5 is not > 0.5: no token halts early
    assert mid["dev_iters"] == 3.0 and mid["dev_expected_iters"] == pytest.approx(0.5 + 2 * 0.25 + 3 * 0.25)


# ---------------------------------------------------------------- training

def test_training_learns_and_logs_per_iteration_metrics(tmp_path):
    cfg = {**TINY, "n_train_sents": 400, "epochs": 3, "batch_size": 32, "deep_supervision": True, "dropout": 0.0}
    m = poh.train(cfg, RunContext(tmp_path, cfg))
    # chance is about 1/10 (a head among the sentence's words); the grammar is learnable
    assert m["dev_uas"] > 0.5, m
    logs = metrics_of(tmp_path)
    evals = [r for r in logs if "dev_uas" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert evals[-1]["dev_uas_iter3"] > evals[0]["dev_uas_iter3"]
    for key in ("loss", "train_uas", "grad_norm", "ce_iter1", "ce_iter3"):
        assert key in logs[0]
    assert m["steps"] == 3 * 13 and m["train_sentences"] == 400


def test_conllu_data_source(tmp_path):
    folder = tmp_path / "ud data"
    folder.mkdir()
    treebank.write_conllu(folder / "xx_toy-ud-train.conllu", treebank.generate(40, seed=11))
    treebank.write_conllu(folder / "xx_toy-ud-dev.conllu", treebank.generate(10, seed=12))
    cfg = {**TINY, "data_source": "conllu", "conllu_dir": str(folder), "epochs": 1, "max_inner_iters": 1}
    m = poh.train(cfg, RunContext(tmp_path / "run", cfg))
    assert m["train_sentences"] == 40 and m["dev_sentences"] == 10 and m["steps"] == 3
    assert "dev_uas_iter2" not in m and 0 <= m["dev_uas"] <= 1


@pytest.mark.parametrize("mode", [{"deep_supervision": True}, {"act_halting": True, "halting_mode": "halting"}])
def test_resume_is_bit_identical(tmp_path, mode):
    cfg = {**TINY, **mode}
    straight = tmp_path / "straight"
    expected = poh.train(cfg, StoppingContext(straight, cfg, every_steps=STEPS_PER_EPOCH))
    resumed = tmp_path / "resumed"
    for stop in (3, STEPS_PER_EPOCH):
        with pytest.raises(Interrupted):
            poh.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=STEPS_PER_EPOCH))
        random.seed(999), np.random.seed(999), torch.manual_seed(999)
    got = poh.train(cfg, StoppingContext(resumed, cfg, every_steps=STEPS_PER_EPOCH))
    assert strip_times(got) == strip_times(expected)
    assert [strip_times(r) for r in metrics_of(resumed)] == [strip_times(r) for r in metrics_of(straight)]
    a = checkpoint.load_latest(straight / "checkpoints")[1]["state"]
    b = checkpoint.load_latest(resumed / "checkpoints")[1]["state"]
    assert a["step"] == b["step"] == 2 * STEPS_PER_EPOCH
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_checkpoint_saved_under_another_config_is_refused(tmp_path):
    cfg = poh.resolve(TINY)
    with pytest.raises(Interrupted):
        poh.train(cfg, StoppingContext(tmp_path, cfg, stop_at=2, every_steps=1))
    other = {**cfg, "seed": 8}
    with pytest.raises(ValueError, match=r"poh: .*other values of \['seed'\]"):
        poh.train(other, StoppingContext(tmp_path, other))


# ---------------------------------------------------------------- diagnostics

def test_distance_buckets():
    heads = torch.tensor([[0, 0, 1, 1, 1, 9, 1, 1, 1, 1]])      # position 0 is ROOT itself (masked)
    mask = torch.ones_like(heads, dtype=torch.bool)
    mask[0, 0] = False
    got = poh.distance_bucket(heads, mask)[0].tolist()
    # token 1 -> ROOT; 2 -> 1 (d 1); 3 -> 1 (2); 4 -> 1 (3); 5 -> 9 (4); 6 -> 1 (5); 7, 8, 9 -> 1 (6, 7, 8)
    assert got == [-1, 4, 0, 1, 2, 2, 2, 2, 3, 3]


def test_uas_by_distance_and_the_calibrated_entropy_threshold():
    cfg = poh.resolve({**TINY, "ent_quantile": 0.5})
    data = poh.load_data(cfg)
    model = poh.build_model(cfg, len(data["vocab"]) + 3).eval()
    train_set, dev = poh.encode(data["train"], data["vocab"]), poh.encode(data["dev"], data["vocab"])
    threshold = poh.calibrate_entropy(model, train_set, cfg, "cpu")
    detail = {}
    m = poh.evaluate(model, dev, cfg, "cpu", threshold=threshold, detail=detail)
    assert m["dev_ent_threshold"] == threshold and 0 < threshold <= np.log(4)
    assert 1.0 < m["dev_iters_entropy_halt"] < 3.0          # about half of the sentences stop at iteration 1
    # the buckets partition the tokens: their UAS, weighted by their counts, is the overall UAS
    words, tags, heads, mask, sub = poh.batch_of(dev, "cpu")
    bucket = poh.distance_bucket(heads, mask)
    names = ["1", "2", "3_6", "7p", "root"]
    counts = [int((bucket == b).sum()) for b in range(5)]
    overall = sum(m[f"dev_uas_dist{n}"] * c for n, c in zip(names, counts) if c) / sum(counts)
    assert overall == pytest.approx(m["dev_uas"]) and sum(counts) == int(mask.sum())
    assert detail["uas_by_dist"] == [m[f"dev_uas_dist{n}"] for n in names[:4]]
    routes = torch.tensor(detail["route_weights"])
    assert routes.shape == (3, 4) and torch.allclose(routes.sum(-1), torch.ones(3, dtype=routes.dtype))
    assert poh.calibrate_entropy(model, train_set, poh.resolve({**TINY, "ent_threshold": 0.33}), "cpu") == 0.33


def test_training_logs_the_controller_gradients_and_per_iteration_lines(tmp_path):
    cfg = {**TINY, "epochs": 1}
    m = poh.train(cfg, RunContext(tmp_path, cfg))
    logs = metrics_of(tmp_path)
    steps = [r for r in logs if "ctrl_grad_static" in r]
    assert steps and all(r["ctrl_grad_static"] > 0 and r["ctrl_grad_recurrent"] > 0 for r in steps)
    assert all(r["ctrl_grad_ratio"] == pytest.approx(r["ctrl_grad_static"] / r["ctrl_grad_recurrent"]) for r in steps)
    assert m["ctrl_grad_ratio"] == pytest.approx(m["ctrl_grad_static"] / m["ctrl_grad_recurrent"])
    per_iter = [r for r in logs if "dev_iter" in r]
    assert [r["dev_iter"] for r in per_iter] == [1, 2, 3]
    assert [r["dev_uas_at_iter"] for r in per_iter] == [m[f"dev_uas_iter{t}"] for t in (1, 2, 3)]
    assert per_iter[0]["head_edges"] == [0.0, 1.0, 2.0, 3.0, 4.0] and len(per_iter[0]["route_weights"]) == 4
    dist = [r for r in logs if "dist_bucket" in r]
    assert [r["dist_bucket"] for r in dist] == [1, 2, 3, 7]
    assert dist[0]["dev_uas_by_dist"] == m["dev_uas_dist1"]
