"""The docs run as written: every ```python block of README.md and docs/*.md is executed, every command
line of a ```bash / ```console block parses with main.build_parser(), and the reference pages name every
figure key and every command flag the code accepts.

    .venv/bin/python -m pytest -q tests/test_docs.py

A python block runs in a fresh scope, from a temporary directory, with HPCSWEEP_ROOT pointing at synthetic
sweep dirs of the specs it names (`"sweeps/x.yaml"` is made absolute). A fence info string holding
`norun` (```python norun) marks a fragment that is shown but not run; prefer a block that runs.
The site itself builds with `mkdocs build --strict` in CI (.ci/run).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import main
from jobs.spec import figures
from tests.sweepdir_factory import grid, write_sweep

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
SPEC_PATH = re.compile(r'"(sweeps/[^"]+\.ya?ml)"')
COMMAND = re.compile(r"^(?:\$\s+)?(?:python3? main\.py|hpcsweep)(?=\s|$)")


def blocks(lang: str) -> list[tuple[str, int, str, str]]:
    """(page, line, info string, code) of every fenced block of the language in the docs."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((page.relative_to(REPO).as_posix(), text.count("\n", 0, m.start()) + 1,
                            m.group(2).strip(), m.group(3)))
    return out


def _id(block) -> str:
    return f"{block[0]}:{block[1]}"


# ---------------------------------------------------------------- python blocks run

PYTHON = [b for b in blocks("python") if "norun" not in b[2].split()]


def _sweep_for(spec: str, root: Path) -> None:
    """A finished synthetic sweep dir of the spec under root: the depth ladder's axes (method x k x seed)."""
    name = yaml.safe_load((REPO / spec).read_text()).get("name") or Path(spec).stem
    if (root / name).exists():
        return
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2])
    for i, r in enumerate(runs):
        r["metrics"] = {"test_acc": 0.5 + 0.01 * i}
        r["log"] = [{"step": s, "time": 1.7e9 + s, "train_loss": 1.0 / (s + 1 + i)} for s in range(4)]
    write_sweep(root / name, runs)


def test_there_are_python_blocks():
    pages = {b[0] for b in PYTHON}
    assert "README.md" in pages and "docs/analysis.md" in pages and "docs/tasks.md" in pages, pages


@pytest.mark.parametrize("block", PYTHON, ids=_id)
def test_python_block_runs(block, tmp_path, monkeypatch):
    page, line, _, code = block
    root = tmp_path / "root"
    for spec in set(SPEC_PATH.findall(code)):
        _sweep_for(spec, root)
        code = code.replace(f'"{spec}"', json.dumps(str(REPO / spec)))
    monkeypatch.setenv("HPCSWEEP_ROOT", str(root))
    monkeypatch.chdir(tmp_path)                   # the examples say they work from any directory
    module = types.ModuleType("docs_block")      # a module of its own, as a file the user saves would be
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # dont_inherit: this file's `from __future__ import annotations` is not the block's
    exec(compile("\n" * line + code, str(REPO / page), "exec", dont_inherit=True), module.__dict__)


def _page_block(page: str, lang: str, start: str) -> str:
    return next(code for p, _, _, code in blocks(lang) if p == page and code.startswith(start))


def test_the_task_and_spec_of_the_tasks_page_plan_and_run(tmp_path, monkeypatch, capsys):
    """docs/tasks.md's toy_task.py and toy.yaml, saved as the page says, make a sweep that plans and runs."""
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "toy_task.py").write_text(_page_block("docs/tasks.md", "python", "from dataclasses"))
    (project / "toy.yaml").write_text(_page_block("docs/tasks.md", "yaml", "name: toy"))
    monkeypatch.chdir(tmp_path)
    at = ["--root", str(tmp_path / "root")]
    assert main.main(["plan", str(project / "toy.yaml"), *at]) == 0
    out = capsys.readouterr().out
    assert ": 4 runs" in out and "optim.lr=0.1,seed=1" in out, out
    assert main.main(["run", str(project / "toy.yaml"), *at, "--only", "optim.lr=0.3,seed=2"]) == 0
    result = json.loads(next((tmp_path / "root" / "toy" / "runs").glob("*/result.json")).read_text())
    assert result["metrics"]["loss"] < 1e-6, result


