"""Where a task lives and which config keys it declares, read without importing it.

A spec's `task:` is one of
    resmlp                      models/resmlp.py, function train (the tasks this repository ships)
    path/to/file.py:function    a file of your own; a relative path is relative to the spec file
    package.module:function     a module on the Python path (installed, or on PYTHONPATH in the job)

Its config is declared next to the function, as either
    CONFIG = {"lr": 1e-3, "optim": {"beta2": 0.95}}     a literal dict (nested dicts allowed), or
    CONFIG = Config  /  Config()  /  asdict(Config())     a @dataclass (nested dataclasses allowed)
and optionally CHOICES = {"key": [allowed, ...]}. Nested keys are addressed with dots in specs
(`optim.beta2`); the task receives them nested again (cfg["optim"]["beta2"]). Everything is read
from the source's syntax tree: planning imports neither the task nor torch.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHORT = re.compile(r"^[a-z_][a-z0-9_]*$")
FILE_REF = re.compile(r"^(?P<file>[^:\x00-\x1f]+\.py):(?P<func>[A-Za-z_][A-Za-z0-9_]*)$")
MODULE_REF = re.compile(r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<func>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class TaskRef:
    """A resolved task: `ref` is what run configs record (models name, absolute file:function, or module:function)."""
    ref: str
    file: Path
    function: str
    kind: str                 # models | file | module


def resolve(task, spec_dir: Path, models_dir: Path = MODELS_DIR) -> TaskRef:
    """The task a spec names; LookupError saying what is wrong."""
    if not isinstance(task, str) or not task:
        raise LookupError(f"expected a task: a name in models/, path/to/file.py:function or package.module:function, got {task!r}")
    if SHORT.match(task):
        file = Path(models_dir) / f"{task}.py"
        if not file.is_file():
            beside = Path(spec_dir) / f"{task}.py"
            if beside.is_file():          # a file of the user's beside the spec, named the short way
                funcs = functions(beside)
                func = "train" if "train" in funcs or not funcs else funcs[0]
                raise LookupError(f"no task {task!r} in models/; for {beside.name} beside the spec write "
                                  f"`task: {task}.py:{func}`" + (f" (it defines {', '.join(funcs[:5])})" if funcs else ""))
            known = sorted(p.stem for p in Path(models_dir).glob("*.py") if not p.stem.startswith("_"))
            from jobs.spec.errors import did_you_mean
            raise LookupError(f"no task {task!r}: {file} does not exist{did_you_mean(task, known)}")
        return TaskRef(task, file, "train", "models")
    m = FILE_REF.match(task)
    if m:
        file = Path(m["file"]).expanduser()
        file = (file if file.is_absolute() else Path(spec_dir) / file).resolve()
        if not file.is_file():
            raise LookupError(f"{file}: file not found (task {task!r}; a relative path is relative to the spec file)")
        return TaskRef(f"{file}:{m['func']}", file, m["func"], "file")
    m = MODULE_REF.match(task)
    if m:
        file = find_module(m["module"])
        if file is None:
            raise LookupError(f"no module {m['module']!r} on the Python path (install it, or use path/to/file.py:{m['func']})")
        return TaskRef(task, file, m["func"], "module")
    raise LookupError(f"{task!r} is not a task: expected a name in models/, path/to/file.py:function "
                      "or package.module:function")


def functions(file: Path, tree=None) -> list:
    """The top-level functions a source file defines, in order (read, not imported)."""
    try:
        tree = tree or ast.parse(Path(file).read_text(encoding="utf-8"), str(file))
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def in_project(file: Path, spec_dir: Path) -> Path:
    """`file`'s path relative to its project: the top of the git checkout it lies in, else the spec's
    folder; its bare name when it lies under neither. What names a task file's copy in a submission."""
    file = Path(file).resolve()
    top = next((p for p in file.parents if (p / ".git").exists()), None)
    for base in (top, Path(spec_dir).resolve()):
        if base is not None and file.is_relative_to(base):
            return file.relative_to(base)
    return Path(file.name)


