"""Usage and cost: sacct's accounting joined to runs, the jobs' own measurement, suggestions, plan's estimate.

    HPCSWEEP_REQUIRE_SLURM=1 .venv/bin/python -m pytest -q tests/sched/test_usage.py

The real-SLURM test runs a task that holds ~200 MB and sleeps: sacct (jobacct_gather/linux in
env/slurm) must report that peak against the 1 GB asked, a low CPU efficiency, the queue wait and the
requeue a USR2 caused, `usage` must suggest a smaller mem_gb, and `plan` of the half-finished sweep
must estimate what the other half then took within a factor 2.
"""
import json
import subprocess
from pathlib import Path

import pytest

import analysis
from jobs.sched import slurm, usage
from jobs.spec import load_sweep
from jobs.store import SweepDir, atomic
from tests.sched.slurmkit import all_done, attempts, cli, metric_lines, wait_for

TASK = '''
import time
CONFIG = {"seed": 0, "mb": 200, "seconds": 30.0, "steps": 10}


def train(cfg, ctx):
    state = ctx.restore() or {"step": 0}
    block = bytearray(cfg["mb"] * 1024 * 1024)
    for i in range(0, len(block), 4096):       # touched: resident, not only reserved
        block[i] = 1
    for step in range(state["step"], cfg["steps"]):
        time.sleep(cfg["seconds"] / cfg["steps"])
        ctx.log(step, held_mb=len(block) / 2 ** 20)
        if ctx.should_checkpoint(step):
            ctx.save(step + 1, {"step": step + 1})
    return {"held_mb": len(block) / 2 ** 20}
'''


def hog_spec(where: Path, seeds=(1, 2)) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "hog.py").write_text(TASK)
    spec = where / "hog.yaml"
    spec.write_text(json.dumps({"name": "hog", "task": "hog.py:train", "grid": {"mb": [0, 200]}, "seeds": list(seeds),
                                "resources": {"mem_gb": 1, "time_min": 5, "max_parallel": 4},
                                "checkpoint": {"every_min": 10}}))
    return spec


# ---------------------------------------------------------------- sacct's text (faked output, the parser)

SACCT = """\
90_1|REQUEUED|3|00:00:00|1||1G|billing=1,cpu=1,mem=1G,node=1|2026-12-04T20:39:26|2026-12-04T20:39:30|2026-12-04T20:39:33
90_1.batch|CANCELLED|3|00:00.100|1|1000K||cpu=1,mem=1G,node=1|2026-12-04T20:39:30|2026-12-04T20:39:30|2026-12-04T20:39:33
90_1|COMPLETED|10|00:00:00|4||2Gc|billing=4,cpu=4,gres/gpu=2,mem=8G,node=1|2026-12-04T20:39:34|2026-12-04T20:39:44|2026-12-04T20:39:54
90_1.batch|COMPLETED|10|00:00.500|4|219556K||cpu=4,mem=8G,node=1|2026-12-04T20:39:44|2026-12-04T20:39:44|2026-12-04T20:39:54
90_1.0|COMPLETED|10|01:02.250|4|1500M||cpu=4,mem=8G,node=1|2026-12-04T20:39:44|2026-12-04T20:39:44|2026-12-04T20:39:54
90_[2-3]|PENDING|0|00:00:00|1||1G||2026-12-04T20:39:26|Unknown|Unknown
"""


def test_sacct_rows_become_one_record_per_attempt_with_their_steps():
    found = slurm.parse_sacct_usage(SACCT)
    assert list(found) == ["90_1"]                     # the folded pending tasks have nothing accounted
    first, second = found["90_1"]
    assert first["state"] == "REQUEUED" and first["start"] - first["submit"] == 4
    assert first["max_rss_mb"] == pytest.approx(1000 / 1024) and first["cpu_s"] == pytest.approx(0.1)
    assert second["req_mem_mb"] == 8192                # 2G per CPU x 4 CPUs
    assert second["gpus"] == 2 and second["alloc_cpus"] == 4
    assert second["cpu_s"] == pytest.approx(62.75)      # the steps' sum: the allocation row had none
    assert second["max_rss_mb"] == 1500                 # the largest step


