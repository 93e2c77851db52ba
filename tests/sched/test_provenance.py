"""What a submission records of the user's code: the task's own repository (commit, dirty, diff), the
task file and the modules it imports from its folder (the copies the jobs import), tracebacks that name
the files the user edits, and a snapshot only when something is submitted."""
import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.spec import load_sweep
from jobs.store import SweepDir

REPO = Path(__file__).resolve().parents[2]
TASK = '''from helper import scale

CONFIG = {"x": 1.0, "fail": False}


def train(cfg, ctx):
    return {"y": scale(cfg["x"], cfg["fail"])}
'''
HELPER = '''def scale(x, fail):
    if fail:
        raise ValueError("the helper refuses")
    return 2 * x
'''


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def project(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "task.py").write_text(TASK)
    (lab / "helper.py").write_text(HELPER)
    (lab / "sweep.yaml").write_text(json.dumps({"name": "prov", "task": "task.py:train", "grid": {"fail": [False, True]}}))
    git("init", "-q", cwd=lab)
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "x", "--allow-empty", cwd=lab)
    git("add", "task.py", "helper.py", "sweep.yaml", cwd=lab)
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "the lab's code", cwd=lab)
    return lab


def cli(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_tasks_repository_its_helper_modules_and_tracebacks_as_written(tmp_path):
    lab = project(tmp_path)
    out = cli("submit", "sweep.yaml", "--executor", "debug", cwd=lab)        # results/ lands inside the repository
    assert "submitted 2 runs" in out.stdout, out.stdout + out.stderr
    sweep_dir = SweepDir(lab / "results" / "prov")
    [record] = [json.loads(f.read_text()) for f in sweep_dir.code.glob("*.json")]
    assert record["commit"] == git("rev-parse", "HEAD", cwd=lab) and record["dirty"] is False     # results/ is ours
    assert record["repository"] == str(lab) and record["hpcsweep"]["version"]
    [task] = record["tasks"].values()
    copies = {Path(k).name: sweep_dir.code / v for k, v in task["modules"].items()}
    assert set(copies) == {"helper.py"} and copies["helper.py"].read_text() == HELPER
    # the job imports the copies: a later edit of the helper changes nothing of this submission's runs
    (lab / "helper.py").write_text(HELPER.replace("2 * x", "3 * x"))
    submission = next(sweep_dir.code.glob("*.json")).stem
    probe = ("import sys; from jobs.runtime.runner import load_task; from jobs.store import SweepDir; "
             f"f = load_task({str(lab / 'task.py')!r} + ':train', SweepDir({str(sweep_dir.path)!r}), {submission!r}); "
             "print(f({'x': 1.0, 'fail': False}, None)['y'], sys.modules['helper'].__file__)")
    y, where = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert float(y) == 2.0 and Path(where) == copies["helper.py"]
    # the failing run's traceback names the files the user edits, not the copies
    failed = next(r for r in load_sweep(lab / "sweep.yaml").runs if r.config["fail"])
    error = sweep_dir.run(failed.run_id).error.read_text()
    assert f'File "{lab / "helper.py"}"' in error and f'File "{lab / "task.py"}"' in error, error
    assert str(sweep_dir.code) not in error
    # the edit made the repository dirty, and the next submission says so, with the diff
    out = cli("resume", "sweep.yaml", "--executor", "debug", "--retry-failed", cwd=lab)
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    newest = max(sweep_dir.code.glob("*.json"), key=lambda f: f.stat().st_mtime_ns)
    assert json.loads(newest.read_text())["dirty"] is True
    assert "3 * x" in newest.with_suffix(".diff").read_text()


def test_nothing_to_submit_writes_no_snapshot(tmp_path):
    lab = project(tmp_path)
    assert cli("submit", "sweep.yaml", "--executor", "debug", cwd=lab).returncode == 0
    code = lab / "results" / "prov" / "code"
    before = sorted(os.listdir(code))
    out = cli("submit", "sweep.yaml", "--executor", "debug", cwd=lab)
    assert "nothing to submit" in out.stdout, out.stdout
    assert sorted(os.listdir(code)) == before
