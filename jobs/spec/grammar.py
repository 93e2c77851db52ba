"""Sweep specs: read a YAML file, check it against its task's CONFIG, expand it into runs.

    sweep = load_sweep("sweeps/depth_ladder.yaml")
    sweep.runs[0].run_id, sweep.runs[0].label, sweep.runs[0].config

The grammar (docs/spec.md, "Writing a sweep spec") extends DESIGN.md's: `base` fixed values,
`grid` axes crossed with each other, an axis whose value is a list of mappings is a union of
sub-grids, `zip` pairs lists element-wise, `seeds`, `random` search, `include`/`exclude`
filters, and `extends` to inherit from another spec. Every mistake is a SpecError that names
the file, the line and the key; nothing here writes a file.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

import jobs.spec.figures as figures
import jobs.spec.tasks as tasks
from jobs.spec.errors import SpecError, did_you_mean
from jobs.spec.settings import Checkpoint, Logging, Resources, Search, known_keys, model_at, settings_error

REPO = Path(__file__).resolve().parent.parent.parent
MODELS_DIR = tasks.MODELS_DIR
DEFAULT_MAX_RUNS = 10_000

TOP_KEYS = ("name", "task", "extends", "description", "base", "grid", "zip", "seeds", "random", "search",
            "include", "exclude", "resources", "checkpoint", "analysis", "logging", "max_runs")
# a pipeline: `stages:` instead of the single sweep's keys; resources / checkpoint are every stage's defaults
PIPELINE_KEYS = ("name", "extends", "description", "stages", "resources", "checkpoint", "analysis", "logging",
                 "max_runs")
STAGE_KEYS = ("name", "task", "after", "from_manifest", "description", "base", "grid", "zip", "seeds", "random",
              "search", "include", "exclude", "resources", "checkpoint")
# Sections a child spec merges key by key into its parent's; the rest replace wholesale.
MERGED_SECTIONS = ("base", "grid", "resources", "checkpoint", "analysis", "logging")
FORMS = ("range", "linspace", "logspace", "geomspace")
RANDOM_FORMS = ("uniform", "loguniform", "choice", "randint")

# A name that may end up in a file name, a job name or an #SBATCH line.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
TASK_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")




@dataclass
class Run:
    run_id: str
    label: str
    config: dict          # the full resolved config: task defaults overlaid with the spec's values
    varied: dict          # the values of the keys that vary across the sweep (upstream stages' included)
    task: str = ""
    stage: str = ""       # the stage's name (a sweep without stages: the sweep's name)
    # every ancestor stage -> {"run_id": ..., and for a registry checkpoint "run_dir", "step", "sha256"}
    upstream: dict = field(default_factory=dict)


@dataclass
class Stage:
    name: str
    task: str
    after: str | None     # the stage whose runs this one's are crossed with (None: a sweep of its own)
    spec: dict            # the stage's own keys, with the sweep-wide resources / checkpoint merged in
    runs: list
    axes: dict
    defaults: dict = field(default_factory=dict)
    from_manifest: list = field(default_factory=list)
    search: Search | None = None     # a `search:` stage: its runs are the trials, run by worker jobs


@dataclass
class Sweep:
    name: str
    task: str             # the first stage's task
    path: Path
    spec: dict            # the resolved spec, `extends` merged in
    runs: list            # every stage's runs, stage by stage
    axes: dict            # varied key -> its distinct values, in order of appearance
    defaults: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)

    def by_label(self, label):
        return next((r for r in self.runs if r.label == label), None)

    def stage_of(self, run) -> Stage:
        return next(s for s in self.stages if s.name == run.stage)


# ---------------------------------------------------------------- YAML with line numbers

class _Where:
    """Maps a key path such as ('grid', 'arch', 0, 'k') to the file and line it came from."""

    def __init__(self, lines=None, prefix=(), problems=None):
        self.lines = {} if lines is None else lines
        self.prefix = tuple(prefix)
        self.cap = DEFAULT_MAX_RUNS
        self.problems = [] if problems is None else problems     # shared by every scope of one spec

    def scoped(self, prefix) -> "_Where":
        """The same file's lines, with every key path under `prefix` (a stage: ('stages', 2))."""
        inner = _Where(self.lines, self.prefix + tuple(prefix), self.problems)
        inner.cap = self.cap
        return inner

    def attempt(self, check, *args):
        """check(*args), or None after noting its SpecError: independent parts of a spec are all checked,
        so a spec with three mistakes is told of three at once (raise_noted says them)."""
        try:
            return check(*args)
        except SpecError as e:
            if not isinstance(e, SpecErrors) and not any(e is p for p in self.problems):
                self.problems.append(e)          # (raise_noted's own raise is noted already)
            return None

    def raise_noted(self):
        """Raise what attempt() noted: the one error, or all of them in file order."""
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise SpecErrors(sorted(self.problems, key=lambda e: (str(e.file or ""), e.line or 0)))

    def check_cap(self, count, path):
        """Refuse a form or an axis of more points than the sweep may have, before it is materialised."""
        if count > self.cap:
            raise self.error(path, f"{count:,} points, over the cap of {self.cap:,} runs "
                             "(raise `max_runs:` in the spec or pass --max-runs)")

    def of(self, path):
        path = self.prefix + tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, (None, None))

    def error(self, path, message):
        file, line = self.of(path)
        return SpecError(message, file, line, _dotted(self.prefix + tuple(path)))


