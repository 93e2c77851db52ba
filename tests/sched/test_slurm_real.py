"""On a real single-node SLURM (env/slurm/start.sh): arrays, preemption, time limits, idempotent
submits, infrastructure failures, hostile specs. Real jobs of a real task throughout.

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/test_slurm_real.py

Without a cluster these tests skip (saying how to start one); with HPCSWEEP_REQUIRE_SLURM=1 (CI)
that skip is a failure. Nothing here sleeps and hopes: every wait polls for a condition under a
deadline. The slow test (a real 2-minute wall-time limit) is submitted first and checked last, so
the other tests run while it works through its attempts.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.runtime.runner import PackJob
from jobs.sched import slurm
from jobs.sched import submit as sched
from jobs.store import SweepDir, atomic
from jobs.spec import Resources, load_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

from tests.sched.slurmkit import (PY, REPO, SMALL, all_done, attempts, calls, cli, job_ids, metric_lines,  # noqa: F401
                                  model_metrics, rdir, reference, reference_metrics, shims, squeue_states,
                                  wait_for, write_spec)


# ---------------------------------------------------------------- the slow one, submitted first

def epochs_for(where: Path, seconds: float) -> int:
    """Epochs of the wall-time run that take about `seconds` of training on this machine.

    Measured, not guessed: a fixed epoch count needs 2 attempts on a fast machine and 6 on a busy one.
    A 40-epoch run of the same config in-process; its result's train_time_s gives the pace.
    """
    probe = write_spec(where / "probe", "probe", {"method": ["dfa"]}, epochs=40, seeds=(3,))
    out = cli("submit", probe, "--executor", "debug", "--root", where / "probe" / "root")
    assert out.returncode == 0, out.stderr
    sweep = load_sweep(probe)
    per_epoch = model_time(where / "probe" / "root" / sweep.name, sweep.runs[0]) / 40
    return max(200, round(seconds / per_epoch))


def model_time(sdir, run) -> float:
    return json.loads((rdir(sdir, run) / "result.json").read_text())["metrics"]["train_time_s"]


@pytest.fixture(scope="module")
def walltime(tmp_path_factory):
    """A run needing several attempts under a real 2-minute limit: SLURM's own USR2 (80 s before the limit)
    interrupts it; one requeue (max_requeue 1), then it must go on in a chained job."""
    where = tmp_path_factory.mktemp("walltime")
    epochs = epochs_for(where, seconds=110)     # ~3 attempts of ~40 s of training, however fast this machine
    path = write_spec(where, "walltime", {"method": ["dfa"]}, epochs=epochs, seeds=(3,),
                      resources={"time_min": 2, "signal_delay_s": 80, "max_requeue": 1})
    sweep = load_sweep(path)
    sdir = where / "root" / sweep.name
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    assert entry["job_ids"]
    yield sweep, sdir
    sched.cancel(SweepDir(sdir), log=lambda *_: None)


# ---------------------------------------------------------------- tests

@pytest.mark.usefixtures("walltime")         # the slow sweep starts first, and works while the rest run
def test_the_local_profile_matches_the_cluster():
    prof = slurm.load_profile("local")
    part = subprocess.run(["scontrol", "show", "partition", prof.partition], capture_output=True, text=True)
    assert part.returncode == 0, f"env/clusters.yaml local.partition {prof.partition!r}: {part.stderr}"
    max_time = dict(kv.split("=", 1) for kv in part.stdout.split() if "=" in kv)["MaxTime"]
    h, m, _ = max_time.split("-")[-1].split(":")
    assert int(h) * 60 + int(m) == prof.max_time_min
    assert prof.requeue is True and 0 < prof.signal_delay_s < 60 * prof.max_time_min
    assert slurm.max_array_size() == 1001


def test_a_sweep_goes_out_as_one_array_and_completes(tmp_path):
    path = write_spec(tmp_path, "array", {"method": ["bp", "fa", "dfa"]}, epochs=4, seeds=(1, 2),
                      resources={"pack": 2, "max_parallel": 2})
    root = tmp_path / "root"
    path_env, count = shims(tmp_path, "sbatch", "sacct")
    env = {**os.environ, "PATH": path_env}
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root, env=env)
    assert out.returncode == 0, out.stderr
    assert "submitted 6 runs in 3 jobs (slurm)" in out.stdout
    assert calls(count, "sbatch") == 1                       # 3 packs, one sbatch
    sweep = load_sweep(path)
    sdir = root / sweep.name
    jobs = job_ids(sdir)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_{i}" for i in range(3)]
    script = (sdir / "logs" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --partition=debug" in script
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@20" in script

    wait_for(lambda: all_done(sdir, sweep.runs), 180, "all 6 runs done")
    for r in sweep.runs:
        result = json.loads((rdir(sdir, r) / "result.json").read_text())
        assert result["run_id"] == r.run_id and result["attempts"] == 1 and 0 < result["metrics"]["test_acc"] <= 1
    states = wait_for(lambda: (s := slurm.sacct_states(jobs, "now-1hours")) and
                      all(s.get(j) == "COMPLETED" for j in jobs) and s, 60, "sacct: every array task COMPLETED")
    assert set(states) >= set(jobs)

    before = calls(count, "sacct")
    status = cli("status", path, "--root", root, env=env)
    assert status.returncode == 0, status.stderr
    assert "6 runs: 6 done" in status.stdout and "aggregate" in status.stdout
    assert calls(count, "sacct") - before == 1               # one sacct call for the whole sweep
    again = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root, env=env)
    assert "nothing to submit: 6 done" in again.stdout and calls(count, "sbatch") == 1


def test_preempted_and_timed_out_runs_resume_bit_identical(tmp_path):
    # 3 runs in 2 packs (one of 2 runs side by side, one of 1): an array of 2 tasks, each interrupted
    # twice by USR2 (what SLURM sends before the time limit, and on preemption at sites that ask for
    # it) or `scontrol requeue` (SIGTERM: what preemption looks like elsewhere), each time once its
    # runs train again after the last interruption.
    path = write_spec(tmp_path, "preempt", {"method": ["bp", "fa", "dfa"]}, epochs=60, seeds=(5,),
                      resources={"pack": 2, "pack_concurrent": True, "max_parallel": 2})
    sweep = load_sweep(path)
    ref = reference(tmp_path, path)
    sdir = tmp_path / "root" / sweep.name
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    pair, single = entry["job_ids"]
    runs = {r.run_id: r for r in sweep.runs}
    in_pair = [runs[rid] for rid in entry["packs"][0]]
    in_single = [runs[rid] for rid in entry["packs"][1]]
    seen = {}

    def training(rs, attempt):
        """Each run is in its `attempt`-th attempt and has logged 2 metric lines more than before it."""
        return all(len(attempts(sdir, r)) >= attempt and len(attempts(sdir, r, "end")) < attempt
                   and metric_lines(sdir, r) >= seen.get(r.run_id, 0) + 2 for r in rs)

    def interrupt(rs, attempt, command):
        wait_for(lambda: training(rs, attempt), 120, f"{[r.label for r in rs]} training in attempt {attempt}")
        subprocess.run(command, check=True)
        wait_for(lambda: all(len(attempts(sdir, r, "end")) >= attempt for r in rs), 60,
                 f"{[r.label for r in rs]} checkpointed in attempt {attempt}")
        seen.update({r.run_id: metric_lines(sdir, r) for r in rs})

    interrupt(in_single, 1, ["scancel", "--signal=USR2", single])
    interrupt(in_pair, 1, ["scontrol", "requeue", pair])
    interrupt(in_single, 2, ["scancel", "--signal=USR2", single])
    interrupt(in_pair, 2, ["scancel", "--signal=USR2", pair])

    wait_for(lambda: all_done(sdir, sweep.runs), 240, "every run done after the interruptions")
    expected = reference_metrics(tmp_path, ref, sweep)
    for r in sweep.runs:
        assert model_metrics(sdir, r) == expected[r.run_id], r.label
        ends = attempts(sdir, r, "end")
        assert [e["outcome"] for e in ends] == ["interrupted", "interrupted", "done"], (r.label, ends)
        assert {a["job_id"] for a in attempts(sdir, r)} == {pair if r in in_pair else single}   # requeued, not chained
        steps = [m["step"] for m in atomic.read_jsonl(rdir(sdir, r) / "metrics.jsonl")]
        assert steps == sorted(set(steps))          # resumed from the checkpoint: no step logged twice
    assert not [e for e in SweepDir(sdir).read_journal() if e["event"] == "chain"]


def test_past_the_requeue_budget_an_array_task_goes_on_in_a_chained_job(tmp_path):
    # max_requeue 0: the first USR2 chains at once. The chained job is submitted from inside an
    # array task; it must know itself by its own id, not the SLURM_ARRAY_* it would inherit.
    path = write_spec(tmp_path, "chain", {"method": ["bp", "dfa"]}, epochs=60, seeds=(9,),
                      resources={"max_requeue": 0})
    sweep = load_sweep(path)
    sdir = tmp_path / "root" / sweep.name
    entry = sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    task = entry["job_ids"][1]
    run = next(r for r in sweep.runs if r.run_id == entry["packs"][1][0])
    wait_for(lambda: metric_lines(sdir, run) >= 2, 120, "the run training")
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    wait_for(lambda: all_done(sdir, sweep.runs), 180, "both runs done")
    chains = [e for e in SweepDir(sdir).read_journal() if e["event"] == "chain"]
    assert len(chains) == 1 and chains[0]["from"] == task and chains[0]["runs"] == [run.run_id]
    assert [a["job_id"] for a in attempts(sdir, run)] == [task, chains[0]["job_id"]]
    assert "_" not in chains[0]["job_id"]
    steps = [m["step"] for m in atomic.read_jsonl(rdir(sdir, run) / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and len(steps) == 60
    status = cli("status", path, "--root", tmp_path / "root").stdout
    assert "2 runs: 2 done" in status


def test_resubmitting_while_queued_or_running_submits_nothing_twice(tmp_path, monkeypatch):
    path = write_spec(tmp_path, "idem", {"method": ["bp", "dfa"]}, epochs=40, resources={"max_parallel": 1})
    sweep = load_sweep(path)
    sdir = tmp_path / "root" / sweep.name
    path_env, count = shims(tmp_path, "sbatch")
    monkeypatch.setenv("PATH", path_env)
    said = []
    for _ in range(3):               # at once: the array is pending, sacct may not know it yet
        sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=said.append)
    assert said[0].startswith("submitted 2 runs in 2 jobs")
    assert all("nothing to submit" in s and "2 in flight" in s for s in said[1:]), said
    first, second = job_ids(sdir)
    # one task running, the other held back by the %1 throttle
    wait_for(lambda: squeue_states(first) == {"RUNNING"} and squeue_states(second) == {"PENDING"}, 60,
             "first task running, second pending")
    sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=said.append)
    assert "nothing to submit" in said[-1] and "2 in flight" in said[-1]
    assert calls(count, "sbatch") == 1
    wait_for(lambda: all_done(sdir, sweep.runs), 180, "both runs done")
    for r in sweep.runs:
        assert len(attempts(sdir, r)) == 1
    assert [e["event"] for e in SweepDir(sdir).read_journal()].count("submit") == 1


def test_cancel_then_resume_and_an_infrastructure_failure(tmp_path):
    path = write_spec(tmp_path, "infra", {"method": ["fa", "dfa"]}, epochs=200, seeds=(7,))
    sweep = load_sweep(path)
    ref = reference(tmp_path, path)
    root = tmp_path / "root"
    sdir = root / sweep.name
    sched.submit(sweep, SweepDir(sdir), job_class=PackJob, executor="slurm", cluster="local", log=lambda *_: None)
    fa, dfa = sweep.runs
    wait_for(lambda: metric_lines(sdir, fa) >= 2 and metric_lines(sdir, dfa) >= 2, 120, "both runs training")

    # `cancel`: the runs checkpoint and stay resumable; nothing requeues or chains itself
    out = cli("cancel", path, "--root", root)
    assert "cancelled 2 SLURM jobs" in out.stdout, out.stdout + out.stderr
    array = job_ids(sdir)[0].split("_")[0]
    wait_for(lambda: not squeue_states(array), 60, "the jobs gone from the queue")
    assert [a["outcome"] for a in attempts(sdir, fa, "end")] == ["interrupted"]
    status = cli("status", path, "--root", root).stdout
    assert "2 runs: 2 pending" in status and "resume" in status

    # resumed, then the node "fails": SIGKILL (no checkpoint, no end line), and sacct says NODE_FAIL
    # (a shim over the real sacct: a single node cannot fail under its own tests)
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    array = job_ids(sdir)[-1].split("_")[0]
    wait_for(lambda: all(len(attempts(sdir, r)) == 2 and metric_lines(sdir, r) >= 4 for r in sweep.runs),
             120, "both runs training again")
    for r in sweep.runs:                # the runs' processes vanish without a word, as on a node that dies
        os.kill(attempts(sdir, r)[-1]["pid"], signal.SIGKILL)
    wait_for(lambda: not squeue_states(array), 60, "the killed jobs gone from the queue")
    assert all(len(attempts(sdir, r, "end")) == 1 for r in sweep.runs)     # killed: no end line
    # accounting learns of job ends a little after squeue does (slurmdbd is asynchronous, slower under load)
    tasks = [j for j in job_ids(sdir) if j.startswith(f"{array}_")]
    def ended():
        states = slurm.sacct_states(tasks, "now-1hours")
        return all(states.get(j) and not slurm.is_live(states[j]) for j in tasks)
    wait_for(ended, 60, "sacct: the killed jobs ended")
    path_env, count = shims(tmp_path, "sacct", rewrite=rf"s/^\({array}_[0-9]*\)|[A-Z_]*/\1|NODE_FAIL/")
    status = cli("status", path, "--root", root, env={**os.environ, "PATH": path_env}).stdout
    assert "2 runs: 2 failed" in status and "NODE_FAIL" in status and "--retry-failed" in status, status
    assert calls(count, "sacct") == 1
    assert not any(rdir(sdir, r).joinpath("error.txt").exists() for r in sweep.runs)     # status writes nothing
    # resume's reconcile step records what the scheduler said, so the runs stay failed once sacct forgets
    assert "nothing to submit" in cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root,
                                      env={**os.environ, "PATH": path_env}).stdout
    assert all("NODE_FAIL" in rdir(sdir, r).joinpath("error.txt").read_text() for r in sweep.runs)
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root, "--retry-failed")
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: all_done(sdir, sweep.runs), 180, "both runs done after --retry-failed")
    expected = reference_metrics(tmp_path, ref, sweep)
    for r in sweep.runs:
        assert model_metrics(sdir, r) == expected[r.run_id], r.label


def test_a_tasks_own_exception_is_shown_and_retried_only_when_asked(tmp_path):
    # a negative learning rate makes the task's optimizer raise: the task's fault, not the machine's
    path = write_spec(tmp_path, "raises", {"lr": [0.01, -1.0]}, epochs=3)
    root = tmp_path / "root"
    sweep = load_sweep(path)
    sdir = root / sweep.name
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: "in flight" not in sched.states(sweep, SweepDir(sdir)).values(), 120, "nothing in flight")
    status = cli("status", path, "--root", root).stdout
    assert "2 runs: 1 done, 1 failed" in status and "--retry-failed" in status, status
    bad = next(r for r in sweep.runs if r.config["lr"] < 0)
    assert "Error" in next(line for line in status.splitlines() if line.startswith(bad.label))
    assert "Traceback" in (rdir(sdir, bad) / "error.txt").read_text()
    assert "nothing to submit" in cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root).stdout
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root, "--retry-failed")
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: len(attempts(sdir, bad, "end")) == 2, 120, "the failed run retried")
    assert (rdir(sdir, bad) / "error.attempt1.txt").exists()


def test_a_job_that_dies_before_its_run_starts_is_a_failure_with_its_log(tmp_path):
    # submitted from another directory than the repository (the job must still find `jobs`), with an
    # `srun` on PATH that fails: the job (sbatch exports PATH to it) dies before any run starts
    path = write_spec(tmp_path, "nostart", {"method": ["bp"]}, epochs=3)
    sweep = load_sweep(path)
    root = tmp_path / "root"
    sdir = root / sweep.name
    bindir = tmp_path / "broken"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/bash\necho 'srun: error: no such partition on this site' >&2\nexit 3\n")
    (bindir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", root, env=env, cwd=tmp_path)
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    job = job_ids(sdir)[0]
    wait_for(lambda: slurm.sacct_states([job], "now-1hours").get(job) == "FAILED", 120, "sacct: the job FAILED")
    status = cli("status", path, "--root", root, cwd=tmp_path).stdout
    assert "1 runs: 1 failed" in status and "before the run started" in status, status
    assert not (rdir(sdir, sweep.runs[0]) / "error.txt").exists()          # status writes nothing
    assert "nothing to submit" in cli("resume", path, "--executor", "slurm", "--cluster", "local",
                                      "--root", root, cwd=tmp_path).stdout
    assert "no such partition" in (rdir(sdir, sweep.runs[0]) / "error.txt").read_text()
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", root, "--retry-failed", cwd=tmp_path)
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: all_done(sdir, sweep.runs), 120, "the run done once srun works")


@pytest.mark.parametrize("case", ["newline-partition", "sbatch-partition", "subshell-name", "label-path", "root-blank"])
def test_hostile_specs_are_refused_before_any_sbatch(tmp_path, case):
    path_env, count = shims(tmp_path, "sbatch")
    env = {**os.environ, "PATH": path_env}
    spec = {"name": "hostile", "task": "resmlp", "base": {**SMALL, "epochs": 1}, "grid": {"method": ["bp"]}}
    root = tmp_path / "root"
    if case == "newline-partition":
        spec["resources"] = {"partition": "debug\n#SBATCH --uid=0"}
    elif case == "sbatch-partition":
        spec["resources"] = {"partition": "#SBATCH"}
    elif case == "subshell-name":
        spec["name"] = f"x$(touch {tmp_path}/pwned)"
    elif case == "label-path":
        spec["grid"] = {"method": ["bp"], "data_dir": ["../../../etc", "a"]}
    elif case == "root-blank":
        root = tmp_path / "my root"
    p = tmp_path / "hostile.yaml"
    p.write_text(json.dumps(spec))
    out = cli("submit", p, "--executor", "slurm", "--cluster", "local", "--root", root, env=env)
    assert out.returncode == 2 and "error" in out.stderr, out.stdout + out.stderr
    assert calls(count, "sbatch") == 0
    assert not (tmp_path / "pwned").exists() and not (tmp_path.parent / "etc").exists()


def test_generated_sbatch_files_are_checked_before_sbatch(tmp_path, monkeypatch):
    # the last line of defence, past the spec's checks: a value that reached the executor anyway
    path_env, count = shims(tmp_path, "sbatch")
    monkeypatch.setenv("PATH", path_env)
    res = Resources(cpus=1, mem_gb=1, time_min=5, max_parallel=1, partition="debug")
    profile = slurm.load_profile("local")
    params = slurm.executor_params(slurm.resources_for(res, profile), res, profile, "$(id)")
    with pytest.raises(ValueError, match="unsafe sbatch line"):
        slurm.submit_packs(SweepDir(tmp_path), [PackJob(str(tmp_path), ["x"])], params)
    assert calls(count, "sbatch") == 0


def test_a_real_time_limit_finishes_by_requeue_then_chaining(walltime):
    sweep, sdir = walltime
    run = sweep.runs[0]
    wait_for(lambda: all_done(sdir, [run]), 900, "the 2-minute-limit run done")
    starts = attempts(sdir, run)
    jobs = [a["job_id"] for a in starts]
    assert len(starts) >= 3, starts
    assert jobs[0] == jobs[1], "the first limit should requeue the job (same job id)"
    assert len(set(jobs)) >= 2, "past the requeue budget the run should go on in a chained job"
    chains = [e for e in SweepDir(sdir).read_journal() if e["event"] == "chain"]
    assert chains and chains[0]["runs"] == [run.run_id]
    ends = attempts(sdir, run, "end")
    assert [e["outcome"] for e in ends] == ["interrupted"] * (len(ends) - 1) + ["done"]
    result = json.loads((rdir(sdir, run) / "result.json").read_text())
    epochs = run.config["epochs"]
    assert result["metrics"]["steps"] == epochs * 12 and result["attempts"] == len(starts)   # 1438 / 128
    steps = [m["step"] for m in atomic.read_jsonl(rdir(sdir, run) / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and len(steps) == epochs