def local_imports(file: Path) -> list:
    """The modules a task file imports from its own folder (sibling .py files and packages, and what
    they import in turn), found by reading, not importing: what a snapshot of the task must hold."""
    root = Path(file).resolve().parent
    seen, todo, out = set(), [Path(file).resolve()], []
    while todo:
        current = todo.pop()
        try:
            tree = ast.parse(current.read_text(encoding="utf-8"), str(current))
        except (OSError, SyntaxError, ValueError):
            continue
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
        for name in names:
            base = root.joinpath(*name.split(".")[:1])
            found = [base.with_suffix(".py")] if base.with_suffix(".py").is_file() else \
                sorted(base.rglob("*.py")) if (base / "__init__.py").is_file() else []
            for module in found:
                if module not in seen and module != Path(file).resolve():
                    seen.add(module)
                    out.append(module)
                    todo.append(module)
    return out


def find_module(name: str):
    """The source file of module `name` on sys.path, found without importing anything."""
    parts = name.split(".")
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def schema(ref: TaskRef):
    """(defaults, choices) of the task, dotted keys for nested ones; LookupError naming file:line."""
    file = ref.file
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if ref.kind != "models" and ref.function not in functions(file, tree):
        from jobs.spec.errors import did_you_mean
        have = functions(file, tree)
        raise LookupError(f"{file}: defines no function {ref.function}(cfg, ctx){did_you_mean(ref.function, have)}"
                          + (f"; it defines {', '.join(have[:8])}" if have and not did_you_mean(ref.function, have) else ""))
    found = {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
            (stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None)
        if not isinstance(target, ast.Name) or target.id not in ("CONFIG", "CHOICES"):
            continue
        value = stmt.value
        if target.id == "CONFIG":
            dataclass_name = _dataclass_named(value)
            if dataclass_name is not None:
                if dataclass_name not in classes:
                    raise LookupError(f"{file}:{stmt.lineno}: CONFIG names {dataclass_name}, which is no class of this file")
                found["CONFIG"] = _dataclass_defaults(classes[dataclass_name], classes, file)
                continue
        try:
            found[target.id] = ast.literal_eval(value)
        except ValueError:
            raise LookupError(f"{file}:{stmt.lineno}: {target.id} must be a literal dict"
                              + (" or a @dataclass (CONFIG = Config)" if target.id == "CONFIG" else ""))
    if not isinstance(found.get("CONFIG"), dict):
        raise LookupError(f"{file}: declares no `CONFIG = {{...}}` (a literal dict, or a @dataclass) of its keys and defaults")
    return flatten(found["CONFIG"]), found.get("CHOICES", {})


def _dataclass_named(node):
    """`Config`, `Config()` or `asdict(Config())` -> "Config"; anything else -> None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call) and not node.args and not node.keywords and isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node, ast.Call) and len(node.args) == 1 and _call_name(node.func) in ("asdict", "dataclasses.asdict"):
        return _dataclass_named(node.args[0])
    return None


def _call_name(func):
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def _dataclass_defaults(cls, classes, file) -> dict:
    if not any(_call_name(d.func if isinstance(d, ast.Call) else d) in ("dataclass", "dataclasses.dataclass")
               for d in cls.decorator_list):
        raise LookupError(f"{file}:{cls.lineno}: class {cls.name} is not a @dataclass")
    out = {}
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        name, value = stmt.target.id, stmt.value
        if value is None:
            raise LookupError(f"{file}:{stmt.lineno}: {cls.name}.{name} has no default (every config key needs one)")
        nested = _dataclass_named(value)
        if isinstance(value, ast.Call) and _call_name(value.func) in ("field", "dataclasses.field"):
            kw = {k.arg: k.value for k in value.keywords}
            if "default_factory" in kw:
                nested = kw["default_factory"].id if isinstance(kw["default_factory"], ast.Name) else None
                if nested is None:
                    raise LookupError(f"{file}:{stmt.lineno}: {cls.name}.{name}: default_factory must name a dataclass")
            elif "default" in kw:
                value, nested = kw["default"], None
        if nested is not None and nested in classes:
            out[name] = _dataclass_defaults(classes[nested], classes, file)
            continue
        try:
            out[name] = ast.literal_eval(value)
        except ValueError:
            raise LookupError(f"{file}:{stmt.lineno}: {cls.name}.{name}: the default must be a literal "
                              "(a number, string, list...) or a nested dataclass")
    return out


def flatten(config: dict, prefix="") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; flat dicts are returned as they are."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(config: dict) -> dict:
    """The inverse of flatten: what a task with nested config keys receives."""
    if not any("." in k for k in config):
        return config
    out = {}
    for k, v in config.items():
        node = out
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
