"""Runs that finish: the local executor end to end, requeue on a real time limit, kill -9 and
resume, idempotent submits, --force, debug executor, status. Real processes throughout."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs.runtime.runner import PackJob
from jobs.sched import submit as sched
from jobs.store import SweepDir, atomic
from jobs.spec import load_sweep

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

# models/resmlp.py on digits with a narrow model: a real task, cheap on a CPU
TASK = "resmlp"
SMALL = {"d_hidden": 32, "num_blocks": 2, "k": 2}


def spec(tmp_path, name, grid, *, epochs, resources=None, checkpoint=None, seeds=(1, 2)):
    text = {"name": name, "task": TASK, "base": {**SMALL, "epochs": epochs}, "grid": grid,
            "seeds": list(seeds), "resources": {"time_min": 5, "max_parallel": 2, **(resources or {})},
            "checkpoint": {"every_min": 10, **(checkpoint or {})}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(text))
    return load_sweep(p)


def wait_idle(sweep, sdir, timeout=240):
    """Poll the sweep dir until nothing is in flight and every local driver has recorded its end."""
    end = time.time() + timeout
    while time.time() < end:
        st = sched.states(sweep, SweepDir(sdir))
        events = SweepDir(sdir).read_journal()
        drivers = sum(e["event"] == "submit" and e.get("executor") == "local" for e in events)
        if "in flight" not in st.values() and sum(e["event"] == "driver_end" for e in events) >= drivers:
            return st
        time.sleep(0.3)
    raise AssertionError(f"still in flight after {timeout} s: {st}")


def model_metrics(sdir, run_id):
    result = json.loads((SweepDir(sdir).run(run_id).path / "result.json").read_text())
    return {k: v for k, v in result["metrics"].items() if not k.endswith("time_s")}


def starts(sdir, run_id):
    return [a for a in atomic.read_jsonl(SweepDir(sdir).run(run_id).path / "attempts.jsonl") if a["event"] == "start"]


def uninterrupted(tmp_path, sweep):
    """The sweep's results run in-process in one go (debug executor, an ample time limit): the reference.

    Resources are not part of a run's identity, so the same run_ids come out.
    """
    text = json.loads(Path(sweep.path).read_text())
    text["resources"]["time_min"] = 60
    (tmp_path / "reference").mkdir(exist_ok=True)
    p = tmp_path / "reference" / Path(sweep.path).name
    p.write_text(json.dumps(text))
    ref = load_sweep(p)
    assert [r.run_id for r in ref.runs] == [r.run_id for r in sweep.runs]
    sdir = tmp_path / "reference" / "root" / sweep.name
    sched.submit(ref, SweepDir(sdir), job_class=PackJob, executor="debug", log=lambda *_: None)
    return {r.run_id: model_metrics(sdir, r.run_id) for r in sweep.runs}


def test_local_executor_end_to_end(tmp_path):
    sweep = spec(tmp_path, "e2e", {"method": ["bp", "dfa"]}, epochs=40, resources={"pack": 2})
    sdir = tmp_path / "root" / sweep.name
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="local", log=lambda *_: None)
    assert entry["executor"] == "local" and len(entry["packs"]) == 2
    st = wait_idle(sweep, sdir)
    assert set(st.values()) == {"done"}
    for r in sweep.runs:
        rdir = SweepDir(sdir).run(r.run_id).path
        result = json.loads((rdir / "result.json").read_text())
        assert result["run_id"] == r.run_id and result["attempts"] == 1 and "test_acc" in result["metrics"]
        assert atomic.read_jsonl(rdir / "metrics.jsonl")
    events = [e["event"] for e in SweepDir(sdir).read_journal()]
    assert events.count("submit") == 1 and events.count("job") == 2 and events[-1] == "driver_end"
    version = json.loads((sdir / entry["code"]).read_text())
    assert set(version) >= {"commit", "dirty", "packages"} and version["packages"]["torch"]
    # a second submit finds nothing to do and runs nothing
    said = []
    assert sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="local", log=said.append) == {}
    assert "nothing to submit" in said[0] and "4 done" in said[0]


def test_submitting_three_times_while_in_flight_runs_nothing_twice(tmp_path):
    sweep = spec(tmp_path, "idem", {"method": ["bp", "dfa"]}, epochs=30, resources={"max_parallel": 1})
    sdir = tmp_path / "root" / sweep.name
    said = []
    for _ in range(3):
        sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="local", log=said.append)
    assert said[0].startswith("submitted 4 runs")
    assert all("nothing to submit" in s and "4 in flight" in s for s in said[1:]), said
    wait_idle(sweep, sdir)
    for r in sweep.runs:
        assert len(starts(sdir, r.run_id)) == 1
    assert [e["event"] for e in SweepDir(sdir).read_journal()].count("submit") == 1


def epochs_taking(tmp_path, seconds, method) -> int:
    """Epochs of a SMALL run that train for about `seconds` on this machine, measured (a probe run
    of 40 epochs in-process): a fixed count needs one attempt on a fast machine and ten on a busy one."""
    (tmp_path / "probe").mkdir()
    probe = spec(tmp_path / "probe", "probe", {"method": [method]}, epochs=40, seeds=(1,))
    sdir = tmp_path / "probe" / "root" / probe.name
    sched.submit(probe, SweepDir(sdir), job_class=PackJob, executor="debug", log=lambda *_: None)
    result = json.loads((SweepDir(sdir).run(probe.runs[0].run_id).path / "result.json").read_text())
    return max(100, round(seconds * 40 / result["metrics"]["train_time_s"]))


def test_a_run_needing_three_time_limits_finishes_by_requeue(tmp_path):
    # time_min=0.2: the local controller sends USR2 at 12 s - margin and kills at 12 s; the run
    # needs ~3 attempts' worth of training (~5 s each after start-up), saves on the signal and resumes
    sweep = spec(tmp_path, "limit", {"method": ["fa"]}, epochs=epochs_taking(tmp_path, 15, "fa"), seeds=(1,),
                 resources={"time_min": 0.2}, checkpoint={"margin_s": 4})
    sdir = tmp_path / "root" / sweep.name
    run = sweep.runs[0]
    sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="local", log=lambda *_: None)
    wait_idle(sweep, sdir, timeout=300)
    tries = starts(sdir, run.run_id)
    assert (SweepDir(sdir).run(run.run_id).path / "result.json").exists()
    assert len(tries) >= 2, "the run finished within one time limit: make it longer"
    assert model_metrics(sdir, run.run_id) == uninterrupted(tmp_path, sweep)[run.run_id]


def test_kill_9_at_random_points_then_resume_gives_identical_results(tmp_path):
    sweep = spec(tmp_path, "kill", {"method": ["dfa"]}, epochs=80, seeds=(2,),
                 checkpoint={"every_steps": 5, "keep_last": 2})
    sdir = tmp_path / "root" / sweep.name
    sched.prepare(sweep, SweepDir(sdir), "test")
    run = sweep.runs[0]
    rng = random.Random(0)
    kills = 0
    result = SweepDir(sdir).run(run.run_id).path / "result.json"
    metrics = SweepDir(sdir).run(run.run_id).path / "metrics.jsonl"
    for trial in range(13):          # 12 attempts SIGKILLed (unless done first), then one left to finish
        if result.exists():
            break
        before = metrics.stat().st_size if metrics.exists() else 0
        p = subprocess.Popen([PY, "-m", "jobs.runtime.runner", str(sdir), run.run_id], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if trial == 12:
            assert p.wait(timeout=300) == 0
            break
        # once training is under way (its metrics grew past what the last attempt left), SIGKILL
        # it a random moment later: mid-step, mid-log or mid-checkpoint (saved every 5 steps)
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline and \
                (metrics.stat().st_size if metrics.exists() else 0) <= before:
            time.sleep(0.05)
        try:
            p.wait(timeout=rng.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
    assert result.exists(), "the run never finished"
    assert kills >= 3, "too few kills to mean anything: the run is too short"
    assert model_metrics(sdir, run.run_id) == uninterrupted(tmp_path, sweep)[run.run_id]
    # a rerun over a finished dir does nothing
    out = subprocess.run([PY, "-m", "jobs.runtime.runner", str(sdir), run.run_id], cwd=REPO, capture_output=True, text=True)
    assert json.loads(out.stdout)["outcome"] == "done"


def test_force_reruns_and_keeps_the_old_dir(tmp_path):
    sweep = spec(tmp_path, "force", {"method": ["dfa"]}, epochs=50, seeds=(1,))
    sdir = tmp_path / "root" / sweep.name
    sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="debug", log=lambda *_: None)
    run = sweep.runs[0]
    first = (SweepDir(sdir).run(run.run_id).path / "result.json").read_bytes()
    sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="debug", force=[run.label], log=lambda *_: None)
    aside = [p for p in (sdir / "runs").iterdir() if p.name.startswith(run.run_id + ".before-")]
    assert len(aside) == 1 and (aside[0] / "result.json").read_bytes() == first
    assert (SweepDir(sdir).run(run.run_id).path / "result.json").exists()
    with pytest.raises(sched.SubmitError, match="no run of"):
        sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="debug", force=["nope"], log=lambda *_: None)


def cli(*args, **kw):
    return subprocess.run([PY, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kw)


def test_failed_run_shows_its_error_and_is_not_retried_blindly(tmp_path):
    # a negative learning rate makes the task's optimizer raise: a task's own exception
    p = tmp_path / "fail.yaml"
    p.write_text(textwrap.dedent(f"""
        task: {TASK}
        base: {{d_hidden: 32, num_blocks: 2, k: 2, epochs: 3}}
        grid: {{lr: [0.01, -1.0]}}
    """))
    root = str(tmp_path / "root")
    r = cli("submit", str(p), "--root", root, "--executor", "debug", "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "(Pdb)" not in r.stdout
    st = cli("status", str(p), "--root", root)
    assert "1 done, 1 failed" in st.stdout
    assert "--retry-failed" in st.stdout
    failed_line = next(l for l in st.stdout.splitlines() if "failed" in l and "lr=" in l)
    assert "Error" in failed_line or "error" in failed_line.lower()
    again = cli("resume", str(p), "--root", root, "--executor", "debug")
    assert "nothing to submit" in again.stdout


def test_plan_shows_states_and_changes_after_submit(tmp_path):
    sweep = spec(tmp_path, "planned", {"method": ["dfa"]}, epochs=30, seeds=(1,))
    root = tmp_path / "root"
    sched.submit(sweep, SweepDir(root / sweep.name), job_class=PackJob, executor="debug", log=lambda *_: None)
    grown = tmp_path / "planned.yaml"
    data = json.loads(grown.read_text())
    data["seeds"] = [1, 2]
    grown.write_text(json.dumps(data))
    out = json.loads(cli("plan", str(grown), "--root", str(root), "--json").stdout)
    assert [r["state"] for r in out["runs"]] == ["done", "new"]
    assert len(out["changes"]["added"]) == 1 and len(out["changes"]["unchanged"]) == 1
    text = cli("plan", str(grown), "--root", str(root)).stdout
    assert "1 added, 0 removed, 1 unchanged" in text
