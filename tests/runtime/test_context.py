"""jobs/context.py: RunContext. The core claim: a run interrupted (stop request, deadline, crash,
SIGUSR2, kill -9) and resumed ends bit-identical to one never interrupted, metrics.jsonl included.

Time is driven by a fake clock; real processes come from test_checkpoint's forkserver.
"""
import io
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from jobs.runtime import checkpoint as ck
from jobs.runtime.context import Interrupted, RunContext, checkpoint_settings, rng_state, set_rng_state
from jobs.store import RunDir, atomic
from test_checkpoint import procs


class Clock:
    """A clock tests move by hand."""

    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


# --- the toy task -------------------------------------------------------------------------------

N_DATA, BATCH = 48, 6


def toy_train(cfg, ctx, on_step=None):
    """A tiny regression that draws from python random, numpy and torch every step and walks its data."""
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    data = torch.randn(N_DATA, 8, generator=torch.Generator().manual_seed(0))
    target = data.sum(1, keepdim=True).sin()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step, pos, perm = 0, 0, None
    state = ctx.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, pos, perm = state["step"], state["pos"], state["perm"]
    while step < cfg["steps"]:
        if pos == 0:
            perm = torch.randperm(N_DATA)                                            # torch: data order
        idx = perm[pos:pos + BATCH]
        pos = (pos + BATCH) % N_DATA
        x = data[idx] + 0.01 * torch.from_numpy(np.random.standard_normal((BATCH, 8))).float()   # numpy
        x = torch.nn.functional.dropout(x, 0.1)                                        # torch
        skip = random.random() < 0.2                                                   # python
        loss = ((model(x) - target[idx]) ** 2).mean()
        opt.zero_grad()
        if not skip:
            loss.backward()
            opt.step()
        step += 1
        ctx.log(step, loss=loss.detach(), skip=skip, pos=pos,
                probe=[random.random(), np.random.rand(), torch.rand(())])
        if on_step:
            on_step(step, ctx)
        if ctx.should_checkpoint(step):
            ctx.save(step, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "pos": pos,
                            "perm": perm})
    with torch.no_grad():
        final = ((model(data) - target) ** 2).mean().item()
    return {"loss": final, "weights": [p.detach().flatten().tolist() for p in model.parameters()]}


CFG = {"seed": 7, "steps": 60}


def scramble_rngs():
    """What a fresh process would have: anything but the states the run saved."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def metrics_rows(run_dir):
    """metrics.jsonl without the wall-clock field."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def run_until_done(run_dir, make_ctx, on_step=None, crash=None, max_attempts=50):
    """Attempt after attempt until the run finishes, as the runner would; (final metrics, attempts)."""
    for attempt in range(1, max_attempts + 1):
        ctx = make_ctx(attempt)
        try:
            return toy_train(CFG, ctx, on_step), attempt
        except (Interrupted, crash or Interrupted):
            scramble_rngs()
    raise AssertionError("the run never finished")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = tmp_path_factory.mktemp("baseline")
    metrics = toy_train(CFG, RunContext(d, CFG, checkpoint={"every_min": None}))
    return metrics, metrics_rows(d)


def test_stop_requests_resume_bit_identical(tmp_path, baseline):
    stops = {5, 6, 23, 41, 59, 60}

    def on_step(step, ctx):
        if step in stops:
            stops.discard(step)
            ctx.request_stop()

    manifest = tmp_path / "checkpoints_manifest.yaml"
    make = lambda a: RunContext(tmp_path / "run", CFG, run_id="toy", checkpoint={"every_steps": 7, "keep_last": 1},
                                manifest=manifest, attempt=a)
    metrics, attempts = run_until_done(tmp_path / "run", make, on_step)
    assert attempts == 7
    assert metrics == baseline[0]
    assert metrics_rows(tmp_path / "run") == baseline[1]
    assert ck.list_steps(tmp_path / "run" / "checkpoints") == [60]


