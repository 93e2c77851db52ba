"""Shared fixtures: `slurm_cluster` for the tests that need a real SLURM (tests/test_slurm_real.py).

Where no cluster answers they skip, saying how to start one (`sudo bash env/slurm/start.sh`).
In CI (.ci/run sets HPCSWEEP_REQUIRE_SLURM=1) a skip of a real-SLURM test is a failure: they must run.

`slurm_nodes` (tests/sched/test_slurm_nodes.py): the 2-node cluster of
`sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/start.sh`, found by $HPCSWEEP_SLURM_NODES_CONF (its
slurm.conf) or at the place that script writes it; HPCSWEEP_REQUIRE_SLURM_NODES=1 turns its skip into
a failure.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

START = "sudo bash env/slurm/start.sh"
START_NODES = "sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/start.sh"
NODES_CONF = "/var/lib/hpcsweep-slurm-nodes/slurm.conf"      # where env/slurm/multinode.sh writes it
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


def _required(what="HPCSWEEP_REQUIRE_SLURM") -> bool:
    return os.environ.get(what, "") not in ("", "0")


def slurm_nodes_missing(conf: str, nodes: int = 2) -> str:
    """Why the multi-node tests cannot run on the cluster of `conf` ("" when `nodes` nodes answer)."""
    if not os.path.exists(conf):
        return f"no {conf}"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "SLURM_CONF": conf})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"its SLURM does not answer ({e})"
    up = [line.split()[0] for line in out.stdout.splitlines()
          if line.split()[-1].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if len(set(up)) < nodes:
        return f"{len(set(up))} of {nodes} nodes up ({(out.stdout or out.stderr).strip()[:200]})"
    return ""


@pytest.fixture(scope="module")
def slurm_nodes():
    """SLURM_CONF of the 2-node cluster, set in os.environ (for this process and what it starts) while
    the module's tests run."""
    conf = os.environ.get("HPCSWEEP_SLURM_NODES_CONF") or NODES_CONF
    why = slurm_nodes_missing(conf)
    if why:
        message = f"multi-node tests need the 2-node cluster: {why}. Start it with `{START_NODES}`"
        if _required("HPCSWEEP_REQUIRE_SLURM_NODES"):
            pytest.fail(message + " (HPCSWEEP_REQUIRE_SLURM_NODES is set: these tests must run here)", pytrace=False)
        pytest.skip(message)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


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
    for marker, variable in (("slurm", "HPCSWEEP_REQUIRE_SLURM"), ("slurm_nodes", "HPCSWEEP_REQUIRE_SLURM_NODES")):
        if report.skipped and _required(variable) and item.get_closest_marker(marker):
            report.outcome = "failed"
            report.longrepr = f"skipped, but {variable} is set: {report.longrepr}"
            break


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the real single-node SLURM of env/slurm/start.sh")
    config.addinivalue_line("markers", "slurm_nodes: needs the 2-node SLURM of HPCSWEEP_SLURM_NODES=2 env/slurm/start.sh")
