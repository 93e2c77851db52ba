"""The depth-recurrent language models: causality, MACs, routing, exact resume, the eval task.

Tiny models (width 32, 4 layers, 3 repeats, 100 KB of byte-level text) keep the file under a minute.
"""
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.runtime import checkpoint
from models import corpus, cotformer_train, lm_eval
from models.cotformer import build_model
from models.macs import forward_macs
from tests.taskctx import StoppingContext, metrics_of, strip_times

Interrupted = __import__(StoppingContext.__mro__[1].__module__, fromlist=["Interrupted"]).Interrupted

MODEL = dict(vocab_size=256, n_embd=32, n_head=4, n_layer=4, n_layer_begin=1, n_layer_end=1, n_repeat=3,
             dropout=0.0, bias=False, disable_ln_mid=False, depth_embedding="linear_learned",
             depth_random_method="uniform", training_length_factor=[])
KINDS = ["base", "cotformer", "ln_cotformer", "adm"]


def _model(kind, **kw):
    torch.manual_seed(0)
    return build_model(dict(MODEL, model=kind, **kw)).eval()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    corpus.build(d, max_bytes=100_000, val_fraction=0.04)   # 4,000 val tokens
    return d


def _spread_routers(model, std=3.0):
    """Router weights spread over (0, 1), as a trained router's are, instead of all near 0.5."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for r in model.routers:
            r.weight.copy_(torch.randn(r.weight.shape, generator=g) * std / math.sqrt(r.weight.shape[1]))


# ---------------------------------------------------------------- model

@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_causality(kind):
    model = _model(kind)
    if kind == "adm":
        _spread_routers(model)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    later = idx.clone()
    later[:, 13] = (later[:, 13] + 7) % 256
    modes = [{}] if kind != "adm" else [{}, {"threshold": 0.5}, {"depth": 2}]
    for kw in modes:
        a, b = model(idx, **kw), model(later, **kw)
        assert a["logits"].shape == (2, 24, 256)
        # no position before 13 sees token 13, through any repeat's accumulated keys
        assert torch.equal(a["logits"][:, :13], b["logits"][:, :13]), kw
        assert not torch.allclose(a["logits"][:, 13:], b["logits"][:, 13:])
    if kind in ("cotformer", "ln_cotformer"):
        # the accumulated keys matter: repeat 2 of position t reads repeat 1 of positions <= t
        assert not torch.allclose(model(idx, depth=2)["logits"], model(idx, depth=1)["logits"])


@pytest.mark.parametrize("kind,kw", [("base", {}), ("cotformer", {}), ("ln_cotformer", {"depth": 2}),
                                     ("ln_cotformer", {}), ("adm", {"depth": 1}), ("adm", {"depth": 3}),
                                     ("adm", {"length_factors": [0.5, 0.25]})])
def test_macs_match_the_flop_counter(kind, kw):
    model = _model(kind)
    idx = torch.randint(0, 256, (3, 16))
    with FlopCounterMode(display=False) as fc:
        out = model(idx, idx, **kw)
    assert fc.get_total_flops() == 2 * int(forward_macs(model.cfg, out["counts"]).sum())


def test_threshold_sets_each_tokens_depth_and_is_monotone_in_macs():
    model = _model("adm")
    _spread_routers(model)
    idx = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    macs, depths = [], []
    for t in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        out = model(idx, threshold=t)
        macs.append(float(forward_macs(model.cfg, out["counts"]).sum()))
        depths.append(out["depth"].float().mean().item())
        w1 = out["router"][0]
        assert torch.equal(out["depth"] >= 2, w1 >= 1 - t)     # past router 1 iff w_1 >= 1 - threshold
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert depths[-1] == 3.0 and depths[0] < 1.5
    full = model(idx)
    assert torch.allclose(model(idx, threshold=1.0)["logits"], full["logits"], atol=1e-5)


def test_training_routes_by_capacity_and_every_router_gets_a_gradient():
    model = _model("adm").train()
    idx = torch.randint(0, 256, (2, 20))
    out = model(idx, idx, length_factors=[0.5, 0.0])
    assert out["counts"]["repeats"][1].tolist() == [10, 10] and len(out["counts"]["repeats"]) == 2
    out["loss"].backward()
    assert all(r.weight.grad is not None for r in model.routers)


def test_weight_decay_on_linear_weights_only():
    model = _model("adm")
    decay, rest = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert id(model.wte.weight) not in ids and id(model.ln_mid.weight) not in ids
    assert id(model.routers[0].weight) in ids and id(model.h_mid[0].mlp.c_fc.weight) in ids
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_schedule_final_lr_rules_and_micro_steps():
    for rule, final in [("onecycle", 1e-3 / (100 * 0.05)), ("fraction", 1e-3 * 0.05)]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        cfg = dict(cotformer_train.CONFIG, iterations=100, final_lr_rule=rule)
        sched = cotformer_train.make_scheduler(opt, cfg)
        lrs = [opt.param_groups[0]["lr"]]
        for _ in range(99):
            opt.step(), sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert math.isclose(lrs[0], 1e-3 / 100) and math.isclose(lrs[4], 1e-3)     # 5% warm-up from lr / 100 (peak at step 0.05 x 100 - 1)
        assert math.isclose(lrs[-1], final, rel_tol=1e-6) and max(lrs) <= 1e-3 * (1 + 1e-9)
    assert [cotformer_train.micro_steps(16, w) for w in (1, 2, 3, 4)] == [16, 8, 16, 4]


# ---------------------------------------------------------------- training and evaluation

def _cfg(data_dir, **kw):
    torch.set_num_threads(1)
    return {**cotformer_train.CONFIG, "data_dir": str(data_dir), **{k: v for k, v in MODEL.items() if k != "vocab_size"},
            "sequence_length": 32, "batch_size": 4, "acc_steps": 2, "iterations": 8, "eval_freq": 4,
            "eval_batches": 2, "lr": 3e-3, "seed": 5, **kw}


def test_resume_is_bit_identical(tmp_path, data_dir):
    cfg = _cfg(data_dir, model="adm")
    expected = cotformer_train.train(cfg, StoppingContext(tmp_path / "straight", cfg, every_steps=2))
    resumed = tmp_path / "resumed"
    for stop in (3, 5):
        with pytest.raises(Interrupted):
            cotformer_train.train(cfg, StoppingContext(resumed, cfg, stop_at=stop, every_steps=2))
        random.seed(9), np.random.seed(9), torch.manual_seed(9)    # another process's RNG
    got = cotformer_train.train(cfg, StoppingContext(resumed, cfg, every_steps=2))
    assert strip_times(got) == strip_times(expected)
    drop = ("time", "tokens_per_s")
    clean = lambda lines: [{k: v for k, v in l.items() if k not in drop} for l in lines]
    assert clean(metrics_of(resumed)) == clean(metrics_of(tmp_path / "straight"))
    a = checkpoint.load_latest(tmp_path / "straight" / "checkpoints")
    assert a[0] == 8 and a[1]["state"]["iteration"] == 8      # the final weights are a checkpoint


class FakeUpstream:
    """What ctx.upstream["train"] offers: run_dir, config, metrics, checkpoint(step), checkpoint_steps()."""

    def __init__(self, run_dir, config):
        self.run_dir, self.config, self.metrics = Path(run_dir), config, {}

    def checkpoint_steps(self):
        return sorted(int(p.stem.split("_")[1]) for p in (self.run_dir / "checkpoints").glob("step_*.pt"))

    def checkpoint(self, step=None):
        step = step or self.checkpoint_steps()[-1]
        path = self.run_dir / "checkpoints" / f"step_{step:08d}.pt"
        return torch.load(path, weights_only=True)["state"]


def test_eval_task_metrics_and_router_histograms(tmp_path, data_dir):
    torch.set_num_threads(1)
    cfg = _cfg(data_dir, model="adm", iterations=12, eval_freq=6)
    run = tmp_path / "train"
    ctx = StoppingContext(run, cfg, every_steps=6)
    ctx.checkpoint["keep_last"] = 5
    cotformer_train.train(cfg, ctx)
    up = FakeUpstream(run, cfg)
    assert up.checkpoint_steps() == [6, 12]
    results = {}
    for name, kw in {"full": {}, "d1": {"mode": "depth", "eval_depth": 1}, "d3": {"mode": "depth", "eval_depth": 3},
                     "t0": {"mode": "threshold", "threshold": 0.0},
                     "t1": {"mode": "threshold", "threshold": 1.0},
                     "t0c": {"mode": "threshold", "threshold": 0.0, "threshold_rule": "cascaded"},
                     "hist": {"router_hist": True}}.items():
        ecfg = {**lm_eval.CONFIG, "eval_tokens": 2048, **kw}
        ectx = StoppingContext(tmp_path / name, ecfg)
        ectx.upstream = {"train": up}
        results[name] = lm_eval.train(ecfg, ectx)
    for r in results.values():
        assert r["ppl_ci_low"] <= r["ppl"] <= r["ppl_ci_high"] and r["loss_sem"] > 0
        assert 0.0 <= r["acc"] <= 1.0 and math.isclose(r["ppl"], math.exp(r["loss"]))
        assert r["n_tokens"] == 2048 and r["evaluated_step"] == 12
    assert results["d3"]["macs_per_token"] == results["full"]["macs_per_token"]
    assert results["d1"]["avg_depth"] == 1.0 and results["d3"]["avg_depth"] == 3.0
    assert results["d1"]["macs_per_token"] < results["d3"]["macs_per_token"]
    assert results["t0"]["macs_per_token"] <= results["full"]["macs_per_token"]
    assert results["t0c"]["macs_per_token"] <= results["full"]["macs_per_token"]
    # the authors' capacity rule: threshold 1 lets every token through (factors 1), 0 only weights of exactly 1
    assert results["t1"]["length_factors"] == [1.0, 1.0] and results["t1"]["avg_depth"] == 3.0
    assert results["t0"]["length_factors"] == [0.0, 0.0] and results["t0"]["avg_depth"] == 1.0
    assert "length_factors" not in results["t0c"]
    lines = metrics_of(tmp_path / "hist")
    assert [(l["checkpoint_step"], l["repeat"], l["step"]) for l in lines] == [(6, 2, 1), (6, 3, 2), (12, 2, 3), (12, 3, 4)]
    for l in lines:
        assert len(l["hist_counts"]) == 40 and len(l["bin_edges"]) == 41
        assert sum(l["hist_counts"]) == l["n_tokens"] == 2048 and sum(l["cascade_counts"]) == 2048


def test_config_choices_match_the_models():
    from models.cotformer import DEPTH_RANDOM_METHODS, MODELS
    assert cotformer_train.CHOICES["model"] == list(MODELS)
    assert cotformer_train.CHOICES["depth_random_method"] == list(DEPTH_RANDOM_METHODS)
    for kind in MODELS:                  # every documented key reaches the model
        build_model({**cotformer_train.CONFIG, **MODEL, "model": kind, "n_layer": 3, "n_repeat": 2})


def test_two_process_ddp_training_and_resume(tmp_path, data_dir):
    """The adaptive model trained by 2 real processes (gloo), stopped by a signal mid-way and resumed,
    ends where the same 2-process run does uninterrupted (each rank's batch stream is restored)."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from jobs.store import SweepDir, atomic
    repo = Path(__file__).resolve().parents[2]
    cfg = {k: v for k, v in _cfg(data_dir, model="adm", iterations=16, eval_freq=2).items()
           if k in cotformer_train.CONFIG and v != cotformer_train.CONFIG[k]}

    def spec(root):
        root.mkdir()
        path = root / "ddp.yaml"
        path.write_text(json.dumps({"name": "ddp", "task": "cotformer_train", "base": cfg,
                                    "resources": {"tasks_per_node": 2, "time_min": 10},
                                    "checkpoint": {"every_min": None, "every_steps": 2, "keep_last": 1}}))
        return path

    def run(path, stop_after_lines=None):
        p = subprocess.Popen([sys.executable, "main.py", "run", str(path), "--root", str(path.parent), "--only", ""],
                             cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if stop_after_lines:
            sweep_dir = SweepDir(path.parent / "ddp")
            deadline = time.time() + 120
            while p.poll() is None and time.time() < deadline:
                runs = list(sweep_dir.runs.glob("*")) if sweep_dir.runs.exists() else []
                if runs and len(atomic.read_jsonl(sweep_dir.run(runs[0].name).metrics)) >= stop_after_lines:
                    p.send_signal(signal.SIGUSR2)
                    break
                time.sleep(0.05)
        out, err = p.communicate(timeout=300)
        return out.strip().splitlines()[-1], err

    ref = spec(tmp_path / "ref")
    line, err = run(ref)
    assert ": done" in line, err
    assert "rank 1 of 2" in err
    stopped = spec(tmp_path / "stopped")
    line, err = run(stopped, stop_after_lines=2)
    assert ": interrupted" in line, err
    line, err = run(stopped)
    assert ": done" in line, err

    def final(root):
        run_dir = next((root / "ddp" / "runs").iterdir())
        result = json.loads((run_dir / "result.json").read_text())
        assert result["world_size"] == 2
        return {k: v for k, v in result["metrics"].items() if k != "train_time_s"}, \
            [{k: v for k, v in strip_times(m).items() if k != "tokens_per_s"} for m in metrics_of(run_dir)]
    assert final(tmp_path / "stopped") == final(tmp_path / "ref")


def test_capacity_factors_are_the_authors_shares_rounded_up():
    w = torch.tensor([[0.1, 0.5, 0.8, 0.95]] * 2)                # 8 tokens, 2 rows of a batch
    nan = torch.tensor([[0.9, float("nan"), 0.2, 0.7]] * 2)      # NaN: a token that did not reach the router
    assert lm_eval.capacity_factors([w, nan], 0.25, 4) == [0.5, 0.5]    # w >= 0.75: 4 of 8; 3 of 6 reached
    assert lm_eval.capacity_factors([w], 0.0, 4) == [0.0]
    assert lm_eval.capacity_factors([w], 1.0, 4) == [1.0]
    assert lm_eval.capacity_factors([torch.tensor([[0.9, 0.1, 0.1]])], 0.5, 3) == [0.33]   # 1/3, up to 1/T, then 2 decimals


def test_min_repeat_and_uniform_random_range_bound_the_training_depths():
    from models.cotformer import random_length_factors
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        f = random_length_factors("uniform", 4, g, min_repeat=3)         # repeats 2..5; at least 3 of them
        assert f[:2] == [1.0, 1.0] and f == sorted(f, reverse=True) and len(f) == 4
        r = random_length_factors("uniform_random_range", 4, g, min_repeat=2)
        assert len(r) == 4 and r == sorted(r, reverse=True) and r[0] == 1.0
        a = 1 + sum(v == 1.0 for v in r)                                  # every token runs a repeats ...
        b = 1 + sum(v > 0 for v in r)                                     # ... and none more than b
        assert 2 <= a <= b <= 5
        if b > a:                                                         # depths spread evenly over [a, b]
            assert r[a - 1] == pytest.approx((b - a) / (b - a + 1))
    with pytest.raises(ValueError, match="min_repeat"):
        random_length_factors("uniform", 2, g, min_repeat=4)
    with pytest.raises(ValueError, match="min_repeat"):
        _model("ln_cotformer", min_repeat=7)
    # a fixed-depth model with min_repeat < n_repeat trains at a depth drawn in [min_repeat, n_repeat]
    model = _model("ln_cotformer", min_repeat=2).train()
    idx = torch.randint(0, 256, (2, 8))
    seen = {int(model(idx, idx)["depth"][0, 0]) for _ in range(30)}
    assert seen == {2, 3}
    assert {int(_model("ln_cotformer").train()(idx, idx)["depth"][0, 0])} == {3}     # default: full depth


def test_a_fixed_depth_model_refuses_a_depth_method_it_cannot_follow():
    """Without a router a fixed-depth model draws one depth per batch (uniform): any other method would be
    silently ignored, so it is refused by name; the adaptive model takes it."""
    with pytest.raises(ValueError, match="depth_random_method 'uniform_random_range' needs the adaptive model"):
        _model("ln_cotformer", min_repeat=2, depth_random_method="uniform_random_range")
    _model("ln_cotformer", depth_random_method="uniform_random_range")     # trained at full depth: nothing drawn
    _model("adm", min_repeat=2, depth_random_method="uniform_random_range")
