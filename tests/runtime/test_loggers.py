"""jobs/runtime/loggers.py: a spec's `logging:` block sends every ctx.log line to TensorBoard event files
and to an offline W&B run as well, through the real runner, read back with each tool's own reader;
without the block nothing changes and neither module is imported; a failing backend never fails a run.

TensorBoard runs go through runner.run_one in this process. W&B runs go through it in a fresh process
each (wandb keeps process-wide state and starts a service process: that process must be gone when the
run has ended, which psutil checks in the job process itself).
"""
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from jobs.runtime import runner
from jobs.runtime.context import logging_settings
from jobs.runtime.loggers import split_metrics
from jobs.sched import submit
from jobs.spec import load_sweep
from jobs.store import SweepDir, atomic

REPO = Path(__file__).resolve().parents[2]

TASK = '''
import sys

CONFIG = {"seed": 0, "steps": 12, "crash_at": 0}


def train(cfg, ctx):
    state = ctx.restore()
    step = 0 if state is None else state["step"]
    while step < cfg["steps"]:
        step += 1
        ctx.log(step, loss=1.0 / (step + cfg["seed"]), acc=step / cfg["steps"], done=step == cfg["steps"],
                attempt=ctx.attempt, weights=[step, step + 0.5, -1.0, float("nan")], note="text")
        if ctx.attempt == 1 and step == cfg["crash_at"]:
            raise RuntimeError(f"crashed at step {step}")
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step})
    return {"loss": 1.0 / (step + cfg["seed"]),
            "imported": sorted(m for m in ("tensorboard", "torch.utils.tensorboard", "wandb") if m in sys.modules)}
'''

# the job as a fresh process runs it: run_one, then what is left of it (child processes, modules)
JOB = '''
import json, sys, time
import psutil
from jobs.runtime import runner
outcome = runner.run_one(sys.argv[1], sys.argv[2], checkpoint=json.loads(sys.argv[3]), submission=sys.argv[4])
deadline = time.time() + 5
while psutil.Process().children(recursive=True) and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({"outcome": outcome, "children": [p.name() for p in psutil.Process().children(recursive=True)],
                  "modules": sorted(m for m in ("tensorboard", "wandb") if m in sys.modules)}))
'''


def write_spec(tmp_path, logging=None, name="logs", **base):
    (tmp_path / "logtask.py").write_text(TASK)
    spec = {"name": name, "task": "logtask.py:train", "base": base, "grid": {"seed": [1, 2]},
            "checkpoint": {"every_steps": 5, "every_min": None}}
    if logging is not None:
        spec["logging"] = logging
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def prepared(tmp_path, spec_path):
    """(sweep, sweep dir, submission id, checkpoint settings): the sweep dir as `submit` writes it."""
    sweep = load_sweep(spec_path)
    sweep_dir = SweepDir(tmp_path / "root" / sweep.name)
    submission = submit.new_submission_id()
    submit.prepare(sweep, sweep_dir, submission)
    return sweep, sweep_dir, submission, submit.checkpoint_of(sweep).for_context()


def run_here(sweep_dir, run_id, submission, ckpt):
    return runner.run_one(sweep_dir.path, run_id, checkpoint=ckpt, submission=submission)


