"""The command line as a newcomer meets it: overrides, run selection, errors that say what to do."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jobs.runtime.context import RunContext
from jobs.sched import submit as sched
from jobs.spec import Resources, load_sweep
from jobs.store import SweepDir

REPO = Path(__file__).resolve().parents[1]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"


def cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def spec(tmp_path, name, body):
    shutil.copy(BEHAVE, tmp_path / "behave.py")
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "task": "behave.py:train", **body}))
    return path


def test_set_overrides_the_spec_and_only_matches_pairs_in_any_order(tmp_path):
    path = spec(tmp_path, "over", {"grid": {"act": ["ok", "nan"]}, "seeds": [1, 2]})
    out = cli("plan", path, "--json", "--set", "base.steps=7", "--set", "seeds=[3]", "--root", tmp_path)
    plan = json.loads(out.stdout)
    assert plan["count"] == 2 and {r["config"]["steps"] for r in plan["runs"]} == {7}
    assert {r["config"]["seed"] for r in plan["runs"]} == {3}
    bad = cli("plan", path, "--set", "base.stpes=7", "--root", tmp_path)
    assert bad.returncode == 2 and "--set base.stpes" in bad.stderr and "did you mean 'steps'" in bad.stderr
    run = cli("run", path, "--only", "seed=2,act=ok", "--root", tmp_path / "root")      # the label's order reversed
    assert run.returncode == 0 and run.stdout.startswith("act=ok,seed=2: done"), run.stdout + run.stderr


def test_a_one_run_spec_needs_no_only_and_a_failing_run_shows_its_error(tmp_path):
    path = spec(tmp_path, "one", {"base": {"act": "raise"}})
    out = cli("run", path, "--root", tmp_path / "root")
    assert out.returncode == 1
    assert "TypeError: train() got an unexpected keyword argument 'lr'" in out.stderr     # the traceback's tail
    assert ": failed (" in out.stdout


def test_hints_carry_every_flag_the_user_gave(tmp_path):
    path = spec(tmp_path, "hints", {"grid": {"act": ["raise"]}})
    root = tmp_path / "my root"
    cli("submit", path, "--root", root, "--executor", "debug", "--set", "base.steps=3")
    status = cli("status", path, "--root", root, "--set", "base.steps=3")
    assert f"resume {path} --root '{root}' --set base.steps=3 --retry-failed" in status.stdout, status.stdout
    again = cli("resume", path, "--root", root, "--executor", "debug", "--set", "base.steps=3")
    assert "nothing to submit" in again.stdout and "--retry-failed" in again.stdout
    assert cli("status", path, "--root", root, "--cluster", "local", "--set", "base.steps=3").returncode == 0


def test_wait_waits_for_runs_an_earlier_submit_started(tmp_path):
    path = spec(tmp_path, "waiting", {"base": {"act": "slow", "steps": 30, "sleep_s": 0.1}})
    root = tmp_path / "root"
    assert cli("submit", path, "--root", root, "--executor", "local").returncode == 0
    started = time.time()
    out = cli("resume", path, "--root", root, "--executor", "local", "--wait")
    assert "nothing to submit" in out.stdout and out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(root, sweep.name)
    assert sweep_dir.run(sweep.runs[0].run_id).result.exists() and time.time() - started > 1.0


def test_provenance_records_untracked_files_and_the_task_file(tmp_path):
    untracked = REPO / "models" / "_untracked_probe.py"
    untracked.write_text("# a file git does not know yet\nPROBE = 1\n")
    try:
        version, diff = sched.code_version()
    finally:
        untracked.unlink()
    assert version["dirty"] and "_untracked_probe.py" in diff and "PROBE = 1" in diff
    path = spec(tmp_path, "prov", {"base": {"steps": 2}})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "s1")
    recorded = json.loads(sweep_dir.code_version("s1").read_text())["tasks"]
    assert list(recorded.values())[0]["file"] == str(tmp_path / "behave.py")
    snapshot = list(recorded.values())[0]["snapshot"]
    assert (sweep_dir.code / snapshot).read_text() == BEHAVE.read_text()
    assert snapshot.endswith("/behave.py") and snapshot.startswith("s1/")


def test_a_numpy_generator_is_restored_with_the_checkpoint(tmp_path):
    def run(stop_after):
        ctx = RunContext(tmp_path, {}, checkpoint={"every_min": None, "every_steps": 1, "keep_last": 1})
        rng = ctx.numpy_rng(7)
        state = ctx.restore()
        start = 0 if state is None else state["i"]
        draws = []
        for i in range(start, 6):
            draws.append(float(rng.random()))
            if i + 1 == stop_after:
                ctx.save(i + 1, {"i": i + 1})
                return draws
        return draws
    uninterrupted = [float(x) for x in np.random.default_rng(7).random(6)]
    assert run(3) + run(None) == uninterrupted


def test_max_parallel_defaults_to_what_the_machine_allows():
    import os
    cores = len(os.sched_getaffinity(0))
    assert Resources().parallel_jobs("local") == cores
    assert Resources(cpus=2).parallel_jobs("local") == max(1, cores // 2)
    assert Resources(max_parallel=3).parallel_jobs("local") == 3


def test_a_symlink_loop_under_the_root_is_named_as_such_not_blamed_on_free_space(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    path = spec(tmp_path, "loop", {"seeds": [1]})
    out = cli("submit", path, "--root", tmp_path / "a" / "results", "--executor", "debug")
    assert out.returncode == 1 and "points back at itself" in out.stderr, out.stderr
    assert "free space" not in out.stderr and "Traceback" not in out.stderr
