"""On the real single-node SLURM: state you can trust where the scheduler's facts and the sweep dir
disagree. A downstream run consumes only a done upstream; a scancelled pending task, a cancel followed
at once by resume, a corrupt result and an interrupted submit all end with every run done.

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/sched/test_slurm_state.py
"""
import json
import subprocess

import pytest

from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir, atomic
from tests.sched.slurmkit import cli, job_ids, squeue_states, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

FIT = '''
import pathlib
import time

CONFIG = {"seed": 0, "steps": 12, "poison": "", "sleep_s": 0.0}


def train(cfg, ctx):
    state = ctx.restore()
    step, w = (0, 0.0) if state is None else (state["step"], state["w"])
    while step < cfg["steps"]:
        w += 0.1 * (1.0 + cfg["seed"] - w)
        step += 1
        ctx.log(step, w=w, total_steps=cfg["steps"])
        time.sleep(cfg["sleep_s"])
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step, "w": w})
            if cfg["poison"] and pathlib.Path(cfg["poison"]).exists():
                raise RuntimeError("poisoned right after a checkpoint")
    ctx.save(step, {"step": step, "w": w})
    return {"w": w}
'''

SCORE = '''
CONFIG = {"factor": 1.0}


def train(cfg, ctx):
    state = ctx.upstream["train"].checkpoint()
    return {"score": state["w"] * cfg["factor"], "upstream_step": state["step"]}
'''


def pipeline(tmp_path, name, *, steps=12, sleep_s=0.0, poison="", resources=None, factors=(1.0, 2.0, 3.0)):
    (tmp_path / "fit.py").write_text(FIT)
    (tmp_path / "score.py").write_text(SCORE)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "stages": [
        {"name": "train", "task": "fit.py:train", "base": {"steps": steps, "sleep_s": sleep_s, "poison": poison},
         "checkpoint": {"every_min": None, "every_steps": 3, "keep_last": 1}},
        {"name": "eval", "after": "train", "task": "score.py:train", "grid": {"factor": list(factors)}}],
        "resources": {"time_min": 10, "mem_gb": 1, **(resources or {})}}))
    return path, load_sweep(path)


def slurm_args(root):
    return ("--executor", "slurm", "--cluster", "local", "--root", root)


def quiet(sweep_dir):
    """Every job of the sweep has left the queue."""
    arrays = sorted({j.split("_")[0] for j in job_ids(sweep_dir.path)})
    return not squeue_states(",".join(arrays))


def eval_results(sweep, sweep_dir):
    return [json.loads(sweep_dir.run(r.run_id).result.read_text()) for r in sweep.runs if r.stage == "eval"]


def test_a_failed_upstream_leaves_its_evals_blocked_then_resume_finishes_on_the_final_step(tmp_path):
    poison = tmp_path / "poison"
    poison.write_text("the bug")
    path, sweep = pipeline(tmp_path, "raises", poison=str(poison))
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, *slurm_args(root))
    assert "submitted 4 runs" in out.stdout, out.stdout + out.stderr
    train = next(r for r in sweep.runs if r.stage == "train")
    wait_for(lambda: sweep_dir.run(train.run_id).error.exists(), 120, "the upstream raised after its first checkpoint")
    wait_for(lambda: quiet(sweep_dir), 120, "the released eval jobs ended")
    # the pack exited 0, so afterok released the evals: they must not have consumed step 3
    evals = [r for r in sweep.runs if r.stage == "eval"]
    assert not any(sweep_dir.run(r.run_id).result.exists() for r in evals)
    states = sched.states(sweep, sweep_dir)
    assert states[train.run_id] == RunState.FAILED and {states[r.run_id] for r in evals} == {RunState.BLOCKED}
    status = cli("status", path, "--root", root).stdout
    assert "eval: 3 blocked" in status, status
    poison.unlink()                      # the fix
    out = cli("resume", path, *slurm_args(root), "--retry-failed", "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}
    final = json.loads(sweep_dir.run(train.run_id).result.read_text())["checkpoint"]
    assert final["step"] == 12
    for got in eval_results(sweep, sweep_dir):
        assert got["metrics"]["upstream_step"] == 12
        assert got["upstream"]["train"] == {"run_id": train.run_id, **final}          # lineage


def test_a_chained_upstream_moves_its_evals_onto_the_continuation(tmp_path):
    # max_requeue 0: the USR2 chains the run into a fresh job, and the first job exits 0 unfinished
    path, sweep = pipeline(tmp_path, "chained", steps=40, sleep_s=0.25, resources={"max_requeue": 0})
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, *slurm_args(root))
    assert "submitted 4 runs" in out.stdout, out.stdout + out.stderr
    train = next(r for r in sweep.runs if r.stage == "train")
    first = job_ids(sweep_dir.path)[0]
    wait_for(lambda: len(atomic.read_jsonl(sweep_dir.run(train.run_id).metrics)) >= 8, 120, "training under way")
    subprocess.run(["scancel", "--signal=USR2", first], check=True)
    chain = wait_for(lambda: next((e for e in sweep_dir.read_journal() if e["event"] == "chain"), None), 120,
                     "the run chained")
    evals_job = job_ids(sweep_dir.path)[1]
    deps = subprocess.run(["squeue", "-h", "-o", "%E", "-j", evals_job.split("_")[0]], capture_output=True, text=True).stdout
    assert chain["job_id"] in deps and first not in deps, deps
    out = cli("resume", path, *slurm_args(root), "--wait", timeout=600)         # nothing to submit: it waits
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing to submit" in out.stdout
    for got in eval_results(sweep, sweep_dir):
        assert got["metrics"]["upstream_step"] == 40


