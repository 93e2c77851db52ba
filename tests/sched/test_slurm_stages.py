"""On the real single-node SLURM: distributed runs (srun ranks, gloo) and pipelines (dependencies).

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/sched/test_slurm_stages.py
"""
import json
import os
import shutil
import signal
import subprocess

import pytest

from jobs.sched import slurm
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir, atomic
from tests.sched.slurmkit import REPO, SMALL, cli, job_ids, model_metrics, rdir, squeue_states, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
TASKS = REPO / "tests" / "fixtures" / "pipeline_tasks"


def ddp_spec(where, name, epochs):
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.yaml"
    path.write_text(json.dumps({
        "name": name, "task": "resmlp", "base": {**SMALL, "epochs": epochs, "method": "bp"},
        "resources": {"tasks_per_node": 2, "cpus": 1, "mem_gb": 1, "time_min": 20},
        "checkpoint": {"every_min": None, "every_steps": 5, "keep_last": 1}}))
    return path


def lines(sweep_dir, run):
    return [{k: v for k, v in m.items() if k != "time"} for m in atomic.read_jsonl(sweep_dir.run(run.run_id).metrics)]


def test_a_two_process_run_preempted_twice_ends_as_the_uninterrupted_one(tmp_path):
    reference = ddp_spec(tmp_path / "ref", "ddp", epochs=12)
    ref = subprocess.Popen([os.sys.executable, "main.py", "run", str(reference), "--root", str(tmp_path / "ref"),
                            "--only", ""], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = ddp_spec(tmp_path, "ddp", epochs=12)
    sweep = load_sweep(path)
    run = sweep.runs[0]
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", tmp_path / "root")
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    job = job_ids(sweep_dir.path)[0]
    script = next(sweep_dir.logs.glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--kill-on-bad-exit=1" in script
    # preempted twice, by the pre-timeout signal and by an admin's requeue, at different moments
    for n, interrupt in ((3, ["scancel", "--signal=USR2", job]), (8, ["scontrol", "requeue", job])):
        wait_for(lambda: len(lines(sweep_dir, run)) >= n, 180, f"{n} epochs logged")
        subprocess.run(interrupt, check=True, capture_output=True)
        wait_for(lambda: any(a.get("outcome") == "interrupted" and a["event"] == "end"
                             for a in sweep_dir.run(run.run_id).read_attempts()[-2:]), 120, "the run checkpointed")
    wait_for(lambda: sweep_dir.run(run.run_id).result.exists(), 300, "the run done after two preemptions")
    result = json.loads(sweep_dir.run(run.run_id).result.read_text())
    assert result["world_size"] == 2 and result["attempts"] >= 3
    starts = sweep_dir.run(run.run_id).starts()
    assert all(len(s["ranks"]) == 2 for s in starts) and {s["job_id"] for s in starts} == {job}   # requeued in place
    logs = sorted(p.name for p in (sweep_dir.logs / job).glob(f"{job}_*_log.err"))
    assert logs == [f"{job}_0_log.err", f"{job}_1_log.err"]                    # srun ran both ranks
    assert "rank 1 of 2" in (sweep_dir.logs / job / f"{job}_1_log.err").read_text()
    assert sorted(p.name for p in rdir(sweep_dir.path, run).iterdir()) == [
        "attempts.jsonl", "checkpoints", "config.yaml", "metrics.jsonl", "result.json", "run.lock"]
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    ref_dir = SweepDir.under(tmp_path / "ref", sweep.name)
    assert model_metrics(sweep_dir.path, run) == model_metrics(ref_dir.path, run)
    assert lines(sweep_dir, run) == lines(ref_dir, run)


def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    path = ddp_spec(tmp_path, "killrank", epochs=400)
    sweep = load_sweep(path)
    run = sweep.runs[0]
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", tmp_path / "root")
    assert "submitted 1 runs" in out.stdout, out.stderr
    job = job_ids(sweep_dir.path)[0]
    wait_for(lambda: len(lines(sweep_dir, run)) >= 1, 180, "training under way")
    rank1 = sweep_dir.run(run.run_id).starts()[-1]["ranks"][1]["pid"]
    os.kill(rank1, signal.SIGKILL)
    wait_for(lambda: not squeue_states(job), 60, "the job gone within a minute of a rank's death")
    assert not sweep_dir.run(run.run_id).result.exists()
    status = cli("status", path, "--root", tmp_path / "root").stdout
    assert "1 runs: 1 failed" in status or "1 runs: 1 pending" in status, status


def test_a_pipeline_waits_on_slurm_dependencies_and_resumes_a_cancelled_upstream(tmp_path):
    for f in TASKS.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "chain.yaml"
    path.write_text(json.dumps({"name": "chain", "stages": [
        {"name": "train", "task": "fit.py:train", "seeds": [1, 2], "base": {"steps": 40, "sleep_s": 0.3},
         "checkpoint": {"every_min": None, "every_steps": 5, "keep_last": 1}},
        {"name": "eval", "after": "train", "task": "score.py:train", "grid": {"scale.factor": [1.0, 2.0]}}],
        "resources": {"time_min": 10, "mem_gb": 1}}))
    (tmp_path / "data.txt").write_text("1 2 3")
    # fit reads its data from the prepare stage's run dir: this two-stage chain has none, so give it one
    (tmp_path / "fit.py").write_text((TASKS / "fit.py").read_text().replace(
        'ctx.upstream["prepare"].run_dir / "data.txt"', f'__import__("pathlib").Path({str(tmp_path)!r}) / "data.txt"'))
    sweep = load_sweep(path)
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 6 runs" in out.stdout, out.stdout + out.stderr
    entry = next(e for e in sweep_dir.read_journal() if e["event"] == "submit")
    evals = [r for r in sweep.runs if r.stage == "eval"]
    eval_jobs = {entry["job_ids"][i] for i, pack in enumerate(entry["packs"]) if pack[0] in {r.run_id for r in evals}}
    arrays = ",".join(sorted({j.split("_")[0] for j in eval_jobs}))
    squeue = lambda fmt: subprocess.run(["squeue", "-h", "-o", fmt, "-j", arrays], capture_output=True, text=True).stdout
    assert squeue("%E").count("afterok:") == 2, squeue("%i %E")     # each eval array waits on its own train job
    # the eval jobs wait in SLURM, not on this machine
    wait_for(lambda: "Dependency" in squeue("%r"), 60, "squeue's reason for the eval jobs: Dependency")
    # cancel one training job mid-way: its evals are blocked; the other chain finishes
    first = next(r for r in sweep.runs if r.stage == "train" and r.config["seed"] == 1)
    first_job = entry["job_ids"][next(i for i, p in enumerate(entry["packs"]) if p == [first.run_id])]
    wait_for(lambda: len(atomic.read_jsonl(sweep_dir.run(first.run_id).metrics)) >= 3, 120, "seed 1 training")
    subprocess.run(["scancel", first_job], check=True)
    blocked = [r for r in evals if r.upstream["train"]["run_id"] == first.run_id]
    from jobs.sched import submit as sched
    wait_for(lambda: all(sched.states(sweep, sweep_dir)[r.run_id] == RunState.BLOCKED for r in blocked), 120,
             "the cancelled run's evals blocked")
    others = [r for r in evals if r not in blocked]
    wait_for(lambda: all(sweep_dir.run(r.run_id).result.exists() for r in others), 240, "the other chain done")
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root, "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}
    for r in evals:
        got = json.loads(sweep_dir.run(r.run_id).result.read_text())["metrics"]
        assert got["upstream_step"] == 40 and got["upstream_seed"] == r.varied["seed"]
    states = slurm.sacct_states(list(eval_jobs), "now-1hours")
    assert "CANCELLED" in states.values() or "PENDING" not in states.values()
