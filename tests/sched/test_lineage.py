"""A downstream run consumes only a done upstream, records what it consumed, and is `stale` when that
changes (a replaced registry entry, an upstream run again). On this machine (debug executor, real
processes where it matters); the same on the real SLURM is in tests/sched/test_slurm_state.py."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.runtime import runner
from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import Outcome, RunState, SweepDir

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "fixtures" / "pipeline_tasks"


def two_stages(tmp_path, name="lineage"):
    for f in TASKS.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "stages": [
        {"name": "prepare", "task": "prep.py:train", "base": {"n": 10}},
        {"name": "train", "after": "prepare", "task": "fit.py:train", "seeds": [3],
         "base": {"steps": 30}, "checkpoint": {"every_steps": 10, "keep_last": 3}},
        {"name": "eval", "after": "train", "task": "score.py:train", "grid": {"scale.factor": [1.0, 2.0]}}]}))
    return path


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HPCSWEEP_REGISTRY": str(tmp_path / "registry.yaml")})


def finished(tmp_path):
    """The three-stage pipeline run to its end in this process: (spec, root, sweep, sweep dir, a train run, an eval run)."""
    path = two_stages(tmp_path)
    root = tmp_path / "root"
    assert cli(tmp_path, "submit", path, "--root", root, "--executor", "debug").returncode == 0
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(root, sweep.name)
    return (path, root, sweep, sweep_dir, next(r for r in sweep.runs if r.stage == "train"),
            next(r for r in sweep.runs if r.stage == "eval"))


def test_a_downstream_run_whose_upstream_is_not_done_is_blocked_and_leaves_no_result(tmp_path):
    path, root, sweep, sweep_dir, train, ev = finished(tmp_path)
    os.replace(sweep_dir.run(train.run_id).result, tmp_path / "aside.json")     # as if it never finished
    sweep_dir.run(ev.run_id).result.unlink()
    assert runner.run_one(sweep_dir.path, ev.run_id) == Outcome.BLOCKED
    run_dir = sweep_dir.run(ev.run_id)
    assert not run_dir.result.exists() and not run_dir.error.exists()
    last = run_dir.read_attempts()[-1]
    assert last["event"] == "blocked" and train.run_id in last["reason"]
    status = cli(tmp_path, "status", path, "--root", root).stdout
    assert "is not done" in status, status


def test_a_replaced_registry_entry_makes_its_consumers_stale_and_resume_reruns_them(tmp_path):
    path = two_stages(tmp_path, "trainer")
    root = tmp_path / "root"
    assert cli(tmp_path, "submit", path, "--root", root, "--executor", "debug").returncode == 0
    out = cli(tmp_path, "export", path, "--root", root, "--stage", "train", "--step", "20", "--name", "fit3")
    assert out.returncode == 0, out.stderr
    later = tmp_path / "later.yaml"
    later.write_text(json.dumps({"name": "later", "stages": [
        {"name": "eval", "from_manifest": "fit3", "task": "score.py:train", "grid": {"scale.offset": [0.0, 1.0]}}]}))
    assert cli(tmp_path, "submit", later, "--root", root, "--executor", "debug").returncode == 0
    sweep_dir = SweepDir.under(root, "later")
    used = [json.loads(sweep_dir.run(rid).result.read_text()) for rid in sweep_dir.run_dirs()]
    assert [u["metrics"]["upstream_step"] for u in used] == [20, 20]
    assert all(u["upstream"]["train"]["step"] == 20 and u["upstream"]["train"]["name"] == "fit3" for u in used)

    out = cli(tmp_path, "export", path, "--root", root, "--stage", "train", "--step", "30", "--name", "fit3", "--replace")
    assert out.returncode == 0, out.stderr
    plan = cli(tmp_path, "plan", later, "--root", root)
    assert plan.stdout.count("stale") >= 2, plan.stdout
    status = cli(tmp_path, "status", later, "--root", root).stdout
    assert "2 runs: 2 stale" in status and "resume" in status, status
    out = cli(tmp_path, "resume", later, "--root", root, "--executor", "debug")
    assert out.returncode == 0 and "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    again = [json.loads(sweep_dir.run(rid).result.read_text()) for rid in sweep_dir.run_dirs()]
    assert sorted(u["metrics"]["upstream_step"] for u in again) == [30, 30]
    assert len(list(sweep_dir.runs.glob("*.before-*/result.json"))) == 2     # the stale results kept beside
    assert "2 runs: 2 done" in cli(tmp_path, "status", later, "--root", root).stdout


def test_an_upstream_forced_again_makes_its_consumers_stale_until_it_finishes_alike(tmp_path):
    path = two_stages(tmp_path)
    root = tmp_path / "root"
    assert cli(tmp_path, "submit", path, "--root", root, "--executor", "debug").returncode == 0
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(root, sweep.name)
    train = next(r for r in sweep.runs if r.stage == "train")
    evals = [r for r in sweep.runs if r.stage == "eval"]
    # the upstream set aside (what --force does before it resubmits): its consumers no longer match
    os.replace(sweep_dir.run(train.run_id).path, tmp_path / "old-train")
    states = sched.states(sweep, sweep_dir)
    assert {states[r.run_id] for r in evals} == {RunState.STALE}
    # rerun to the same final checkpoint (a deterministic task): its consumers match again
    shutil.copytree(tmp_path / "old-train", sweep_dir.run(train.run_id).path)
    sweep_dir.run(train.run_id).result.unlink()
    assert runner.run_one(sweep_dir.path, train.run_id) == Outcome.DONE
    assert {sched.states(sweep, sweep_dir)[r.run_id] for r in evals} == {RunState.DONE}
    # a different final checkpoint: stale
    result = json.loads(sweep_dir.run(train.run_id).result.read_text())
    result["checkpoint"]["sha256"] = "0" * 64
    sweep_dir.run(train.run_id).result.write_text(json.dumps(result))
    assert {sched.states(sweep, sweep_dir)[r.run_id] for r in evals} == {RunState.STALE}


def test_a_lost_upstream_checkpoint_says_to_rerun_the_upstream_not_to_retry(tmp_path):
    path, root, sweep, sweep_dir, train, ev = finished(tmp_path)
    for f in sweep_dir.run(train.run_id).checkpoints.iterdir():
        f.unlink()
    out = cli(tmp_path, "submit", path, "--root", root, "--executor", "debug", "--force", ev.run_id)
    assert sweep_dir.run(ev.run_id).error.exists(), out.stdout + out.stderr
    last = sweep_dir.run(ev.run_id).error.read_text().strip().splitlines()[-1]
    assert "is gone" in last and f"--force {train.run_id}" in last, last


def test_an_earlier_upstream_checkpoint_loads_checked_by_its_own_sidecar_not_the_final_digest(tmp_path):
    """A task reading its upstream's history (router histograms of two checkpoints, say) asks for a step
    before the final one: it loads (its own sidecar verifies it); the final one is still checked against
    the digest the upstream's result recorded, and a damaged earlier one is refused."""
    from jobs.runtime.checkpoint import ckpt_path
    from jobs.runtime.context import UpstreamRun
    _, _, _, sweep_dir, train, _ = finished(tmp_path)
    up = UpstreamRun("train", {"run_id": train.run_id}, sweep_dir.runs)
    steps = up.checkpoint_steps()
    assert len(steps) >= 2 and up.lineage()["step"] == steps[-1], steps
    assert up.checkpoint(steps[0])["step"] == steps[0]
    assert up.checkpoint()["step"] == up.checkpoint(steps[-1])["step"] == steps[-1]
    path = ckpt_path(sweep_dir.run(train.run_id).checkpoints, steps[0])
    path.write_bytes(path.read_bytes() + b"x")
    try:
        up.checkpoint(steps[0])
    except ValueError as e:
        assert "damaged" in str(e), e
    else:
        raise AssertionError("a damaged earlier checkpoint loaded")
