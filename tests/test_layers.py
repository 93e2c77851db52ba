"""The architecture holds: the layers of jobs/ import one way, and login-node commands stay light.

    spec, store   import nothing else of the repository
    search        spec, store (pure decisions over the recorded rung results)
    sched         spec, store, search (the job object it submits is handed in by the CLI)
    runtime       spec, store, search (chaining gets its submit function handed in)
    analysis      spec, store
    models        nothing of jobs/ (a task sees only the ctx it is handed)
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "jobs.spec": {"jobs.spec"},
    "jobs.store": {"jobs.store"},
    "jobs.search": {"jobs.search", "jobs.spec", "jobs.store"},
    "jobs.sched": {"jobs.sched", "jobs.spec", "jobs.store", "jobs.search"},
    "jobs.runtime": {"jobs.runtime", "jobs.spec", "jobs.store", "jobs.search"},
    "analysis": {"analysis", "jobs.spec", "jobs.store"},
    "models": {"models"},
}
OURS = ("jobs", "analysis", "models")


def imports_of(path: Path):
    """Every module of ours that `path` imports, lazily or not (absolute names)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        yield from (n for n in names if n.split(".")[0] in OURS)


def layer_of(module: str) -> str:
    return ".".join(module.split(".")[:2]) if module.startswith("jobs.") else module.split(".")[0]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer):
    folder = REPO.joinpath(*layer.split("."))
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for name in imports_of(path):
            if layer_of(name) not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_run_dir_file_names_are_spelled_in_one_module():
    names = ('"result.json"', '"config.yaml"', '"metrics.jsonl"', '"attempts.jsonl"', '"error.txt"',
             '"journal.jsonl"', '"plan.json"', '"spec.yaml"')
    spelled = {}
    for path in sorted(REPO.glob("*.py")) + sorted(REPO.glob("jobs/**/*.py")) + sorted(REPO.glob("analysis/*.py")):
        text = path.read_text(encoding="utf-8")
        for name in names:
            if name in text:
                spelled.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert all(files == {"jobs/store/sweepdir.py"} for files in spelled.values()), spelled


@pytest.mark.parametrize("command", ["plan", "status", "cancel"])
def test_login_node_commands_import_no_torch_pandas_or_matplotlib(tmp_path, command):
    r = subprocess.run([sys.executable, "-X", "importtime", "main.py", command, "sweeps/depth_ladder_digits.yaml",
                        "--root", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "pandas", "matplotlib", "numpy"}, sorted(imported & {"torch", "pandas", "matplotlib", "numpy"})