def test_a_crash_after_the_last_checkpoint_resumes_bit_identical(tmp_path, baseline):
    """Lines logged after the checkpoint (and a half-written one) are cut, then logged again once."""
    run = tmp_path / "run"

    class Crash(Exception):
        pass

    def on_step(step, ctx):
        if step == 33 and ctx.attempt == 1:
            with open(run / "metrics.jsonl", "ab") as f:
                f.write(b'{"step": 34, "lo')           # a writer killed mid-line
            raise Crash()

    make = lambda a: RunContext(run, CFG, checkpoint={"every_steps": 10}, attempt=a)
    metrics, attempts = run_until_done(run, make, on_step, crash=Crash)
    assert attempts == 2
    assert metrics == baseline[0] and metrics_rows(run) == baseline[1]


def test_running_out_of_time_resumes_bit_identical(tmp_path, baseline):
    clock = Clock()

    def on_step(step, ctx):
        clock.t += 1.0                                  # each step takes a (fake) second

    # each attempt gets 25 s; with a 5 s margin it stops about 20 steps in
    make = lambda a: RunContext(tmp_path / "run", CFG, checkpoint={"every_min": 0.2}, deadline=clock.t + 25,
                                margin_s=5, clock=clock, attempt=a)
    metrics, attempts = run_until_done(tmp_path / "run", make, on_step)
    assert attempts == 3
    assert metrics == baseline[0] and metrics_rows(tmp_path / "run") == baseline[1]


# --- real processes: SIGUSR2 and kill -9 --------------------------------------------------------

def train_in_child(run_dir, progress, out):
    """Child: run (or resume) the toy task; exit 3 when interrupted, else write the final metrics."""
    torch.set_num_threads(1)
    ctx = RunContext(run_dir, CFG, checkpoint={"every_steps": 8, "every_min": None})
    signal.signal(signal.SIGUSR2, lambda *_: ctx.request_stop())     # as the launcher does

    def on_step(step, ctx):
        progress.value = step

    try:
        metrics = toy_train({**CFG, "steps": 100}, ctx, on_step)
    except Interrupted:
        sys.exit(3)
    Path(out).write_text(json.dumps(metrics))


def child_run(mp, run_dir, out, *, when=None, how=None):
    """Run train_in_child; once it passes step `when`, hit it with signal `how`. Its exit code."""
    progress = mp.Value("i", 0)
    p = mp.Process(target=train_in_child, args=(run_dir, progress, out))
    p.start()
    if how is not None:
        while progress.value < when and p.exitcode is None:     # wait for a condition, not a duration
            p.join(0.002)
        if p.exitcode is None:
            os.kill(p.pid, how)
    p.join(120)
    return p.exitcode


def test_sigusr2_and_kill_9_in_real_processes_resume_bit_identical(tmp_path):
    mp = procs()
    assert child_run(mp, tmp_path / "base", tmp_path / "base.json") == 0
    expected = (json.loads((tmp_path / "base.json").read_text()), metrics_rows(tmp_path / "base"))
    rng = random.Random(99)
    for trial, how in enumerate([signal.SIGUSR2, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGUSR2]):
        run, out = tmp_path / f"t{trial}", tmp_path / f"t{trial}.json"
        code = child_run(mp, run, out, when=rng.randrange(1, 95), how=how)
        assert code in (0, 3 if how == signal.SIGUSR2 else -signal.SIGKILL)
        if code != 0:
            assert child_run(mp, run, out) == 0
        assert (json.loads(out.read_text()), metrics_rows(run)) == expected, f"trial {trial}"


# --- should_checkpoint, save, time --------------------------------------------------------------

def test_should_checkpoint_by_steps(tmp_path):
    ctx = RunContext(tmp_path, {}, checkpoint={"every_steps": 5, "every_min": None})
    assert [s for s in range(0, 12) if ctx.should_checkpoint(s)] == [5, 6, 7, 8, 9, 10, 11]
    ctx.save(5, {})
    assert [s for s in range(5, 12) if ctx.should_checkpoint(s)] == [10, 11]
    resumed = RunContext(tmp_path, {}, checkpoint={"every_steps": 5, "every_min": None})
    resumed.restore()
    assert resumed.start_step == 5                     # steps count from the restored checkpoint
    assert not resumed.should_checkpoint(9) and resumed.should_checkpoint(10)