class SpecErrors(SpecError):
    """Several mistakes of one spec, one `file:line: key: message` per line (the first's attributes)."""

    def __init__(self, errors):
        first = errors[0]
        super().__init__(first.message, first.file, first.line, first.key)
        self.errors = list(errors)
        self.args = (f"{len(errors)} mistakes:\n" + "\n".join(f"  {e}" for e in errors),)


def _dotted(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as people mean it (YAML 1.1 wants `1.0e-4`)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _read_yaml(path: Path, where: _Where, prefix=()):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read spec: {e.strerror}", path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", path)
        _record_lines(node, prefix, path, where)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"YAML syntax: {e.problem or e.context}", path, line)
    except yaml.YAMLError as e:
        raise SpecError(f"YAML: {e}", path)
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping of keys (name, task, grid, ...)", path, 1)
    return data


def _record_lines(node, path, file, where):
    where.lines.setdefault(path, (file, node.start_mark.line + 1))   # a key's own line wins
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value
            if key in seen:
                raise SpecError(f"duplicate key {key!r}", file, k.start_mark.line + 1, _dotted(path))
            seen.add(key)
            where.lines[path + (key,)] = (file, k.start_mark.line + 1)
            _record_lines(v, path + (key,), file, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _record_lines(v, path + (i,), file, where)


def _read_with_extends(path: Path, where: _Where, chain=()):
    path = path.resolve()
    if path in chain:
        raise SpecError("`extends` loops back to " + str(path), chain[-1])
    data = _read_yaml(path, where)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str):
        raise where.error(("extends",), "expected the path of another spec file")
    parent_where = _Where()
    parent = _read_with_extends(path.parent / parent_ref, parent_where, chain + (path,))
    parent.pop("name", None)     # a child is a new sweep: it never inherits its parent's name
    # the child's own lines win; the parent's fill in what the child does not say
    for k, v in parent_where.lines.items():
        if k and k[0] == "name":
            continue
        if k not in where.lines or (k[:1] and k[0] not in data):
            where.lines[k] = v
    return _merge(parent, data)


def _merge(parent, child):
    out = dict(parent)
    for key, value in child.items():
        if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = dict(out[key])
            for k, v in value.items():
                if v is None:
                    merged.pop(k, None)        # `axis: null` in a child removes the parent's axis
                else:
                    merged[k] = v
            out[key] = merged
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- the task's CONFIG

def task_schema(task: str, models_dir: Path = MODELS_DIR, spec_dir: Path = Path(".")):
    """The task's (defaults, choices, source file), read without importing it (jobs/spec/tasks.py)."""
    ref = tasks.resolve(task, spec_dir, models_dir)
    defaults, choices = tasks.schema(ref)
    return defaults, choices, ref.file


def _coerce(key, value, defaults, choices, where, path):
    """The value as the task's type for `key`, or a SpecError saying what was expected."""
    what = "" if path and path[-1] == key else f"{key}: "
    if key not in defaults:
        raise where.error(path, f"unknown key {key!r} for this task{did_you_mean(key, defaults)}")
    default = defaults[key]
    if isinstance(value, str) and CONTROL.search(value):
        raise where.error(path, f"{what}control characters (newline, tab, ...) are not allowed in values")
    if default is None or value is None:
        ok = value is None or isinstance(value, (str, int, float, bool))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list)
    else:
        ok = type(value) is type(default)
    if not ok:
        raise where.error(path, f"{what}expected {_type_name(default)}, got {value!r}")
    if key in choices and value not in choices[key]:
        raise where.error(path, f"{what}{value!r} is not one of {list(choices[key])}"
                          f"{did_you_mean(value, choices[key])}")
    return value


def _type_name(default):
    if default is None:
        return "a scalar or null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list"}.get(type(default), type(default).__name__)


# ---------------------------------------------------------------- value forms

def _scalar(v):
    return v is None or isinstance(v, (str, int, float, bool))


def _round(x):
    """Floats from linspace/logspace/random: 12 significant digits, so ids and labels are stable."""
    return float(f"{x:.12g}")


