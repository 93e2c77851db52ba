"""Reliability on this machine: exit paths attributed to the run that took them, forced reruns that
respect a held lock, corrupt files, changed defaults, torn or foreign journal lines, full or read-only
disks, NaN metrics. The SLURM-specific ones (a torn journal with live jobs, TIMEOUT) are in
tests/sched/test_slurm_reliability.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.runtime.runner import PackJob
from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir, atomic

REPO = Path(__file__).resolve().parents[2]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"


def spec(tmp_path, name, grid, **extra):
    shutil.copy(BEHAVE, tmp_path / "behave.py")
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "task": "behave.py:train", "grid": grid,
                                "resources": {"time_min": 5, "max_parallel": 1, **extra.pop("resources", {})},
                                "checkpoint": {"every_min": None, "every_steps": 5}, **extra}))
    return path


def cli(*args, **kw):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kw)


def test_sys_exit_is_not_success_and_the_pack_mate_still_runs(tmp_path):
    path = spec(tmp_path, "exits", {"act": ["exit0", "ok", "exit1"]}, resources={"pack": 3})
    out = cli("submit", path, "--root", tmp_path / "root", "--executor", "local", "--wait")
    assert out.returncode == 1, out.stdout + out.stderr                 # --wait: not every run finished
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    states = {r.config["act"]: s for r, s in zip(sweep.runs, sched.states(sweep, sweep_dir).values())}
    assert states == {"exit0": RunState.FAILED, "ok": RunState.DONE, "exit1": RunState.FAILED}
    for r in sweep.runs:
        if r.config["act"] != "ok":
            assert "sys.exit" in sweep_dir.run(r.run_id).error.read_text()
            ends = [a for a in sweep_dir.run(r.run_id).read_attempts() if a["event"] == "end"]
            assert [a["outcome"] for a in ends] == ["exited"]
    again = cli("resume", path, "--root", tmp_path / "root", "--executor", "local", "--wait")
    assert again.returncode == 1 and "--retry-failed" in again.stdout + again.stderr


def test_a_corrupt_run_config_fails_that_run_only(tmp_path):
    path = spec(tmp_path, "corrupt", {"act": ["ok"]}, seeds=[1, 2, 3], resources={"pack": 3})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    bad = sweep.runs[1]
    sweep_dir.run(bad.run_id).config.write_text("run_id: [unclosed\n")
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    states = sched.states(sweep, sweep_dir)
    assert [states[r.run_id] for r in sweep.runs] == [RunState.DONE, RunState.FAILED, RunState.DONE]
    assert "config.yaml" in sweep_dir.run(bad.run_id).error.read_text()


def test_a_failing_bug_stops_the_rest_of_the_submission(tmp_path):
    path = spec(tmp_path, "bug", {"act": ["raise"]}, seeds=list(range(8)), resources={"fail_fast": 2})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    states = list(sched.states(sweep, sweep_dir).values())
    assert states.count(RunState.FAILED) == 2 and states.count(RunState.PENDING) == 6
    status = cli("status", path, "--root", tmp_path / "root").stdout
    assert "not started: 2 runs of submission" in status and "TypeError" in status
    # a retry is a new submission: its own failures count, not the last one's (the two failed runs run
    # again, fail again, and the rest is skipped again)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", retry_failed=True, log=lambda *_: None)
    ends = [len([a for a in sweep_dir.run(r.run_id).read_attempts() if a["event"] == "end"]) for r in sweep.runs]
    skips = [len([a for a in sweep_dir.run(r.run_id).read_attempts() if a["event"] == "skipped"]) for r in sweep.runs]
    assert ends == [2, 2, 0, 0, 0, 0, 0, 0] and skips == [0, 0, 2, 2, 2, 2, 2, 2]


def test_force_is_refused_while_a_run_executes_in_process_and_counts_it_in_flight(tmp_path):
    path = spec(tmp_path, "held", {"act": ["slow"]}, base={"steps": 400, "sleep_s": 0.05})
    sweep = load_sweep(path)
    run = sweep.runs[0]
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "main.py", "run", str(path), "--root", str(root)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = SweepDir.under(root, sweep.name)
    deadline = time.time() + 60
    while time.time() < deadline and not sweep_dir.run(run.run_id).holder.exists():
        time.sleep(0.05)
    try:
        assert sched.states(sweep, sweep_dir)[run.run_id] == RunState.IN_FLIGHT
        out = cli("submit", path, "--root", root, "--executor", "local", "--force", run.run_id)
        assert out.returncode == 2 and f"held by pid {proc.pid}" in out.stderr, out.stderr
        assert not list(sweep_dir.runs.glob("*.before-*"))              # nothing was moved aside
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert sched.states(sweep, sweep_dir)[run.run_id] == RunState.PENDING


def test_a_corrupt_result_is_shown_and_resume_reruns_the_run(tmp_path):
    path = spec(tmp_path, "torn", {"act": ["ok"]})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    run = sweep_dir.run(sweep.runs[0].run_id)
    run.result.write_text(run.result.read_text()[:20])
    assert sched.states(sweep, sweep_dir)[run.run_id] == RunState.CORRUPT
    status = cli("status", path, "--root", tmp_path / "root").stdout
    assert "corrupt result" in status and "resume" in status
    entry = sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    assert entry["runs"] == [run.run_id]
    assert sched.states(sweep, sweep_dir)[run.run_id] == RunState.DONE
    assert list(run.path.glob("result.corrupt-*.json"))                  # kept aside, not lost


def test_nan_metrics_are_valid_json_and_flagged_as_diverged(tmp_path):
    path = spec(tmp_path, "nan", {"act": ["nan", "ok"]})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    bad = next(r for r in sweep.runs if r.config["act"] == "nan")
    text = sweep_dir.run(bad.run_id).result.read_text()
    assert json.loads(text)["metrics"]["loss"] == "nan" and "NaN" not in text
    import analysis
    table = analysis.runs(path, root=tmp_path / "root").set_index("act")
    assert table.loc["nan", "diverged"] and not table.loc["ok", "diverged"]
    assert table.loc["nan", "best"] == float("inf")


def test_a_changed_default_is_flagged_by_plan(tmp_path):
    path = spec(tmp_path, "defaults", {"act": ["ok"]}, seeds=[1, 2])
    sweep = load_sweep(path)
    sched.submit(sweep, SweepDir.under(tmp_path / "root", sweep.name), job_class=PackJob, executor="debug",
                 log=lambda *_: None)
    task = tmp_path / "behave.py"
    task.write_text(task.read_text().replace('"steps": 20', '"steps": 30'))
    out = cli("plan", path, "--root", tmp_path / "root")
    assert "2 runs ran with values the spec no longer resolves to" in out.stdout, out.stdout
    assert "--force" in out.stdout


def test_torn_and_foreign_journal_lines_neither_hide_records_nor_crash(tmp_path):
    path = spec(tmp_path, "journal", {"act": ["ok"]})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    with open(sweep_dir.journal, "ab") as f:           # a disk-full append, then records of other shapes
        f.write(b'[1, 2]\n{"event": "submit", "executor": "slurm", "job_ids": 5}\n{"event": "submit", "runs": ["x' + b"x" * 4096)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    entries = sweep_dir.read_journal()
    assert any(e.get("executor") == "debug" for e in entries)          # the new record was not swallowed
    out = cli("status", path, "--root", tmp_path / "root")
    assert out.returncode == 0 and "1 done" in out.stdout, out.stderr


def test_a_read_only_sweep_dir_is_one_line_and_no_traceback(tmp_path):
    if os.geteuid() == 0:
        # root ignores permissions: a read-only bind is what a real read-only disk gives; emulate it
        # with a path that cannot be created (a file where the sweep dir's parent should be)
        (tmp_path / "root").write_text("not a directory")
    else:
        (tmp_path / "root").mkdir(mode=0o500)
    path = spec(tmp_path, "ro", {"act": ["ok"]})
    out = cli("submit", path, "--root", tmp_path / "root", "--executor", "local")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and str(tmp_path / "root") in out.stderr, out.stderr


def test_a_long_metrics_line_still_shows_the_step(tmp_path):
    path = spec(tmp_path, "long", {"act": ["ok"]})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    run = sweep_dir.run(sweep.runs[0].run_id)
    atomic.append_jsonl(run.metrics, {"step": 7, "time": 0, "weights": list(range(5000)), "total_steps": 9}, lock=False)
    out = cli("status", path, "--root", tmp_path / "root")
    assert "7/9" in out.stdout, out.stdout