def test_should_checkpoint_by_minutes(tmp_path):
    clock = Clock()
    ctx = RunContext(tmp_path, {}, clock=clock)       # default: every 10 minutes, counted from the start
    clock.t += 599.9
    assert not ctx.should_checkpoint(1)
    clock.t += 0.1
    assert ctx.should_checkpoint(2)
    ctx.save(2, {})
    assert not ctx.should_checkpoint(3)
    clock.t += 600
    assert ctx.should_checkpoint(4)


def test_stop_request_checkpoints_then_interrupts(tmp_path):
    ctx = RunContext(tmp_path, {}, run_id="r1", checkpoint={"every_min": None})
    assert not ctx.should_checkpoint(3) and not ctx.stop_requested
    ctx.request_stop()
    assert ctx.stop_requested and ctx.should_checkpoint(3)
    with pytest.raises(Interrupted, match="r1 checkpointed at step 3.*stop was requested"):
        ctx.save(3, {"w": torch.ones(2)})
    step, payload = ck.load_latest(tmp_path / "checkpoints")      # durable before the raise
    assert step == 3 and torch.equal(payload["state"]["w"], torch.ones(2))


def test_time_running_out(tmp_path):
    clock = Clock()
    assert RunContext(tmp_path, {}, clock=clock).time_left() == float("inf")
    ctx = RunContext(tmp_path, {}, deadline=clock.t + 1000, margin_s=60, clock=clock,
                     checkpoint={"every_min": None})
    clock.t += 939
    assert ctx.time_left() == 61 and not ctx.should_checkpoint(1)
    clock.t += 2
    assert ctx.time_left() == 59 and ctx.should_checkpoint(2)
    with pytest.raises(Interrupted, match="59 s left.*60 s margin"):
        ctx.save(2, {})
    assert ck.load_latest(tmp_path / "checkpoints")[0] == 2


def test_a_save_with_time_to_spare_does_not_interrupt(tmp_path):
    clock = Clock()
    ctx = RunContext(tmp_path, {}, deadline=clock.t + 1000, clock=clock)
    assert ctx.save(1, {}) == tmp_path / "checkpoints" / "step_00000001.pt"


def test_attributes(tmp_path):
    ctx = RunContext(tmp_path, {"a": 1}, run_id="x", device="cuda", attempt=3)
    assert (ctx.run_dir, ctx.cfg, ctx.run_id, ctx.device, ctx.attempt, ctx.start_step) == \
        (tmp_path, {"a": 1}, "x", "cuda", 3, 0)


def test_retention_settings_reach_the_store(tmp_path):
    ctx = RunContext(tmp_path, {}, checkpoint={"keep_last": 1, "keep_every": 4, "every_min": None})
    for step in range(1, 10):
        ctx.save(step, {})
    assert ck.list_steps(tmp_path / "checkpoints") == [4, 8, 9]


def test_checkpoint_settings_errors_name_the_key():
    assert checkpoint_settings(None) == {"every_min": 10.0, "every_steps": None, "keep_last": 2, "keep_every": None}
    with pytest.raises(ValueError, match="every_mins"):
        checkpoint_settings({"every_mins": 5})
    with pytest.raises(ValueError, match="checkpoint.keep_last"):
        checkpoint_settings({"keep_last": 0})
    with pytest.raises(ValueError, match="checkpoint.every_steps"):
        checkpoint_settings({"every_steps": 2.5})
    with pytest.raises(ValueError, match="checkpoint.every_min"):
        checkpoint_settings({"every_min": "often"})


def test_a_state_that_would_not_load_fails_at_the_first_save(tmp_path):
    ctx = RunContext(tmp_path, {})
    with pytest.raises(TypeError, match="numpy array"):
        ctx.save(1, {"perm": np.arange(5)})
    assert ck.list_steps(tmp_path / "checkpoints") == []


def test_a_foreign_checkpoint_is_refused_by_name(tmp_path):
    ck.save(tmp_path / "checkpoints", 4, {"weights": torch.zeros(1)})
    with pytest.raises(ValueError, match="step_00000004.pt: not a RunContext checkpoint"):
        RunContext(tmp_path, {}).restore()