def _values(raw, path, where):
    """The list of values an axis takes: a list, a scalar, or {range|linspace|logspace|geomspace: [...]}."""
    if isinstance(raw, dict):
        if len(raw) != 1 or next(iter(raw)) not in FORMS:
            raise where.error(path, "expected a list, a scalar or one of "
                              + ", ".join(f"{{{f}: [...]}}" for f in FORMS) + f", got a mapping with keys {sorted(map(str, raw))}")
        form, args = next(iter(raw.items()))
        return _form(form, args, path + (form,), where)
    if isinstance(raw, list):
        if not raw:
            raise where.error(path, "empty list: an axis needs at least one value")
        for i, v in enumerate(raw):
            if not (_scalar(v) or isinstance(v, list)):
                raise where.error(path + (i,), f"expected a value, got {type(v).__name__}")
        return list(raw)
    return [raw]


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _form(form, args, path, where):
    if form == "range":
        if not (isinstance(args, list) and len(args) in (2, 3) and all(isinstance(a, int) and not isinstance(a, bool) for a in args)):
            raise where.error(path, "expected {range: [start, stop]} or [start, stop, step] of integers (stop excluded)")
        if len(args) == 3 and args[2] == 0:
            raise where.error(path, "range step must not be 0")
        where.check_cap(len(range(*args)), path)         # counted before it is materialised
        values = list(range(*args))
    else:
        if not (isinstance(args, list) and len(args) == 3 and _num(args[0]) and _num(args[1])
                and isinstance(args[2], int) and not isinstance(args[2], bool)):
            raise where.error(path, f"expected {{{form}: [start, stop, n]}} with numbers and an integer n")
        a, b, n = args
        if n < 1:
            raise where.error(path, f"{form}: n must be at least 1, got {n}")
        where.check_cap(n, path)
        if form == "geomspace" and (a <= 0 or b <= 0):
            raise where.error(path, "geomspace: start and stop must be positive values (use logspace for exponents)")
        ts = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
        if form == "linspace":
            values = [_round(a + (b - a) * t) for t in ts]
        elif form == "logspace":           # numpy's meaning: a and b are base-10 exponents
            values = [_round(10.0 ** (a + (b - a) * t)) for t in ts]
        else:
            la, lb = math.log10(a), math.log10(b)
            values = [_round(10.0 ** (la + (lb - la) * t)) for t in ts]
    if not values:
        raise where.error(path, f"{form} {args} is empty")
    return values


# ---------------------------------------------------------------- expansion

class _Axis:
    """One crossed factor: a list of partial assignments {key: value}, the keys it sets (in
    order), and its name in the spec."""

    def __init__(self, name, points, keys):
        self.name, self.points, self.keys = name, points, keys


def _grid_axes(grid, path, where):
    if not isinstance(grid, dict):
        raise where.error(path, "expected a mapping of axis -> values")
    axes = []
    for key, raw in grid.items():
        p = path + (key,)
        if not isinstance(key, str):
            raise where.error(p, f"axis names must be strings, got {key!r}")
        if isinstance(raw, dict) and set(raw) == {"zip"}:
            axes.append(_zip_axis(raw["zip"], p + ("zip",), where, key))
        elif isinstance(raw, list) and raw and all(isinstance(v, dict) for v in raw):
            axes.append(_union_axis(raw, p, where))
        elif isinstance(raw, list) and any(isinstance(v, dict) for v in raw):
            raise where.error(p, "a list of sub-grids must hold only mappings")
        else:
            axes.append(_Axis(key, [{key: v} for v in _values(raw, p, where)], [key]))
    _check_disjoint(axes, path, where)
    return axes


def _union_axis(entries, path, where):
    points, keys = [], {}
    for i, sub in enumerate(entries):
        sub_axes = _grid_axes(sub, path + (i,), where)
        points.extend(_product(sub_axes, where, path + (i,)))
        where.check_cap(len(points), path)
        for a in sub_axes:
            keys.update(dict.fromkeys(a.keys))
    return _Axis(path[-1], points, list(keys))


