"""`logging: {system: N}`: CPU, memory (and NVML GPU) samples logged like any metric, never failing a run."""
import json
import time

import analysis
from jobs.runtime import sysmetrics
from jobs.runtime.context import RunContext
from jobs.store import atomic
from tests.sched.slurmkit import cli, wait_for

TASK = '''
import time
CONFIG = {"seed": 0, "steps": 4}


def train(cfg, ctx):
    for step in range(cfg["steps"]):
        time.sleep(0.4)
        ctx.log(step, loss=1.0 / (step + 1))
    return {"loss": 0.25}
'''


def system_lines(path):
    return [r for r in atomic.read_jsonl(path) if "sys_rss_mb" in r]


def test_samples_carry_the_step_logged_last_and_stop_with_the_attempt(tmp_path):
    ctx = RunContext(tmp_path / "run", {}, logging={"system": 0.05})
    ctx.log(3, loss=1.0)
    (first, *_) = wait_for(lambda: system_lines(ctx.metrics_path), 10, "a system sample")
    assert first["step"] == 3 and first["sys_rss_mb"] > 10 and "sys_cpu_percent" in first
    sampler = ctx._sampler
    ctx.close()
    assert not sampler._thread.is_alive()
    count = len(atomic.read_jsonl(ctx.metrics_path))
    ctx.log(4, loss=0.5)                    # after close: metrics.jsonl only, and no sample follows
    assert len(atomic.read_jsonl(ctx.metrics_path)) == count + 1
    assert all(json.loads(line) for line in ctx.metrics_path.read_text().splitlines())     # whole lines


def test_a_failing_sample_never_fails_the_run(tmp_path, monkeypatch, capfd):
    def broken(self):
        raise OSError("no /proc here")
    monkeypatch.setattr(sysmetrics.Sampler, "sample", broken)
    ctx = RunContext(tmp_path / "run", {}, logging={"system": 0.02})
    wait_for(lambda: not ctx._sampler._thread.is_alive(), 10, "the sampler giving up")
    ctx.log(0, loss=1.0)
    ctx.close()
    assert "system metrics stopped: OSError: no /proc here" in capfd.readouterr().err
    assert [r["loss"] for r in atomic.read_jsonl(ctx.metrics_path)] == [1.0]


def test_system_metrics_appear_in_a_runs_curves(tmp_path):
    (tmp_path / "sleepy.py").write_text(TASK)
    spec = tmp_path / "sleepy.yaml"
    spec.write_text(json.dumps({"name": "sleepy", "task": "sleepy.py:train", "logging": {"system": 0.3}}))
    out = cli("submit", spec, "--executor", "debug", "--root", tmp_path / "root")
    assert out.returncode == 0, out.stderr
    curves = analysis.curves(tmp_path / "root" / "sleepy")
    samples = curves.dropna(subset=["sys_rss_mb"])
    assert len(samples) >= 2 and (samples["sys_rss_mb"] > 10).all()
    assert set(samples["step"]) <= {0, 1, 2, 3} and curves["loss"].notna().sum() == 4
