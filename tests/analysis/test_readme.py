"""The DataFrame example of docs/analysis.md (the analysis API page) runs as written, on a sweep dir of the spec
it names. (tests/test_docs.py runs every python block of the docs; this one checks what the example computes.)"""
import json
import re
from pathlib import Path

import yaml

from tests.sweepdir_factory import grid, write_sweep

REPO = Path(__file__).resolve().parents[2]


def example() -> str:
    text = (REPO / "docs" / "analysis.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_analysis_page_dataframe_example_runs(tmp_path, monkeypatch):
    code = example()
    spec = re.search(r'analysis\.runs\("([^"]+)"\)', code).group(1)
    name = yaml.safe_load((REPO / spec).read_text()).get("name") or Path(spec).stem
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2])
    for i, r in enumerate(runs):
        r["metrics"] = {"test_acc": 0.5 + 0.01 * i}
        r["log"] = [{"step": s, "time": 1.7e9 + s, "train_loss": 1.0 / (s + 1 + i)} for s in range(4)]
    write_sweep(tmp_path / name, runs)
    monkeypatch.setenv("HPCSWEEP_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)                   # "from any directory"
    scope = {}
    exec(compile(code.replace(f'"{spec}"', json.dumps(str(REPO / spec))), "docs/analysis.md", "exec"), scope)
    assert len(scope["runs"]) == len(runs) and {"run_id", "state", "method", "k", "test_acc"} <= set(scope["runs"])
    assert len(scope["curves"]) == 4 * len(runs)
    assert list(scope["curves"].columns[:3]) == ["run_id", "step", "time"]
    assert len(scope["per_step"]) == 2 * 2 * 4     # method x k x step
