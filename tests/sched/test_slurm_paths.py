"""On the real single-node SLURM: a relative --root given in another directory is that directory's,
for the jobs too, and a task that changes directory moves nothing of its run.

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/sched/test_slurm_paths.py
"""
import pytest

from jobs.spec import load_sweep
from jobs.store import SweepDir
from tests.sched.test_paths import check_wandered, cli, wander_project

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_a_relative_root_from_another_directory_on_slurm(tmp_path):
    spec = wander_project(tmp_path, "wander_slurm")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli("submit", spec, "--root", "rel_root", "--executor", "slurm", "--cluster", "local", "--wait",
              cwd=elsewhere, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(spec)
    check_wandered(SweepDir(elsewhere / "rel_root" / sweep.name), sweep)
