"""Shared fixtures: `slurm_cluster` for the tests that need a real SLURM (tests/test_slurm_real.py).

Where no cluster answers they skip, saying how to start one (`sudo bash env/slurm/start.sh`).
In CI (.ci/run sets HPCSWEEP_REQUIRE_SLURM=1) a skip of a real-SLURM test is a failure: they must run.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

START = "sudo bash env/slurm/start.sh"
# the tests' specs live in temporary folders, outside any project with a clusters.yaml: they run on the
# cluster env/slurm starts, whose profiles (`local`: partition debug, its time limit) this repository keeps
os.environ.setdefault("HPCSWEEP_CLUSTERS", str(Path(__file__).resolve().parents[1] / "env" / "clusters.yaml"))


def slurm_missing() -> str:
    """Why the real-SLURM tests cannot run here ("" when a cluster with accounting answers)."""
    for tool in ("sbatch", "sacct", "scontrol", "scancel"):
        if not shutil.which(tool):
            return f"no {tool} on PATH"
    try:
        ping = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"SLURM does not answer ({e})"
    if ping.returncode or not ping.stdout.strip():
        return f"no SLURM controller answers ({(ping.stderr or 'sinfo printed nothing').strip()[:200]})"
    if acct.returncode:
        return f"SLURM accounting (sacct) does not work ({acct.stderr.strip()[:200]})"
    return ""


def _required() -> bool:
    return os.environ.get("HPCSWEEP_REQUIRE_SLURM", "") not in ("", "0")


@pytest.fixture(scope="session")
def slurm_cluster():
    why = slurm_missing()
    if why:
        message = f"real-SLURM tests need a running cluster: {why}. Start one with `{START}`"
        if _required():
            pytest.fail(message + " (HPCSWEEP_REQUIRE_SLURM is set: these tests must run here)", pytrace=False)
        pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With HPCSWEEP_REQUIRE_SLURM set, a skipped real-SLURM test counts as failed, whatever skipped it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _required() and item.get_closest_marker("slurm"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but HPCSWEEP_REQUIRE_SLURM is set: {report.longrepr}"


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the real single-node SLURM of env/slurm/start.sh")
