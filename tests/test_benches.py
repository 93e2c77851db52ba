"""Every benchmark under bench/ runs end to end at a tiny size and prints its figures, so none can rot
(their speed targets are read off their own output on a quiet machine, never asserted here)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "aggregate.py": ["--runs", "20", "--lines", "10"],
    "checkpoint_overhead.py": ["--hidden", "16", "--steps", "20", "--saves", "2"],
    "cotformer_cpu.py": ["--iterations", "2", "--models", "base"],
    "distributed.py": ["--epochs", "1", "--d-hidden", "16"],
    "local_sweep.py": ["--runs", "2", "--epochs", "2", "--pack", "1", "--max-parallel", "2"],
    "pipeline.py": ["--seeds", "2", "--points", "4"],
    "plan.py": [],
    "resmlp_cpu.py": ["--shape", "digits", "--epochs", "2", "--repeats", "1"],
    "search_vs_grid.py": ["--tiny"],
    "system_metrics.py": ["--seconds", "1"],
}
NEED_SLURM = {"slurm.py": ["--runs", "20", "--single", "3", "--preemptions", "1"], "ssh.py": ["--runs", "4"]}
ELSEWHERE = {"scale.py": "tests/sched/test_scale.py runs it", "resmlp_gpu.py": "needs a CUDA device"}


def test_every_benchmark_is_covered():
    assert {p.name for p in (REPO / "bench").glob("*.py")} == set(TINY) | set(NEED_SLURM) | set(ELSEWHERE)


def run(name, args):
    out = subprocess.run([sys.executable, f"bench/{name}", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"bench/{name} {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert re.search(r"\d", out.stdout), f"bench/{name} printed no figure:\n{out.stdout}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_benchmark_runs_at_a_tiny_size(name):
    run(name, TINY[name])


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize("name", sorted(NEED_SLURM))
def test_a_slurm_benchmark_runs_at_a_tiny_size(name):
    run(name, NEED_SLURM[name])
