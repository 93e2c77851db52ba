"""Paths a job can trust: a relative --root or $HPCSWEEP_ROOT means the directory the command ran in,
a task's os.chdir moves nothing of the run, and two task files of one name run their own code.
The same on the real SLURM: tests/sched/test_slurm_paths.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir

REPO = Path(__file__).resolve().parents[2]

# a task that wanders off: it records where it started, then moves away and goes on logging and saving
WANDER = '''
import os
CONFIG = {"seed": 0, "steps": 4}

def train(cfg, ctx):
    started_in = os.getcwd()
    os.chdir(os.path.dirname(started_in))       # away from where it started
    state = ctx.restore()
    step = 0 if state is None else state["step"]
    while step < cfg["steps"]:
        step += 1
        ctx.log(step, x=float(step))
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step})
    with open("left_here.txt", "w") as f:        # relative: lands where the task moved to
        f.write("x")
    return {"started_in": started_in, "steps": step}
'''


def wander_project(tmp_path, name="wander"):
    project = tmp_path / "project"
    project.mkdir()
    (project / "wander.py").write_text(WANDER)
    spec = project / f"{name}.yaml"
    spec.write_text(json.dumps({"name": name, "task": "wander.py:train", "seeds": [1, 2],
                                "checkpoint": {"every_steps": 2, "every_min": None}, "resources": {"time_min": 5}}))
    return spec


def cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def check_wandered(sweep_dir, sweep):
    """Every run done in its own run dir, started there, with its files where the sweep dir says."""
    for run in sweep.runs:
        run_dir = sweep_dir.run(run.run_id)
        result = json.loads(run_dir.result.read_text())
        assert result["metrics"]["started_in"] == str(run_dir.path)
        assert len(run_dir.read_attempts()) >= 2 and len(list(run_dir.checkpoints.glob("step_*.pt"))) >= 1
        assert run_dir.metrics.read_text().count("\n") == 4
    # nothing of a run landed where its task moved to (runs/), but the file the task wrote itself
    assert sorted(p.name for p in sweep_dir.runs.iterdir() if not p.is_dir()) == ["left_here.txt"]


def test_a_relative_root_from_another_directory_is_that_directory_and_chdir_moves_nothing(tmp_path):
    spec = wander_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli("submit", spec, "--root", "rel_root", "--executor", "local", "--wait", cwd=elsewhere)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(spec)
    sweep_dir = SweepDir(elsewhere / "rel_root" / sweep.name)
    assert f"sweep dir: {sweep_dir.path}" in out.stdout          # said absolute, as the jobs got it
    check_wandered(sweep_dir, sweep)
    # from a third directory the same relative root is another place: nothing there
    third = tmp_path / "third"
    third.mkdir()
    status = cli("status", spec, "--root", "rel_root", cwd=third)
    assert "not submitted yet" in status.stdout and str(third / "rel_root") in status.stdout


def test_a_relative_hpcsweep_root_works_with_the_debug_executor_too(tmp_path):
    spec = wander_project(tmp_path, "wander_debug")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HPCSWEEP_ROOT": "rel_root"}
    out = cli("submit", spec, "--executor", "debug", cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(spec)
    sweep_dir = SweepDir(elsewhere / "rel_root" / sweep.name)
    check_wandered(sweep_dir, sweep)
    assert not (elsewhere / "left_here.txt").exists()      # the submitting process's cwd was given back
    plan = json.loads(cli("plan", spec, "--json", cwd=elsewhere, env=env).stdout)
    assert plan["sweep_dir"] == str(sweep_dir.path) and {r["state"] for r in plan["runs"]} == {RunState.DONE}


SAME_NAME = '''
CONFIG = {"seed": 0}

def train(cfg, ctx):
    ctx.save(1, {"who": WHO})
    return {"who": WHO}

WHO = %r
'''


def test_two_stages_with_task_files_of_one_name_each_run_their_own_code(tmp_path):
    for folder in ("dirA", "dirB"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "task.py").write_text(SAME_NAME % folder)
    spec = tmp_path / "twins.yaml"
    spec.write_text(json.dumps({"name": "twins", "stages": [
        {"name": "first", "task": "dirA/task.py:train"},
        {"name": "second", "after": "first", "task": "dirB/task.py:train"}]}))
    root = tmp_path / "root"
    for executor in ("debug", "local"):
        out = cli("submit", spec, "--root", root / executor, "--executor", executor, "--wait", cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        sweep = load_sweep(spec)
        sweep_dir = SweepDir.under(root / executor, sweep.name)
        for run in sweep.runs:
            who = json.loads(sweep_dir.run(run.run_id).result.read_text())["metrics"]["who"]
            assert who == {"first": "dirA", "second": "dirB"}[run.stage], executor
        # each copy recorded where it came from and kept apart from the other
        version = json.loads(next(sweep_dir.code.glob("*.json")).read_text())
        copies = {Path(t["file"]).parent.name: sweep_dir.code / t["snapshot"] for t in version["tasks"].values()}
        assert copies["dirA"] != copies["dirB"]
        assert "'dirA'" in copies["dirA"].read_text() and "'dirB'" in copies["dirB"].read_text()


def test_a_task_that_deletes_its_own_run_dir_is_not_done(tmp_path):
    (tmp_path / "vandal.py").write_text("import os, shutil\nCONFIG = {'seed': 0}\n\n"
                                        "def train(cfg, ctx):\n    shutil.rmtree(os.getcwd())\n    return {'ok': 1}\n")
    spec = tmp_path / "vandal.yaml"
    spec.write_text(json.dumps({"name": "vandal", "task": "vandal.py:train"}))
    out = cli("run", spec, "--root", tmp_path / "root", cwd=tmp_path)
    sweep = load_sweep(spec)
    run_dir = SweepDir.under(tmp_path / "root", sweep.name).run(sweep.runs[0].run_id)
    assert out.returncode == 1 and not run_dir.result.exists(), out.stdout + out.stderr
    assert "deleted" in run_dir.error.read_text()
