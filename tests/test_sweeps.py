"""Every spec shipped under sweeps/ plans cleanly against its task, with the run count it promises."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
EXPECTED = {
    "ponder.yaml": 4 * 3,
    "ponder_paper.yaml": 4 * 3,
    "deep_supervision.yaml": 5 * 3,
    "ds_schedules.yaml": 8 * 3,
    "poh_paper.yaml": 5 * 3,
    "trm_paper.yaml": 7 * 3,
    "lambda_grid.yaml": 3 * 3 * 3,
    "depth_ladder.yaml": 4 * (5 + 3) * 3,          # bp, fa (exact), fa (random), dfa
    "depth_ladder_digits.yaml": 3 * 5 * 2,
    "fa_vanilla_digits.yaml": 5 * 2,
    "refine_random.yaml": 8 * 1,
    "neural_dag_grid.yaml": 27 * 3,
    "neural_dag_sweep.yaml": 9 * 3,
    "neural_dag_smoke.yaml": 4 * 2 * 2,
    "neural_dag_notears.yaml": 3 * 3,
    "frozen_init.yaml": 2 * 3,
    "cotformer_smoke.yaml": 1 + 2 * 2 + 2 * (6 + 12),
    "cotformer_paper.yaml": 4 + 34,
    "resmlp_asha.yaml": 27,                       # the search's trials (worker jobs decide what trains)
    "resmlp_grid.yaml": 7 * 4 * 2,
}


def test_every_shipped_spec_is_listed_here():
    assert sorted(p.name for p in (REPO / "sweeps").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_spec_plans(name):
    sweep = load_sweep(REPO / "sweeps" / name)
    assert len(sweep.runs) == EXPECTED[name]
    assert len({r.run_id for r in sweep.runs}) == len(sweep.runs)


def test_plan_json_for_scripts():
    r = subprocess.run([sys.executable, "main.py", "plan", "sweeps/depth_ladder.yaml", "--json", "--root", "/nonexistent"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["count"] == 96 and len(out["runs"]) == 96
    assert {"run_id", "label", "config"} <= set(out["runs"][0])
    assert out["axes"]["method"] == ["bp", "fa", "dfa"]