# ---------------------------------------------------------------- yaml blocks parse

@pytest.mark.parametrize("block", blocks("yaml"), ids=_id)
def test_yaml_block_parses(block):
    assert isinstance(yaml.safe_load(block[3]), dict), block


# ---------------------------------------------------------------- command lines parse

def command_lines() -> list[tuple[str, int, list[str]]]:
    """(page, line, argv after the program) of every `python main.py ...` / `hpcsweep ...` in a shell block."""
    out = []
    for page, line, _, code in blocks("bash") + blocks("console"):
        for i, text in enumerate(code.splitlines()):
            text = re.sub(r"<[^>]*>", "X", text)         # placeholders: <the name init printed>, <sweep dir>
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)   # `#` comments dropped; && | ; apart
            lexer.whitespace_split = True
            words = []
            for token in [*lexer, "&&"]:
                if token not in ("&&", "||", "|", ";", "&"):
                    words.append(token)
                    continue
                if words and COMMAND.match(" ".join(words)):
                    args = words[2:] if words[0].startswith("python") else words[1:]
                    out.append((page, line + 1 + i, args))
                words = []
    return out


COMMANDS = command_lines()


def test_there_are_command_lines():
    named = {args[0] for _, _, args in COMMANDS if args and not args[0].startswith("-")}
    assert {"plan", "submit", "status", "resume", "cancel", "aggregate"} <= named, named


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c[0]}:{c[1]}")
def test_command_line_parses(cmd):
    page, line, args = cmd
    parser = main.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed, unknown = parser.parse_known_args(args)
    except SystemExit as e:
        assert e.code == 0, f"{page}:{line}: {' '.join(args)!r} does not parse:\n{err.getvalue()}"
        return
    assert not unknown, f"{page}:{line}: {' '.join(args)!r}: unknown arguments {unknown}"


@pytest.mark.parametrize("command", sorted({a[0] for _, _, a in COMMANDS if a and not a[0].startswith("-")}))
def test_each_command_named_has_help(command):
    p = subprocess.run([sys.executable, "main.py", command, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("usage:"), (p.returncode, p.stdout, p.stderr)


def test_inline_commands_name_real_commands():
    known = set(main.build_parser().commands)
    for page in PAGES:
        for m in re.finditer(r"`(?:python main\.py|hpcsweep) ([a-z][\w-]*)", page.read_text()):
            assert m.group(1) in known, f"{page.name}: `{m.group(0)}`: no command {m.group(1)!r}"


# ---------------------------------------------------------------- the reference pages are complete

def test_spec_page_names_every_analysis_key_and_figure_option():
    text = (REPO / "docs" / "spec.md").read_text()
    keys = set(figures.BLOCK_KEYS) | set(figures.FIGURE_KEYS) | set(figures.FIGURE_VALUES)
    missing = sorted(k for k in keys if f"`{k}`" not in text and f"{k}:" not in text)
    assert not missing, f"docs/spec.md does not name {missing}"


def test_commands_page_names_every_command_and_flag():
    text = (REPO / "docs" / "commands.md").read_text()
    missing = []
    for name, sub in main.build_parser().commands.items():
        if f"`{name}`" not in text:
            missing.append(name)
        for action in sub._actions:
            missing += [f"{name} {o}" for o in action.option_strings if o.startswith("--") and o not in text]
    assert not missing, f"docs/commands.md does not name {missing}"


def test_readme_links_resolve_and_readme_fits_two_screens():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 100, len(text.splitlines())
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"
