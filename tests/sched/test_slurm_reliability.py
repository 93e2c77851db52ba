"""Reliability on the real single-node SLURM: a torn journal line does not hide live jobs, a real
TIMEOUT is said as such (and resumes), a pack's failures land on the run that caused them."""
import json
import shutil

import pytest

from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir
from tests.sched.slurmkit import REPO, cli, job_ids, squeue_states, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"


def spec(tmp_path, name, grid, **extra):
    shutil.copy(BEHAVE, tmp_path / "behave.py")
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "task": "behave.py:train", "grid": grid,
                                "resources": {"time_min": 10, "mem_gb": 1, **extra.pop("resources", {})},
                                "checkpoint": {"every_min": None, "every_steps": 5}, **extra}))
    return path, load_sweep(path)


def test_a_torn_journal_line_hides_no_live_job(tmp_path):
    path, sweep = spec(tmp_path, "torn", {"act": ["slow"]}, seeds=[1, 2], base={"steps": 600, "sleep_s": 0.1})
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    with open(sweep_dir.journal, "ab") as f:          # what a disk-full append left: 4 KB of a record, no newline
        f.write(b'{"event": "submit", "executor": "slurm", "runs": ["' + b"x" * 4096)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    jobs = job_ids(sweep_dir.path)
    assert len(jobs) == 2
    status = cli("status", path, "--root", root).stdout
    assert "2 runs: " in status and "(2 in flight)" in status, status
    again = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "nothing to submit" in again.stdout and len(job_ids(sweep_dir.path)) == 2, again.stdout
    cancel = cli("cancel", path, "--root", root)
    assert "cancelled 2 SLURM jobs" in cancel.stdout, cancel.stdout
    wait_for(lambda: not any(squeue_states(j) for j in jobs), 60, "the jobs gone")


def test_a_real_time_limit_is_said_as_such_and_resumes(tmp_path):
    # one step sleeps past the 1-minute limit: the stop request cannot be honoured in time
    path, sweep = spec(tmp_path, "timeout", {"act": ["slow"]}, base={"steps": 3, "sleep_s": 100},
                       resources={"time_min": 1, "max_requeue": 0, "max_chain": 0})
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    job = job_ids(sweep_dir.path)[0]
    from jobs.sched import slurm
    wait_for(lambda: slurm.sacct_states([job], "now-1hours").get(job) == "TIMEOUT", 240, "sacct: TIMEOUT")
    # the job's processes take KillWait to die after the limit: until then the run's lock is held
    wait_for(lambda: set(sched.states(sweep, sweep_dir).values()) == {RunState.PENDING}, 60, "the run pending")
    status = cli("status", path, "--root", root, env={**__import__("os").environ, "COLUMNS": "250"}).stdout
    assert "1 runs: 1 pending" in status and "TIMEOUT" in status and "wall-clock limit" in status, status
    assert "elapsed" in status and " 0s " not in status.splitlines()[2]


def test_a_packs_failures_land_on_the_runs_that_caused_them(tmp_path):
    path, sweep = spec(tmp_path, "pack", {"act": ["exit1", "ok", "raise"]}, resources={"pack": 3})
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 3 runs in 1 jobs" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: RunState.IN_FLIGHT not in sched.states(sweep, sweep_dir).values(), 180, "the pack's job ended")
    states = {r.config["act"]: sched.states(sweep, sweep_dir)[r.run_id] for r in sweep.runs}
    assert states == {"exit1": RunState.FAILED, "ok": RunState.DONE, "raise": RunState.FAILED}
    status = cli("status", path, "--root", root).stdout
    assert "before the run started" not in status
    lines = {line.split()[0]: line for line in status.splitlines()[2:] if line.strip()}
    assert "sys.exit(1)" in lines["act=exit1"] and "TypeError" in lines["act=raise"], status