def run_fresh(tmp_path, sweep_dir, run_id, submission, ckpt, env=None):
    """run_one in a fresh process; (its report, its stderr)."""
    env = {**os.environ, "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), **(env or {})}
    out = subprocess.run([sys.executable, "-c", JOB, str(sweep_dir.path), run_id, json.dumps(ckpt), submission],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def metrics_rows(run_dir):
    return atomic.read_jsonl(run_dir.metrics)


def tensorboard_of(run_dir):
    acc = event_accumulator.EventAccumulator(str(run_dir.path / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def assert_tensorboard_equals_metrics(run_dir):
    rows, acc = metrics_rows(run_dir), tensorboard_of(run_dir)
    assert sorted(acc.Tags()["scalars"]) == ["acc", "attempt", "done", "loss"]     # no string, no list
    for key in ("loss", "acc", "done", "attempt"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows], key
        assert [e.value for e in events] == [float(np.float32(r[key])) for r in rows], key   # float32 in the file
        assert [e.wall_time for e in events] == [r["time"] for r in rows], key          # the line's time
    hist = acc.Histograms("weights")
    assert [h.step for h in hist] == [r["step"] for r in rows]
    for h, r in zip(hist, rows):       # the finite values of the list
        v = h.histogram_value
        assert (v.num, v.min, v.max, v.sum) == (3, -1.0, r["step"] + 0.5, 2 * r["step"] - 0.5)


# --- TensorBoard ----------------------------------------------------------------------------------

def test_tensorboard_event_files_hold_the_metrics_jsonl_values(tmp_path):
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True}))
    run = sweep.runs[0]
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "done"
    run_dir = sweep_dir.run(run.run_id)
    assert len(metrics_rows(run_dir)) == 12
    assert_tensorboard_equals_metrics(run_dir)
    assert not (run_dir.path / "wandb").exists()
    assert json.loads(run_dir.result.read_text())["metrics"]["imported"] == ["tensorboard", "torch.utils.tensorboard"]


def test_a_resumed_run_shows_each_step_once_with_the_resumed_attempts_value(tmp_path):
    # attempt 1 checkpoints at step 5, logs 6..8 and dies; attempt 2 resumes from 5 and logs 6..12 again
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True}, crash_at=8))
    run = sweep.runs[0]
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "failed"
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "done"
    run_dir = sweep_dir.run(run.run_id)
    rows = metrics_rows(run_dir)
    assert [(r["step"], r["attempt"]) for r in rows] == [(s, 1 if s <= 5 else 2) for s in range(1, 13)]
    assert len(list((run_dir.path / "tensorboard").iterdir())) == 2            # one event file per attempt
    assert_tensorboard_equals_metrics(run_dir)


# --- W&B ------------------------------------------------------------------------------------------

