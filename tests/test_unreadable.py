"""One run dir that cannot be read (a file of garbage, a directory someone else owns) shows as that
run with its error; `status` and `plan` show the rest of the sweep as usual."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs.spec import load_sweep
from jobs.store import SweepDir

REPO = Path(__file__).resolve().parents[1]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"
# root reads everything: it looks through another user's eyes (nobody), everyone else through its own
AS_OTHER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture
def sweep_of_three():
    where = Path(tempfile.mkdtemp(prefix="hpcsweep-unreadable-"))     # readable by another user, unlike tmp_path
    where.chmod(0o755)
    shutil.copy(BEHAVE, where / "behave.py")
    spec = where / "three.yaml"
    spec.write_text(json.dumps({"name": "three", "task": "behave.py:train", "seeds": [1, 2, 3], "base": {"steps": 2}}))
    out = subprocess.run([sys.executable, str(REPO / "main.py"), "submit", str(spec), "--root", str(where / "root"),
                          "--executor", "debug"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for p in [where, *where.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    sweep = load_sweep(spec)
    yield spec, sweep, SweepDir.under(where / "root", sweep.name)
    for p in where.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(where)


def cli(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, str(REPO / "main.py"), *map(str, args)], cwd="/",
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": "/tmp", "COLUMNS": "250"})


def test_a_run_dir_nobody_may_read_is_shown_with_its_error(sweep_of_three):
    spec, sweep, sweep_dir = sweep_of_three
    hidden = sweep.runs[1]
    sweep_dir.run(hidden.run_id).path.chmod(0o000)
    root = sweep_dir.path.parent
    status = cli("status", spec, "--root", root, prefix=AS_OTHER)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert "2 done, 1 unreadable" in lines[0]
    row = next(line for line in lines if hidden.label in line)
    assert "unreadable" in row and "Permission denied" in row
    assert all("done" in next(line for line in lines if r.label in line) for r in sweep.runs if r is not hidden)
    plan = cli("plan", spec, "--root", root, prefix=AS_OTHER)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "unreadable" in next(line for line in plan.stdout.splitlines() if hidden.run_id in line)
    states = {r["run_id"]: r["state"] for r in json.loads(cli("plan", spec, "--root", root, "--json", prefix=AS_OTHER).stdout)["runs"]}
    assert states == {r.run_id: "unreadable" if r is hidden else "done" for r in sweep.runs}


def test_a_run_whose_attempts_log_holds_garbage_is_shown_with_its_error(sweep_of_three):
    spec, sweep, sweep_dir = sweep_of_three
    odd = sweep_dir.run(sweep.runs[0].run_id)
    with open(odd.attempts, "a") as f:
        f.write(json.dumps({"event": "start", "attempt": [1], "started": 1.0}) + "\n")
    status = cli("status", spec, "--root", sweep_dir.path.parent)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stdout + status.stderr
    assert "3 done" in status.stdout.splitlines()[0]