def test_a_cluster_that_gathers_nothing_falls_back_on_the_jobs_own_measurement(tmp_path):
    sweep = load_sweep(hog_spec(tmp_path, seeds=(1,)))
    sweep_dir = SweepDir(tmp_path / "root" / "hog")
    run = sweep.runs[0]
    sweep_dir.run(run.run_id).path.mkdir(parents=True)
    for record in ({"event": "start", "attempt": 1, "job_id": "7_0", "started": 100.0},
                   {"event": "end", "attempt": 1, "job_id": "7_0", "started": 100.0, "ended": 110.0,
                    "cpu_s": 1.0, "max_rss_mb": 300.0}):
        with open(sweep_dir.run(run.run_id).attempts, "a") as f:
            f.write(json.dumps(record) + "\n")
    nothing = {"state": "COMPLETED", "elapsed_s": 10.0, "cpu_s": 0.0, "alloc_cpus": 1, "max_rss_mb": None,
               "req_mem_mb": 1024.0, "gpus": 0, "submit": 90.0, "start": 99.0, "end": 110.0}
    (row,) = usage.run_usage(sweep, sweep_dir, [run], accounting={"7_0": [nothing]})
    assert row["source"] == "sacct+job" and row["max_rss_mb"] == 300.0 and row["cpu_s"] == 1.0
    assert row["cpu_eff"] == pytest.approx(0.1) and row["queue_wait_s"] == 9.0
    assert any("mem_gb: 0.5" in s for s in usage.suggestions([row]))


def test_a_pack_divides_its_jobs_time_by_each_runs_share(tmp_path):
    sweep = load_sweep(hog_spec(tmp_path, seeds=(1,)))
    sweep_dir = SweepDir(tmp_path / "root" / "hog")
    for run, seconds in zip(sweep.runs, (30.0, 10.0)):
        sweep_dir.run(run.run_id).path.mkdir(parents=True)
        with open(sweep_dir.run(run.run_id).attempts, "a") as f:
            f.write(json.dumps({"event": "start", "attempt": 1, "job_id": "8"}) + "\n")
            f.write(json.dumps({"event": "end", "attempt": 1, "job_id": "8", "started": 0.0, "ended": seconds}) + "\n")
    job = {"state": "COMPLETED", "elapsed_s": 40.0, "cpu_s": 8.0, "alloc_cpus": 2, "max_rss_mb": 500.0,
           "req_mem_mb": 4096.0, "gpus": 1, "submit": 0.0, "start": 0.0, "end": 40.0}
    rows = usage.run_usage(sweep, sweep_dir, accounting={"8": [job]})
    assert [r["elapsed_s"] for r in rows] == [30.0, 10.0] and [r["cpu_s"] for r in rows] == [6.0, 2.0]
    assert [r["max_rss_mb"] for r in rows] == [500.0, 500.0]            # the job's peak, not divided
    assert sum(r["gpu_hours"] for r in rows) == pytest.approx(40 / 3600)


# ---------------------------------------------------------------- the real thing

@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_usage_and_cost_of_a_real_sweep(tmp_path):
    spec = hog_spec(tmp_path)
    root = tmp_path / "root"
    sweep = load_sweep(spec)
    sweep_dir = SweepDir(root / "hog")
    first = [r for r in sweep.runs if r.config["seed"] == 1]
    rest = [r for r in sweep.runs if r.config["seed"] == 2]
    hog = next(r for r in first if r.config["mb"] == 200)
    light = next(r for r in first if r.config["mb"] == 0)

    out = cli("submit", spec, "--root", root, "--executor", "slurm", "--cluster", "local", "--only", "seed=1")
    assert out.returncode == 0, out.stderr
    # the 200 MB run is interrupted once (USR2, as before a time limit): its job requeues
    wait_for(lambda: metric_lines(sweep_dir.path, hog) >= 2, 120, "the 200 MB run training")
    job = attempts(sweep_dir.path, hog)[0]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: all_done(sweep_dir.path, first), 180, "the first half done")

    planned = cli("plan", spec, "--root", root, "--cluster", "local", "--json")
    assert planned.returncode == 0, planned.stderr
    cost = json.loads(planned.stdout)["cost"]
    assert cost["groups"][0]["runs_left"] == 2 and cost["groups"][0]["basis"] == 2
    assert cost["start"] and cost["start"][:4].isdigit()            # sbatch --test-only's expected start
    shown = cli("plan", spec, "--root", root, "--cluster", "local")
    assert "expected start of the first array" in shown.stdout and "CPU-h" in shown.stdout

    out = cli("submit", spec, "--root", root, "--executor", "slurm", "--cluster", "local")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: all_done(sweep_dir.path, sweep.runs), 180, "every run done")

    found = wait_for(lambda: _accounted(spec, root), 60, "sacct's MaxRSS of every job")
    rows = {r["run_id"]: r for r in found["runs"]}
    heavy, base = rows[hog.run_id], rows[light.run_id]
    assert heavy["source"] == "sacct" and heavy["req_mem_mb"] == 1024
    # the 200 MB the task holds, over what the same job holds without it (python, torch)
    assert 150 <= heavy["max_rss_mb"] - base["max_rss_mb"] <= 260, (heavy, base)
    assert heavy["max_rss_mb"] < 0.75 * 1024
    assert heavy["cpu_eff"] < 0.2 and heavy["queue_wait_s"] is not None and heavy["queue_wait_s"] >= 0
    assert heavy["requeues"] >= 1 and heavy["attempts"] == 2
    assert any("resources.mem_gb" in s for s in found["suggestions"]), found["suggestions"]
    took = sum(rows[r.run_id]["cpu_hours"] for r in rest)
    assert 0.5 <= cost["cpu_hours"] / took <= 2, (cost, took)

    table = cli("usage", spec, "--root", root, "--cluster", "local")
    assert table.returncode == 0 and "suggestion: asked 1 GB" in table.stdout, table.stdout
    runs = analysis.runs(root / "hog").set_index("run_id")
    assert runs.loc[hog.run_id, "usage_max_rss_mb"] == pytest.approx(heavy["max_rss_mb"])
    assert runs.loc[hog.run_id, "usage_requeues"] == heavy["requeues"]