def wandb_records(path):
    """The protobuf records of a .wandb file (wandb 0.31 ships no Python reader for it): LevelDB-log
    framing, 32 KiB blocks, each record a 7-byte header (crc32, length, type: full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):      # the rest of a block is padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run_of(offline_dir):
    """(run record, {step: {key: value}}) of one offline-run dir."""
    files = list(offline_dir.glob("*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    run, history = None, {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[record.history.step.num] = items
    return run, history


def test_wandb_offline_runs_carry_the_run_id_and_the_logged_values_across_a_resume(tmp_path):
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"wandb": {"project": "x"}}, crash_at=8))
    run = sweep.runs[0]
    first, _ = run_fresh(tmp_path, sweep_dir, run.run_id, sub, ckpt)
    assert first == {"outcome": "failed", "children": [], "modules": ["wandb"]}    # the service process ended
    second, stderr = run_fresh(tmp_path, sweep_dir, run.run_id, sub, ckpt)
    assert second == {"outcome": "done", "children": [], "modules": ["wandb"]}
    assert "hpcsweep:" not in stderr
    run_dir = sweep_dir.run(run.run_id)
    offline = sorted((run_dir.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith("-" + run.run_id) for d in offline)   # one W&B run id
    rows = {r["step"]: r for r in metrics_rows(run_dir)}
    for attempt, d in enumerate(offline, 1):
        record, history = wandb_run_of(d)
        assert (record.run_id, record.project, record.display_name) == (run.run_id, "x", run.label)
        config = {item.key: json.loads(item.value_json) for item in record.config.update}
        assert {k: config[k] for k in run.config} == run.config
        steps = range(1, 9) if attempt == 1 else range(6, 13)
        assert sorted(history) == list(steps)
        for step in steps:
            assert history[step]["_step"] == step and history[step]["attempt"] == attempt
            if step in rows and rows[step]["attempt"] == attempt:         # the lines metrics.jsonl kept
                assert {k: history[step][k] for k in ("loss", "acc", "done")} == \
                       {k: rows[step][k] for k in ("loss", "acc", "done")}
                assert history[step]["weights/_type"] == "histogram"      # of the list's finite values
                assert sum(history[step]["weights/values"]) == 3
    assert not (run_dir.path / "tensorboard").exists()


# --- off by default ---------------------------------------------------------------------------------

def test_without_logging_no_dirs_appear_and_neither_module_is_imported_in_the_job(tmp_path):
    path = write_spec(tmp_path)
    out = subprocess.run([sys.executable, "main.py", "run", str(path), "--only", "seed=1", "--root",
                          str(tmp_path / "root")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sweep = load_sweep(path)
    run_dir = SweepDir(tmp_path / "root" / sweep.name).run(sweep.by_label("seed=1").run_id)
    assert json.loads(run_dir.result.read_text())["metrics"]["imported"] == []
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["attempts.jsonl", "checkpoints", "config.yaml",
                                                               "metrics.jsonl", "result.json", "run.lock"]
    assert "hpcsweep:" not in out.stderr


def test_logging_changes_no_run_id(tmp_path):
    def ids(*args):
        out = subprocess.run([sys.executable, "main.py", "plan", *map(str, args), "--json", "--root", tmp_path],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [(r["run_id"], r["label"]) for r in json.loads(out.stdout)["runs"]]

    plain = ids(write_spec(tmp_path))
    assert len(plain) == 2
    assert ids(write_spec(tmp_path, {"tensorboard": True, "wandb": {"project": "x", "mode": "offline"}})) == plain
    assert ids(write_spec(tmp_path), "--set", "logging.wandb=true") == plain
    pipeline = ids(REPO / "sweeps" / "cotformer_smoke.yaml")
    assert ids(REPO / "sweeps" / "cotformer_smoke.yaml", "--set", "logging.tensorboard=true") == pipeline


# --- mistakes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("block, line, message", [
    ("logging:\n  tensorboard: 3\n", 4, "logging.tensorboard: expected true or false, got 3"),
    ("logging: {wandbb: true}\n", 3, "logging.wandbb: unknown key (did you mean 'wandb'?)"),
    ("logging:\n  wandb:\n    projct: x\n", 5, "logging.wandb.projct: unknown key (did you mean 'project'?)"),
    ("logging:\n  wandb: {mode: ofline}\n", 4, "logging.wandb.mode: expected one of 'offline', 'online' or "
                                                "'disabled', got 'ofline' (did you mean 'offline'?)"),
    ("logging:\n  wandb: 3\n", 4, "logging.wandb: expected true, false or a mapping {project, entity, mode}, got 3"),
    ("logging:\n  wandb: {project: my project}\n", 4, "logging.wandb.project: expected a W&B name"),
    ("logging: yes\n", 3, "logging: expected a mapping"),
    ("loging: {tensorboard: true}\n", 3, "loging: unknown key (did you mean 'logging'?)"),
])
def test_a_bad_logging_block_is_an_error_naming_file_line_and_key(tmp_path, block, line, message):
    (tmp_path / "logtask.py").write_text(TASK)
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ntask: logtask.py:train\n" + block)
    started = time.time()
    for command in (["plan"], ["submit", "--executor", "debug"]):
        out = subprocess.run([sys.executable, "main.py", *command, str(path), "--root", str(tmp_path / "root")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and f"{path}:{line}: {message}" in out.stderr, out.stderr
    assert time.time() - started < 20
    assert not (tmp_path / "root").exists()                  # nothing written


def test_a_child_spec_merges_its_logging_block_key_by_key(tmp_path):
    write_spec(tmp_path, {"tensorboard": True, "wandb": {"project": "x"}}, name="parent")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nlogging: {wandb: {project: y}}\n")
    assert load_sweep(tmp_path / "child.yaml").spec["logging"] == {"tensorboard": True, "wandb": {"project": "y"}}


def test_logging_settings_complete_the_block_with_its_defaults():
    assert logging_settings(None).model_dump() == {"tensorboard": False, "wandb": None, "system": None}
    assert logging_settings({"system": 30}).system == 30.0
    assert logging_settings({"wandb": True}).wandb.model_dump() == {"project": None, "entity": None, "mode": "offline"}
    assert logging_settings({"wandb": False}).wandb is None
    with pytest.raises(ValueError, match="logging.wandb.entity"):
        logging_settings({"wandb": {"entity": 3}})


def test_split_metrics_keeps_numbers_as_scalars_and_lists_of_numbers_as_histograms():
    row = {"step": 3, "time": 1.0, "loss": 0.5, "n": 2, "ok": True, "nan": math.nan, "note": "x", "empty": [],
           "h": [1, [2.0, math.inf]], "words": ["a", 1], "d": {"a": 1}, "none": None}
    scalars, histograms = split_metrics(row)
    assert math.isnan(scalars.pop("nan"))
    assert (scalars, histograms) == ({"loss": 0.5, "n": 2, "ok": True}, {"h": [1.0, 2.0]})


# --- failing backends -----------------------------------------------------------------------------

def test_wandb_refusing_warns_once_and_the_run_completes_with_tensorboard(tmp_path):
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True, "wandb": True}))
    run = sweep.runs[0]
    # $WANDB_MODE wins over the spec's mode: a value W&B refuses makes wandb.init raise
    report, stderr = run_fresh(tmp_path, sweep_dir, run.run_id, sub, ckpt, env={"WANDB_MODE": "nonsense"})
    assert report == {"outcome": "done", "children": [], "modules": ["tensorboard", "wandb"]}
    warnings = [line for line in stderr.splitlines() if line.startswith("hpcsweep:")]
    assert len(warnings) == 1 and "wandb logging could not start" in warnings[0] and "nonsense" in warnings[0]
    run_dir = sweep_dir.run(run.run_id)
    assert run_dir.read_result()["metrics"]["loss"] == 1.0 / 13
    assert len(metrics_rows(run_dir)) == 12
    assert_tensorboard_equals_metrics(run_dir)            # the other backend goes on


def test_a_backend_failing_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch, capsys):
    from torch.utils.tensorboard import SummaryWriter
    calls = []
    real = SummaryWriter.add_scalar

    def add_scalar(self, *args, **kw):
        calls.append(args[0])
        if len(calls) > 10:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True}))
    run = sweep.runs[0]
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "done"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpcsweep:")]
    assert len(warnings) == 1 and "tensorboard logging failed" in warnings[0] and "No space left" in warnings[0]
    assert len(calls) == 11                                   # not tried again after the failure
    run_dir = sweep_dir.run(run.run_id)
    assert len(metrics_rows(run_dir)) == 12 and run_dir.read_result() is not None


def test_a_backend_that_cannot_start_is_dropped_with_one_warning(tmp_path, capsys):
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True}))
    run = sweep.runs[0]
    run_dir = sweep_dir.run(run.run_id)
    (run_dir.path / "tensorboard").write_text("a file where the event dir would go")
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "done"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpcsweep:")]
    assert len(warnings) == 1 and "tensorboard logging could not start" in warnings[0]
    assert len(metrics_rows(run_dir)) == 12 and run_dir.read_result() is not None


def test_a_hand_edited_bad_block_in_the_frozen_spec_turns_logging_off_not_the_run(tmp_path, capsys):
    sweep, sweep_dir, sub, ckpt = prepared(tmp_path, write_spec(tmp_path, {"tensorboard": True}))
    spec = sweep_dir.read_spec()
    atomic.write_yaml(sweep_dir.spec, {**spec, "logging": {"tensorbord": True}})
    run = sweep.runs[0]
    assert run_here(sweep_dir, run.run_id, sub, ckpt) == "done"
    err = capsys.readouterr().err
    assert "logging is off: logging.tensorbord: unknown key" in err
    assert not (sweep_dir.run(run.run_id).path / "tensorboard").exists()