def _zip_axis(groups, path, where, name):
    if not isinstance(groups, dict) or not groups:
        raise where.error(path, "expected {zip: {key: [values], key2: [values]}} with lists of equal length")
    columns = {k: _values(v, path + (k,), where) for k, v in groups.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise where.error(path, f"zip lists differ in length: {lengths}")
    n = next(iter(lengths.values()))
    return _Axis(name, [{k: columns[k][i] for k in columns} for i in range(n)], list(columns))


def _check_disjoint(axes, path, where):
    owner = {}
    for a in axes:
        for k in a.keys:
            if k in owner:
                raise where.error(path + (a.name,), f"key {k!r} is set by both {owner[k]!r} and {a.name!r}")
            owner[k] = a.name


def _product(axes, where=None, path=()):
    if not axes:
        return [{}]
    if where is not None:
        where.check_cap(math.prod(len(a.points) for a in axes), path)
    out = []
    for combo in itertools.product(*(a.points for a in axes)):
        point = {}
        for part in combo:
            point.update(part)
        out.append(point)
    return out


def _random_axis(block, path, where):
    if not isinstance(block, dict):
        raise where.error(path, "expected {samples: N, seed: S, params: {key: {uniform|loguniform|choice|randint: ...}}}")
    unknown = set(block) - {"samples", "seed", "params"}
    if unknown:
        k = sorted(map(str, unknown))[0]
        raise where.error(path + (k,), f"unknown key{did_you_mean(k, ['samples', 'seed', 'params'])}")
    n, seed, params = block.get("samples"), block.get("seed", 0), block.get("params")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise where.error(path + ("samples",), f"expected a positive integer count, got {n!r}")
    where.check_cap(n, path + ("samples",))
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise where.error(path + ("seed",), f"expected an integer seed, got {seed!r}")
    if not isinstance(params, dict) or not params:
        raise where.error(path + ("params",), "expected a mapping key -> {uniform|loguniform|choice|randint: ...}")
    draws = []
    for key, dist in params.items():
        p = path + ("params", key)
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in RANDOM_FORMS):
            raise where.error(p, "expected one of " + ", ".join(f"{{{f}: ...}}" for f in RANDOM_FORMS))
        form, args = next(iter(dist.items()))
        p = p + (form,)
        if form == "choice":
            if not (isinstance(args, list) and args and all(_scalar(a) for a in args)):
                raise where.error(p, "expected {choice: [value, ...]}")
        elif form == "randint":
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int) and not isinstance(a, bool) for a in args) and args[0] < args[1]):
                raise where.error(p, "expected {randint: [low, high]} with integers, high excluded")
        else:
            if not (isinstance(args, list) and len(args) == 2 and all(_num(a) for a in args) and args[0] < args[1]):
                raise where.error(p, f"expected {{{form}: [low, high]}} with low < high")
            if form == "loguniform" and args[0] <= 0:
                raise where.error(p, "loguniform bounds must be positive")
        draws.append((key, form, args))
    rng = random.Random(seed)        # its own seed: the same spec always draws the same points
    points = []
    for _ in range(n):
        point = {}
        for key, form, args in draws:
            if form == "choice":
                point[key] = rng.choice(args)
            elif form == "randint":
                point[key] = rng.randrange(args[0], args[1])
            elif form == "uniform":
                point[key] = float(f"{rng.uniform(*args):.6g}")
            else:
                point[key] = float(f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.6g}")
        points.append(point)
    return _Axis("random", points, list(params))


def _filters(raw, path, where):
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(f, dict) and f for f in raw):
        raise where.error(path, "expected a list of patterns such as {method: dfa, k: [3, 4]}")
    return [{k: (v if isinstance(v, list) else [v]) for k, v in f.items()} for f in raw]


def _matches(config, pattern):
    return all(config.get(k) in vs for k, vs in pattern.items())