def _accounted(spec, root):
    """`usage --json`, once sacct has every job's MaxRSS (gathered every 2 s, written as the job ends)."""
    out = cli("usage", spec, "--root", root, "--cluster", "local", "--json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    return found if all(r["source"] == "sacct" for r in found["runs"]) else None


# ---------------------------------------------------------------- plan --probe

STEPS = '''
import time
CONFIG = {"seed": 0, "steps": 40, "pause": 0.1}


def train(cfg, ctx):
    state = ctx.restore() or {"step": 0}
    for step in range(state["step"], cfg["steps"]):
        time.sleep(cfg["pause"])
        ctx.log(step, total_steps=cfg["steps"], loss=1.0)
        if ctx.should_checkpoint(step):
            ctx.save(step + 1, {"step": step + 1})
    return {"loss": 1.0}
'''


def test_a_probe_times_one_run_from_its_rate_and_total_steps(tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    spec = tmp_path / "steps.yaml"
    spec.write_text(json.dumps({"name": "steps", "task": "steps.py:train", "seeds": [1, 2, 3]}))
    out = cli("plan", spec, "--root", tmp_path / "root", "--probe", "2", "--json")
    assert out.returncode == 0, out.stderr
    (group,) = json.loads(out.stdout)["cost"]["groups"]
    assert group["probe"] and group["runs_left"] == 3
    assert 4.0 / 2 <= group["seconds_per_run"] <= 4.0 * 2          # 40 steps of 0.1 s, from 2 s of them
    assert not (tmp_path / "root").exists()                          # the sweep dir is not touched


def test_a_probe_says_why_it_cannot_tell():
    lines = [{"step": s, "time": 10.0 + s} for s in range(3)]
    assert usage.probed_seconds(8.0, lines, 13.0, False) == (None, usage.probed_seconds(0, lines, 0, False)[1])
    assert "total_steps" in usage.probed_seconds(8.0, lines, 13.0, False)[1]
    assert "too few" in usage.probed_seconds(8.0, lines[:1], 13.0, False)[1]
    timed = [{**line, "total_steps": 10} for line in lines]
    assert usage.probed_seconds(8.0, timed, 13.0, False) == (2.0 + 10, "")      # start-up 2 s, then 1 step/s
    assert usage.probed_seconds(8.0, timed, 13.0, True) == (5.0, "")            # done within the probe


def test_without_sacct_a_record_sacct_filled_is_kept(tmp_path, monkeypatch):
    sweep = load_sweep(hog_spec(tmp_path, seeds=(1,)))
    sweep_dir = SweepDir(tmp_path / "root" / "hog")
    sweep_dir.runs.mkdir(parents=True)
    earlier = {"runs": [{"run_id": sweep.runs[0].run_id, "source": "sacct", "max_rss_mb": 300.0}], "time": 0}
    atomic.write_json(sweep_dir.usage, earlier)

    def no_sacct(*_):
        raise slurm.SchedulerError("sacct is not on PATH")
    monkeypatch.setattr(usage, "run_usage", lambda *a, accounting=None: no_sacct() if accounting is None else [])
    found = usage.collect(sweep, sweep_dir)
    assert found["runs"] == earlier["runs"] and "sacct is not on PATH" in found["scheduler_error"]
    assert atomic.read_json(sweep_dir.usage) == earlier