def test_a_scancelled_pending_task_is_resubmitted_and_waited_for(tmp_path):
    path, sweep = pipeline(tmp_path, "vanish", steps=12, sleep_s=0.3, factors=(1.0,))
    spec = json.loads(path.read_text())
    spec["stages"] = [dict(spec["stages"][0], seeds=[1, 2, 3])]
    spec["resources"]["max_parallel"] = 1
    path.write_text(json.dumps(spec))
    sweep = load_sweep(path)
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, *slurm_args(root))
    assert "submitted 3 runs" in out.stdout, out.stdout + out.stderr
    last = job_ids(sweep_dir.path)[-1]
    wait_for(lambda: squeue_states(last) == {"PENDING"}, 60, "the last task pending behind the throttle")
    subprocess.run(["scancel", last], check=True)
    wait_for(lambda: not squeue_states(last), 30, "the pending task gone from squeue")
    out = cli("resume", path, *slurm_args(root), "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 1 runs" in out.stdout, out.stdout
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}


def test_cancel_then_resume_at_once_finishes_everything(tmp_path):
    path, sweep = pipeline(tmp_path, "racing", steps=60, sleep_s=0.2)
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, *slurm_args(root))
    assert "submitted 4 runs" in out.stdout, out.stdout + out.stderr
    train = next(r for r in sweep.runs if r.stage == "train")
    wait_for(lambda: len(atomic.read_jsonl(sweep_dir.run(train.run_id).metrics)) >= 5, 120, "training under way")
    subprocess.run(["scancel", job_ids(sweep_dir.path)[0]], check=True)
    out = cli("resume", path, *slurm_args(root), "--retry-failed", "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}
    for got in eval_results(sweep, sweep_dir):
        assert got["metrics"]["upstream_step"] == 60


def test_resume_wait_after_a_corrupt_result_waits_for_the_rerun(tmp_path):
    path, sweep = pipeline(tmp_path, "torn", steps=30, sleep_s=0.1, factors=(1.0,))
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    assert cli("submit", path, *slurm_args(root), "--wait", timeout=600).returncode == 0
    ev = next(r for r in sweep.runs if r.stage == "eval")
    wait_for(lambda: quiet(sweep_dir), 60, "the finished jobs gone from the queue")   # no live job holds it now
    sweep_dir.run(ev.run_id).result.write_text('{"metrics": {"sc')
    out = cli("resume", path, *slurm_args(root), "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 1 runs" in out.stdout and sweep_dir.run(ev.run_id).read_result() is not None


def test_the_jobs_of_a_submit_killed_before_its_journal_entry_are_found_again(tmp_path):
    path, sweep = pipeline(tmp_path, "orphan", steps=200, sleep_s=0.2, factors=(1.0,))
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, *slurm_args(root))
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    entries = sweep_dir.read_journal()
    submitted = next(e for e in entries if e["event"] == "submit")
    # as if the submitting command died between sbatch and writing its submit entry
    atomic.write_text(sweep_dir.journal, "".join(json.dumps(e) + "\n" for e in entries if e["event"] != "submit"))
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.IN_FLIGHT}    # status finds them by name
    out = cli("resume", path, *slurm_args(root))
    assert "nothing to submit" in out.stdout and "2 in flight" in out.stdout, out.stdout + out.stderr
    recovered = [e for e in sweep_dir.read_journal() if e["event"] == "submit"]
    assert len(recovered) == 1 and recovered[0]["recovered"] and sorted(recovered[0]["job_ids"]) == sorted(submitted["job_ids"])
    out = cli("cancel", path, "--root", root)
    assert "cancelled 2 SLURM jobs" in out.stdout, out.stdout + out.stderr