# --- metrics.jsonl ------------------------------------------------------------------------------

def test_log_writes_plain_json_lines(tmp_path):
    ctx = RunContext(tmp_path / "new run", {})
    ctx.log(torch.tensor(3), loss=torch.tensor(0.5), acc=np.float32(0.25), n=np.int64(7), ok=True, tag="a",
            hist=[torch.tensor(1.0), np.float64(2.0), 3], arr=np.arange(3))
    (row,) = [json.loads(line) for line in (tmp_path / "new run" / "metrics.jsonl").read_text().splitlines()]
    assert isinstance(row.pop("time"), float)
    assert row == {"step": 3, "loss": 0.5, "acc": 0.25, "n": 7, "ok": True, "tag": "a", "hist": [1.0, 2.0, 3],
                   "arr": [0, 1, 2]}
    with pytest.raises(ValueError, match="'time'"):
        ctx.log(1, time=5)
    with pytest.raises(TypeError, match="metric 'm'"):
        ctx.log(1, m=object())


def test_a_fresh_run_drops_metrics_of_an_attempt_that_never_checkpointed(tmp_path):
    ctx = RunContext(tmp_path, {})
    ctx.log(1, loss=1.0)
    ctx.log(2, loss=2.0)
    assert RunContext(tmp_path, {}).restore() is None
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_restore_keeps_exactly_the_lines_logged_before_the_save(tmp_path):
    """Even a line logged *after* save at the same step is cut: it will be logged again."""
    ctx = RunContext(tmp_path, {})
    ctx.restore()
    ctx.log(1, a=1)
    ctx.log(2, a=2)
    ctx.save(2, {"x": 1})
    ctx.log(2, summary=9)
    ctx.log(3, a=3)
    again = RunContext(tmp_path, {})
    assert again.restore() == {"x": 1}
    assert metrics_rows(tmp_path) == [{"step": 1, "a": 1}, {"step": 2, "a": 2}]


def test_restore_without_a_line_count_cuts_by_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 3}\n{"step": 4, "x"')
    ck.save(tmp_path / "checkpoints", 2, {"format": 1, "step": 2, "state": "s", "rng": {}})
    assert RunContext(tmp_path, {}).restore() == "s"
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


# --- RNG states ---------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), draws=st.integers(0, 5))
def test_rng_states_survive_a_safe_load(seed, draws):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for _ in range(draws):                          # a cached gaussian in numpy's state, too
        random.gauss(0, 1), np.random.standard_normal(), torch.randn(1)
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    scramble_rngs()
    set_rng_state(saved)
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
            torch.rand(3).tolist()) == expected


def test_log_closes_a_torn_last_line_when_the_task_never_restores(tmp_path):
    """A writer killed mid-line, then a task that logs without calling restore: the new line stands alone."""
    RunDir(tmp_path).metrics.write_bytes(b'{"step": 1, "time": 1.0, "x": 1}\n{"step": 2, "ti')
    ctx = RunContext(tmp_path, {})
    ctx.log(3, x=3.0)
    ctx.log(4, x=4.0)
    assert [row["step"] for row in atomic.read_jsonl(RunDir(tmp_path).metrics)] == [1, 3, 4]


def test_log_refuses_a_metric_named_run_id(tmp_path):
    with pytest.raises(ValueError, match="'run_id' is the run's own name"):
        RunContext(tmp_path, {}).log(1, run_id=3)


def test_every_steps_saves_at_its_multiples_whatever_step_the_run_resumed_from(tmp_path):
    plan = {"every_min": None, "every_steps": 5, "keep_last": 10}
    ctx = RunContext(tmp_path, {}, checkpoint=plan)
    assert ctx.restore() is None
    ctx.save(7, {"step": 7})                     # a save on a stop request, between multiples
    resumed = RunContext(tmp_path, {}, checkpoint=plan)
    assert resumed.restore()["step"] == 7
    assert [s for s in range(8, 21) if resumed.should_checkpoint(s) and resumed.save(s, {"step": s})] == [10, 15, 20]