def run_id_of(task, config, defaults):
    """12 hex digits of sha256 over the task and the values that differ from its defaults.

    Leaving the defaults out means a task can gain an option with a default and every
    existing run keeps its id (and so its results).
    """
    overrides = {k: v for k, v in config.items() if _differs(k, v, defaults)}
    blob = json.dumps({"task": task, "config": overrides}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


_MISSING = object()


def _differs(key, value, defaults):
    d = defaults.get(key, _MISSING)
    return d is _MISSING or value != d or type(value) is not type(d)


def _json(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _expand(task, axes, fixed, defaults, include, exclude, where):
    """(runs, varied key -> distinct values): the filtered product of the axes, with ids and labels.

    Ids are the same bytes as run_id_of, but built from pieces computed once per axis point
    (JSON of each non-default value), so a 100,000-run sweep expands in well under a second.
    """
    axis_keys = [k for a in axes for k in a.keys]
    entries = []                       # per axis: (full assignment, id pieces) per point
    for a in axes:
        per = []
        for p in a.points:
            # a key a union's sub-grid leaves out takes the task's default
            full = {k: p[k] if k in p else fixed[k] for k in a.keys}
            per.append((full, [(k, f"{_json(k)}:{_json(v)}") for k, v in full.items() if _differs(k, v, defaults)]))
        entries.append(per)
    fixed_items = [(k, f"{_json(k)}:{_json(v)}") for k, v in fixed.items()
                   if k not in axis_keys and _differs(k, v, defaults)]
    tail = '},"task":' + _json(task) + "}"
    kept, seen = [], {}
    for combo in itertools.product(*entries):
        cfg = dict(fixed)
        items = list(fixed_items)
        for full, pieces in combo:
            cfg.update(full)
            items.extend(pieces)
        if include and not any(_matches(cfg, p) for p in include):
            continue
        if exclude and any(_matches(cfg, p) for p in exclude):
            continue
        items.sort()
        blob = '{"config":{' + ",".join(piece for _, piece in items) + tail
        rid = hashlib.sha256(blob.encode()).hexdigest()[:12]
        if rid in seen:
            raise where.error(("grid",), "duplicate runs: two points resolve to the same config "
                              f"({', '.join(f'{k}={format_value(v)}' for k, v in cfg.items() if k in axis_keys)});"
                              " remove one of them")
        seen[rid] = None
        kept.append((rid, cfg))
    if not kept:
        raise where.error(("grid",), "the sweep has no runs" + (" left after include/exclude" if include or exclude else ""))
    distinct = {k: _distinct([c[k] for _, c in kept]) for k in axis_keys}
    varied_keys = [k for k in axis_keys if len(distinct[k]) > 1]
    for k in axis_keys:          # every axis: 1 and true are one dict key, so one can even look unvaried
        _one_label_each(k, [c[k] for _, c in kept], where)
    pieces = {}
    for k in varied_keys:
        for v in distinct[k]:
            pieces[k, _hashable(v)] = _label_piece(k, list(v) if isinstance(v, tuple) else v, where)
    runs = []
    for rid, cfg in kept:
        varied = {k: cfg[k] for k in varied_keys}
        try:
            label = ",".join([pieces[kv] for kv in varied.items()])
        except TypeError:      # a list-valued key: look it up by its tuple form
            label = ",".join([pieces[k, _hashable(v)] for k, v in varied.items()])
        runs.append(Run(rid, label, cfg, varied))
    return runs, {k: distinct[k] for k in varied_keys}


def _one_label_each(key, values, where):
    """Refuse values of one key that differ but read alike in labels and --only (1, 1.0, true, "1"):
    runs a person cannot tell apart, pick or group. Refused rather than spelled apart (1.0, "1"):
    a YAML file rarely means both, and the spec's author knows which one they meant."""
    typed = list(dict.fromkeys((type(v), _hashable(v)) for v in values))
    merged = _distinct([v for _, v in typed])                     # 1, 1.0 and True are one key of a dict
    texts = {format_value(list(v) if isinstance(v, tuple) else v) for v in merged}
    if len(merged) < len(typed) or len(texts) < len(merged):
        alike = ", ".join(json.dumps(list(v) if isinstance(v, tuple) else v) for _, v in typed)
        raise where.error(("grid", key), f"the values {alike} read alike in run labels and --only "
                          "(as the same number or text); give the key values of one type")


LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.+\-\[\];]*$")


def _label_piece(key, value, where):
    text = format_value(value)
    if not LABEL_VALUE.match(text):
        raise where.error(("grid", key), f"{key}: value {value!r} is varied, so it appears in run labels "
                          "and job names: use letters, digits, '_', '.', '+', '-'")
    return f"{key}={text}"


def format_value(v):
    """A value as it appears in a label: short, but never two values the same text."""
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    if isinstance(v, list):
        return "[" + ";".join(format_value(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------- the whole spec

def load_sweep(path, *, models_dir=MODELS_DIR, max_runs=None, registry=None, overrides=(), spec_dir=None) -> Sweep:
    """The sweep a spec file means: every run with its id, label and full config, stage by stage.

    `registry`: name -> entry of the checkpoint registry (checkpoints_manifest.yaml), for stages
    that take `from_manifest:`; the CLI passes it (this layer reads no file but the spec).
    `overrides`: ["base.lr=0.1", "stages.1.grid.k=[1, 2]", ...] (the CLI's --set), applied to the
    spec before it is checked; values are YAML.
    `spec_dir`: where task files are looked for (default: the spec's folder). A sweep dir's frozen
    spec.yaml is read with the folder of the spec it was submitted from.
    """
    path = Path(path)
    spec_dir = Path(spec_dir).resolve() if spec_dir is not None else path.resolve().parent
    where = _Where()
    spec = _read_with_extends(path, where)
    for text in overrides:
        _override(spec, text, where)
    pipeline = "stages" in spec
    for key in spec:
        if key not in (PIPELINE_KEYS if pipeline else TOP_KEYS):
            hint = (" (a spec with `stages:` takes the run keys inside each stage)" if pipeline and key in TOP_KEYS
                    else did_you_mean(key, PIPELINE_KEYS if pipeline else TOP_KEYS))
            where.problems.append(where.error((key,), f"unknown key{hint}"))

    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        where.problems.append(where.error(("name",), f"{name!r} is not a safe sweep name: use letters, digits, "
                                          "'_', '.', '+', '-' (64 at most), as it names a directory and jobs"))
    spec["name"] = name
    cap = max_runs if max_runs is not None else spec.get("max_runs", DEFAULT_MAX_RUNS)
    if not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
        where.problems.append(where.error(("max_runs",), f"expected a positive integer, got {cap!r}"))
        cap = DEFAULT_MAX_RUNS
    where.cap = cap

    if not pipeline:
        where.attempt(_check_sections, spec, where)
        stage = where.attempt(_stage, name, spec, where, models_dir, None, None, spec_dir)
        where.raise_noted()
        return Sweep(name, stage.task, path, spec, stage.runs, stage.axes, stage.defaults, [stage])
    where.raise_noted()

    stages_raw = spec["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise where.error(("stages",), "expected a list of stages, each a mapping with at least `name` and `task`")
    _check_sections({k: spec[k] for k in ("resources", "checkpoint", "analysis", "logging") if k in spec}, where)
    stages, runs = [], []
    for i, raw in enumerate(stages_raw):
        at = where.scoped(("stages", i))
        if not isinstance(raw, dict):
            raise at.error((), "expected a mapping with at least `name` and `task`")
        for key in raw:
            if key not in STAGE_KEYS:
                raise at.error((key,), f"unknown key{did_you_mean(key, STAGE_KEYS)}")
        stage_name = raw.get("name")
        if not isinstance(stage_name, str) or not SAFE_NAME.match(stage_name):
            raise at.error(("name",), f"expected a stage name (letters, digits, '_', '.', '+', '-'), got {stage_name!r}")
        if any(s.name == stage_name for s in stages):
            raise at.error(("name",), f"two stages are named {stage_name!r}")
        if "after" in raw and "from_manifest" in raw:
            raise at.error(("from_manifest",), "a stage takes either `after:` (a stage of this spec) or "
                           "`from_manifest:` (registered checkpoints), not both")
        merged = dict(raw)
        for section in ("resources", "checkpoint"):
            if section in spec or section in raw:
                merged[section] = {**(spec.get(section) or {}), **(raw.get(section) or {})}
        upstream = None
        if "after" in raw:
            before = {s.name: s for s in stages}
            if raw["after"] not in before:
                raise at.error(("after",), f"no earlier stage named {raw['after']!r}"
                               f"{did_you_mean(raw['after'], before)} (stages run in the order listed)")
            upstream = [(r, {r.stage: {"run_id": r.run_id}, **r.upstream}) for r in before[raw["after"]].runs]
        elif "from_manifest" in raw:
            upstream = _registry_upstream(raw["from_manifest"], registry, at)
        stage = _stage(stage_name, merged, at, models_dir, upstream, after=raw.get("after"), spec_dir=spec_dir)
        stage.from_manifest = [raw["from_manifest"]] if isinstance(raw.get("from_manifest"), str) else list(raw.get("from_manifest") or [])
        _check_sections(merged, at)
        stages.append(stage)
        runs.extend(stage.runs)
        if len(runs) > cap:
            raise at.error((), f"the stages so far have {len(runs):,} runs, over the cap of {cap:,} "
                           "(raise `max_runs:` in the spec or pass --max-runs)")
    ids = {}
    for r in runs:
        if r.run_id in ids:
            raise where.error(("stages",), f"stages {ids[r.run_id]!r} and {r.stage!r} resolve to the same run "
                              f"({r.label or r.run_id}): give one of them a different value")
        ids[r.run_id] = r.stage
    axes = {}
    for st in stages:
        for k, v in st.axes.items():
            axes.setdefault(k, v)
    return Sweep(name, stages[0].task, path, spec, runs, axes, stages[0].defaults, stages)


def _override(spec, text, where):
    """Apply one --set key.path=value (a YAML value) to the spec."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {text!r}: expected key.path=value, e.g. base.lr=0.01 or resources.time_min=120")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as e:
        raise SpecError(f"--set {key}: the value {raw!r} is not YAML ({str(e).splitlines()[0]})")
    parts, node, path = key.split("."), spec, []
    while True:
        part = parts.pop(0)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"--set {key}: {'.'.join(map(str, path)) or 'the spec'} has no item {part!r}")
            part = int(part)
        path.append(part)
        if not parts:
            break
        if part in ("base", "grid") and isinstance(node, dict):
            # inside base / grid the rest is one config key, dots and all (optim.lr)
            node, part = node.setdefault(part, {}), ".".join(parts)
            path.append(part)
            break
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        if not isinstance(node, (dict, list)):
            raise SpecError(f"--set {key}: {'.'.join(map(str, path))} is a value, not a section")
    if not isinstance(node, (dict, list)):
        raise SpecError(f"--set {key}: {'.'.join(map(str, path[:-1]))} is a value, not a section")
    node[part] = value
    where.lines[tuple(path)] = (f"--set {key}", None)


class _UpstreamRun:
    """What a downstream stage needs of a registered checkpoint's run: its id, label and varied values."""

    def __init__(self, entry):
        self.run_id, self.label, self.stage = entry["run_id"], entry.get("label", ""), entry.get("stage", "upstream")
        self.varied = dict(entry.get("varied") or {})
        self.upstream = {}


def _registry_upstream(names, registry, where):
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise where.error(("from_manifest",), "expected a checkpoint name, or a list of them, "
                          "as `main.py export` registered them")
    out = []
    for n in names:
        entry = (registry or {}).get(n)
        if entry is None:
            known = sorted(registry or {})
            raise where.error(("from_manifest",), f"no checkpoint named {n!r} in the registry"
                              f"{did_you_mean(n, known)} (register one with `python main.py export`)")
        if not isinstance(entry, dict):       # the registry's reader says what is wrong with it
            raise where.error(("from_manifest",), str(entry))
        run = _UpstreamRun(entry)
        record = {"run_id": entry["run_id"], "run_dir": entry["run_dir"], "step": entry["step"],
                  "sha256": entry["sha256"], "checkpoint": entry["path"], "name": n}
        out.append((run, {run.stage: record}))
    return out


def _stage(name, spec, where, models_dir, upstream, after=None, spec_dir=Path(".")) -> Stage:
    """One stage's runs (a sweep without stages is one stage); `upstream`: [(run, ancestry)] to cross with."""
    try:
        ref = tasks.resolve(spec.get("task"), spec_dir, models_dir)
        defaults, choices = tasks.schema(ref)
    except LookupError as e:
        raise where.error(("task",), str(e))
    task = ref.ref

    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise where.error(("base",), "expected a mapping of key -> value")
    if "search" in spec:
        return _search_stage(name, task, spec, base, defaults, choices, where, upstream, after)
    noted = len(where.problems)
    base = {k: where.attempt(_coerce, k, v, defaults, choices, where, ("base", k)) for k, v in base.items()}
    axes = where.attempt(_grid_axes, spec.get("grid") or {}, ("grid",), where)
    if len(where.problems) > noted:      # the mistakes so far, each key checked; the rest builds on them
        where.raise_noted()
    if "zip" in spec:
        groups = spec["zip"] if isinstance(spec["zip"], list) else [spec["zip"]]
        for i, g in enumerate(groups):
            p = ("zip", i) if isinstance(spec["zip"], list) else ("zip",)
            axes.append(_zip_axis(g, p, where, "zip"))
    if "random" in spec:
        axes.append(_random_axis(spec["random"], ("random",), where))
    if "seeds" in spec:
        axes.append(_Axis("seeds", [{"seed": s} for s in _values(spec["seeds"], ("seeds",), where)], ["seed"]))
    _check_disjoint(axes, (), where)
    for a in axes:
        clash = set(a.keys) & set(base)
        if clash:
            raise where.error(("base", sorted(clash)[0]),
                              f"{sorted(clash)[0]!r} is both fixed in base and varied by {a.name!r}")

    count = math.prod(len(a.points) for a in axes) * (len(upstream) if upstream else 1)
    if count > where.cap:
        raise where.error(("grid",), f"the grid has {count:,} points, over the cap of {where.cap:,} "
                          "(raise `max_runs:` in the spec or pass --max-runs)")

    _check_axis_values(axes, defaults, choices, where)
    carried = {k: None for up, _ in (upstream or []) for k in up.varied}
    include = _filters(spec.get("include"), ("include",), where)
    exclude = _filters(spec.get("exclude"), ("exclude",), where)
    for fpath, patterns in ((("include",), include), (("exclude",), exclude)):
        for i, pat in enumerate(patterns):
            for k in pat:
                if k not in defaults and k not in carried:
                    raise where.error(fpath + (i, k), f"unknown key {k!r}{did_you_mean(k, {**defaults, **carried})}")

    fixed = {**defaults, **base}
    if upstream is None:
        runs, axis_values = _expand(task, axes, fixed, defaults, include, exclude, where)
        for r in runs:
            r.task, r.stage = task, name
        return Stage(name, task, None, spec, runs, axis_values, defaults)

    own, own_axes = _expand(task, axes, fixed, defaults, [], [], where)
    runs = []
    for up, ancestry in upstream:
        for r in own:
            clash = set(r.varied) & set(up.varied)
            if clash:
                k = sorted(clash)[0]
                raise where.error(("grid",), f"{k!r} varies in both this stage and stage {up.stage!r}: "
                                  "give it another name in one of them")
            merged = {**up.varied, **r.config}
            if include and not any(_matches(merged, p) for p in include):
                continue
            if exclude and any(_matches(merged, p) for p in exclude):
                continue
            rid = hashlib.sha256(f"{r.run_id}|after|{up.stage}:{up.run_id}".encode()).hexdigest()[:12]
            label = ",".join(x for x in (up.label, r.label) if x)
            runs.append(Run(rid, label, r.config, {**up.varied, **r.varied}, task, name, dict(ancestry)))
    if not runs:
        raise where.error(("grid",), "the stage has no runs" + (" left after include/exclude" if include or exclude else ""))
    return Stage(name, task, after, spec, runs, own_axes, defaults)


def _search_stage(name, task, spec, base, defaults, choices, where, upstream, after) -> Stage:
    """A stage whose runs are a search's trials (docs/search.md). asha: `trials` configurations drawn
    from `space` with the search's seed, known before anything runs; a trial's id leaves out the
    budget key, so the same run trains on when promoted. tpe: `trials` numbered slots whose values
    the sampler chooses when a worker asks (trial=i in the id and label: the values are not known
    before), each training to budget.max."""
    block = spec["search"]
    if not isinstance(block, dict):
        raise where.error(("search",), "expected {method, metric, mode, budget, trials, parallel, seed, space}")
    try:
        search = Search.model_validate(block)
    except ValidationError as e:
        loc, message = settings_error(e)
        if message == "unknown key":
            message += did_you_mean(loc[-1], known_keys(model_at(Search, loc[:-1])))
        raise where.error(("search",) + loc, message)
    for key in ("grid", "zip", "random"):
        if key in spec:
            raise where.error((key,), f"a search stage samples its `space`; `{key}` cannot vary it too "
                              "(fix values in base, or search them)")
    if upstream:
        raise where.error(("search",), "a search stage takes no `after:`/`from_manifest:` (it is a first stage; "
                          "later stages may follow it)")
    budget = search.budget
    if budget is not None:
        if budget.key not in defaults:
            raise where.error(("search", "budget", "key"), f"unknown key {budget.key!r}{did_you_mean(budget.key, defaults)}"
                              f" (the task's config key that says how far a run trains)")
        if not (isinstance(defaults[budget.key], int) and not isinstance(defaults[budget.key], bool)):
            raise where.error(("search", "budget", "key"), f"{budget.key!r} is not an integer key of the task")
    for key in search.space:
        if key not in defaults:
            raise where.error(("search", "space", key), f"unknown key {key!r}{did_you_mean(key, defaults)}")
        if budget is not None and key == budget.key:
            raise where.error(("search", "space", key), "the budget key is raised by promotion, not searched")
        if key in base:
            raise where.error(("base", key), f"{key!r} is both fixed in base and searched")
    space = _random_axis({"samples": search.trials, "seed": search.seed, "params": search.space},
                         ("search",), where)
    seeds = [{"seed": s} for s in _values(spec["seeds"], ("seeds",), where)] if "seeds" in spec else []
    if len(seeds) > 1:
        raise where.error(("seeds",), "a search takes one seed (a trial is one run); evaluate the best "
                          "configurations over several seeds in a later stage")
    fixed = {**defaults, **{k: _coerce(k, v, defaults, choices, where, ("base", k)) for k, v in base.items()
                            if budget is None or k != budget.key}}
    fixed.update(seeds[0] if seeds else {})
    if search.method == "asha":
        points = list({_json(p): p for p in space.points}.values())       # a repeated draw is one trial
        axis = _Axis("random", points, space.keys)
        _check_axis_values([axis], defaults, choices, where)
        runs, axis_values = _expand(task, [axis], fixed, defaults, [], [], where)
        for r in runs:
            r.config[budget.key] = budget.min
    else:
        _check_axis_values([space], defaults, choices, where)       # the space's bounds fit the task's keys
        runs, axis_values = [], {"trial": list(range(search.trials))}
        if budget is not None:
            fixed[budget.key] = budget.max
        overrides = {k: v for k, v in fixed.items() if _differs(k, v, defaults) and (budget is None or k != budget.key)}
        for i in range(search.trials):
            blob = json.dumps({"task": task, "config": overrides, "search": {"method": "tpe", "seed": search.seed,
                                                                             "trial": i}}, sort_keys=True)
            runs.append(Run(hashlib.sha256(blob.encode()).hexdigest()[:12], f"trial={i}", dict(fixed), {"trial": i}))
    for r in runs:
        r.task, r.stage = task, name
    return Stage(name, task, after, spec, runs, axis_values, defaults, search=search)


def _distinct(values):
    """The distinct values in order of appearance (lists compared as tuples)."""
    try:
        return list(dict.fromkeys(values))
    except TypeError:
        return list(dict.fromkeys(_hashable(v) for v in values))


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _check_axis_values(axes, defaults, choices, where):
    """Type-check every distinct value once per axis (not once per run: a 100,000-run grid stays fast)."""
    for a in axes:
        checked = set()
        for point in a.points:
            for k, v in point.items():
                key = (k, _hashable(v), type(v))
                if key in checked:
                    continue
                checked.add(key)
                path = ("seeds",) if a.name == "seeds" else (("random", "params", k) if a.name == "random" else ("grid", a.name))
                point[k] = _coerce(k, v, defaults, choices, where, path)
        for point in a.points:      # coerce repeats cheaply (ints given for float keys)
            for k, v in point.items():
                if isinstance(defaults.get(k), float) and isinstance(v, int) and not isinstance(v, bool):
                    point[k] = float(v)


# ---------------------------------------------------------------- resources / checkpoint / logging / analysis

# `logging:` is not config: it never enters a run's config, so it never changes a run id
SECTIONS = {"resources": Resources, "checkpoint": Checkpoint, "logging": Logging}


def _check_sections(spec, where):
    for section, model in SECTIONS.items():
        block = spec.get(section)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise where.error((section,), "expected a mapping")
        try:
            model.model_validate(block)
        except ValidationError as e:
            loc, message = settings_error(e)
            if message == "unknown key":
                message += did_you_mean(loc[-1], known_keys(model_at(model, loc[:-1])))
            raise where.error((section,) + loc, message)
    if spec.get("analysis") is not None:
        problems = figures.check(spec["analysis"])
        if problems:
            key, message = problems[0]
            path = ("analysis",) + tuple(_split_key(key))
            raise where.error(path, message)


def _split_key(key):
    out = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key or ""):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out
