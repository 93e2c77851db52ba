"""Named checkpoints a user can trust: a registry entry that cannot be checked is an error naming the
registry file and the entry, never a traceback, and never a checkpoint loaded without its sha256 check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.runtime import checkpoint as ck
from jobs.runtime.context import FORMAT, UpstreamRun

REPO = Path(__file__).resolve().parents[1]
SHA = "0" * 64
GOOD = {"run_id": "abc123abc123", "run_dir": "/nowhere/runs/abc123abc123", "step": 3,
        "path": "/nowhere/runs/abc123abc123/checkpoints/step_00000003.pt", "sha256": SHA}


def plan(tmp_path, name, registry):
    (tmp_path / "registry.yaml").write_text(json.dumps({"checkpoints": registry}))
    spec = tmp_path / f"uses_{name}.yaml"
    (tmp_path / "score.py").write_text((REPO / "tests" / "fixtures" / "pipeline_tasks" / "score.py").read_text())
    spec.write_text(json.dumps({"name": "uses", "stages": [{"name": "e", "from_manifest": name, "task": "score.py:train"}]}))
    return subprocess.run([sys.executable, str(REPO / "main.py"), "plan", str(spec), "--root", str(tmp_path / "root")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "HPCSWEEP_REGISTRY": str(tmp_path / "registry.yaml")})


@pytest.mark.parametrize("entry, words", [
    ({k: v for k, v in GOOD.items() if k != "sha256"}, "no sha256"),
    ("just a string", "expected a mapping"),
    ({**GOOD, "step": None}, "no step"),
    ({**GOOD, "step": "3"}, "step: expected"),
    ({**GOOD, "sha256": "abc"}, "sha256: expected 64 hex digits"),
])
def test_a_registry_entry_that_cannot_be_checked_is_an_error_naming_file_and_entry(tmp_path, entry, words):
    out = plan(tmp_path, "bad", {"bad": entry, "good": GOOD})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(tmp_path / "registry.yaml") in out.stderr and "'bad'" in out.stderr and words in out.stderr
    assert "from_manifest" in out.stderr and "--replace" in out.stderr
    # an entry the spec does not use is not its business
    assert plan(tmp_path, "good", {"bad": entry, "good": GOOD}).returncode == 0


def test_a_registered_checkpoint_is_never_loaded_without_its_step_and_sha256(tmp_path):
    """A run's frozen upstream record from a registry entry without them (written before entries were
    checked) is refused in the job, not loaded unchecked."""
    ck.save(tmp_path / "checkpoints", 3, {"format": FORMAT, "step": 3, "state": {"w": torch.ones(1)}})
    for record, words in (({"step": None, "sha256": None}, "no step"), ({"step": 3, "sha256": None}, "no sha256")):
        up = UpstreamRun("fit", {"run_id": "abc", "run_dir": str(tmp_path), "name": "fit_s3", **record}, tmp_path)
        with pytest.raises(ValueError, match=words) as e:
            up.checkpoint()
        assert "fit_s3" in str(e.value)
