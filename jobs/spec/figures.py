"""The `analysis:` block of a sweep spec: what keys it takes, and every problem with one.

    from jobs.spec.figures import check
    check({"figures": [{"kind": "ladr", "x": "k"}]})
    # -> [("figures[0].kind", "unknown figure kind 'ladr' (did you mean 'ladder'?); expected one of ...")]

Pure standard library: the spec validator calls `check` at plan time, so a bad analysis block
fails before anything is submitted, and planning never pays for importing pandas or matplotlib.

The block (every key optional):

    stage: eval                       # a pipeline: the stage the tables and figures describe (default: the last)
    group_by: [method, d_hidden, k]   # table rows / figure groups; default: every varied key but the seed
    metrics: [test_acc]               # summary columns; default: every numeric final metric
    error: std                        # std | sem | ci95 | none: error bars and bands in figures
    decimals: 3                       # table cells `0.617 ± 0.002`; or per metric {loss: 4}
    units: {wall_time_s: s}           # axis label "<label> (<unit>)"
    labels: {test_acc: Test accuracy} # pretty names for axes, legends and table headers
    figures: [{kind: ladder, x: k, y: test_acc, hue: method}, ...]

Figure keys, by kind (required ones first; `name` is the file stem, default derived from the kind):

    ladder, line  x, y          hue, facet, logx, logy, error, sharey
    pareto        x, y          hue, facet, logx, logy, error, sharey, x_dir, y_dir (min | max; default x min, y max)
    curves        y             x (default step), hue, facet, logx, logy, error, sharey
                                (sharey: false gives each facet its own y range; default true)
    heatmap       x, y, z       facet, annotate, cmap
    hist          y             hue, facet, logy, bins, density
    logged_hist   counts, edges hue, facet, logy, density (histograms a run logged already binned: counts
                                and edges are list-valued keys of one metrics.jsonl line; facet and hue
                                are scalar keys of the same lines, e.g. facet: step, hue: checkpoint_step)
    logged_heatmap y, z         annotate, cmap (a list a run logged on several lines: a row per value of the
                                logged scalar key y, a column per position of the list-valued key z, mean over runs)
    every kind:   kind, name, title, where ({key: value or [values]}: keep only those runs)
"""
from __future__ import annotations

import re

from jobs.spec.errors import did_you_mean

ERRORS = ("std", "sem", "ci95", "none")
DIRECTIONS = ("min", "max")
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,80}$")

COMMON = ("kind", "name", "title", "where")
XY = ("hue", "facet", "logx", "logy", "error", "sharey")
FIGURE_KEYS = {
    "ladder": (("x", "y"), COMMON + XY),
    "line": (("x", "y"), COMMON + XY),
    "pareto": (("x", "y"), COMMON + XY + ("x_dir", "y_dir")),
    "curves": (("y",), COMMON + XY + ("x",)),
    "heatmap": (("x", "y", "z"), COMMON + ("facet", "annotate", "cmap")),
    "hist": (("y",), COMMON + ("hue", "facet", "logy", "bins", "density")),
    "logged_hist": (("counts", "edges"), COMMON + ("hue", "facet", "logy", "density")),
    "logged_heatmap": (("y", "z"), COMMON + ("annotate", "cmap")),
}
BLOCK_KEYS = ("stage", "group_by", "metrics", "error", "decimals", "units", "labels", "figures")


def _is_name(v):
    return isinstance(v, str) and v.strip() != ""


def _is_bool(v):
    return isinstance(v, bool)


def _is_scalar(v):
    return v is None or isinstance(v, (str, int, float, bool))


def _is_decimals(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 12


FIGURE_VALUES = {
    "kind": (lambda v: v in FIGURE_KEYS, "a figure kind"),
    "x": (_is_name, "a key name"),
    "y": (_is_name, "a key name"),
    "z": (_is_name, "a key name"),
    "counts": (_is_name, "a logged key name"),
    "edges": (_is_name, "a logged key name"),
    "hue": (_is_name, "a key name"),
    "facet": (_is_name, "a key name"),
    "name": (lambda v: isinstance(v, str) and bool(NAME_RE.match(v)),
             "a file stem (letters, digits, _.+-; at most 80)"),
    "title": (lambda v: isinstance(v, str), "a string"),
    "logx": (_is_bool, "true or false"),
    "logy": (_is_bool, "true or false"),
    "sharey": (_is_bool, "true or false"),
    "annotate": (_is_bool, "true or false"),
    "density": (_is_bool, "true or false"),
    "error": (lambda v: v in ERRORS, "one of " + ", ".join(ERRORS)),
    "x_dir": (lambda v: v in DIRECTIONS, "min or max"),
    "y_dir": (lambda v: v in DIRECTIONS, "min or max"),
    "cmap": (lambda v: isinstance(v, str) and v != "", "a matplotlib colormap name"),
    "bins": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000,
             "an integer from 1 to 1000"),
    "where": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and (_is_scalar(x) or (isinstance(x, list) and x and all(map(_is_scalar, x))))
        for k, x in v.items()), "a mapping {key: value or [values]}"),
}


def _names(v):
    """A key list given as a string or a list of strings, or None when it is neither."""
    if isinstance(v, str) and v:
        return [v]
    if isinstance(v, list) and all(_is_name(x) for x in v):
        return list(v)
    return None


def check(block) -> list[tuple[str, str]]:
    """Every problem with an `analysis:` block, as (dotted key path, message); [] when it is fine."""
    if block is None:
        return []
    if not isinstance(block, dict):
        return [("", f"expected a mapping, got {type(block).__name__}")]
    problems = []
    for key, value in block.items():
        if key not in BLOCK_KEYS:
            problems.append((str(key), f"unknown key {key!r}{did_you_mean(key, BLOCK_KEYS)}; "
                                       f"expected one of {', '.join(BLOCK_KEYS)}"))
        elif key in ("group_by", "metrics"):
            if _names(value) is None and value != []:
                problems.append((key, f"expected a list of key names, got {value!r}"))
        elif key == "stage":
            if not _is_name(value):
                problems.append((key, f"expected a stage name, got {value!r}"))
        elif key == "error":
            if value not in ERRORS:
                problems.append((key, f"expected one of {', '.join(ERRORS)}, got {value!r}"))
        elif key == "decimals":
            if not (_is_decimals(value) or (isinstance(value, dict) and all(
                    isinstance(k, str) and _is_decimals(v) for k, v in value.items()))):
                problems.append((key, f"expected an integer 0-12 or a mapping {{metric: integer}}, got {value!r}"))
        elif key in ("units", "labels"):
            if not isinstance(value, dict):
                problems.append((key, f"expected a mapping {{key: text}}, got {value!r}"))
            else:
                for k, v in value.items():
                    if not isinstance(v, str):
                        problems.append((f"{key}.{k}", f"expected text, got {v!r}"))
        elif key == "figures":
            if not isinstance(value, list):
                problems.append((key, f"expected a list of figures, got {value!r}"))
            else:
                problems += _check_figures(value)
    return problems


def _check_figures(figures):
    problems, names = [], {}
    for i, fig in enumerate(figures):
        at = f"figures[{i}]"
        if not isinstance(fig, dict):
            problems.append((at, f"expected a mapping such as {{kind: ladder, x: k, y: test_acc}}, got {fig!r}"))
            continue
        kind = fig.get("kind")
        if kind is None:
            problems.append((at, f"missing key 'kind' (one of {', '.join(FIGURE_KEYS)})"))
            continue
        if kind not in FIGURE_KEYS:
            problems.append((f"{at}.kind", f"unknown figure kind {kind!r}{did_you_mean(kind, FIGURE_KEYS)}; "
                                           f"expected one of {', '.join(FIGURE_KEYS)}"))
            continue
        required, optional = FIGURE_KEYS[kind]
        allowed = required + optional
        for key, value in fig.items():
            if key not in allowed:
                problems.append((f"{at}.{key}", f"unknown key {key!r} for a {kind} figure"
                                                f"{did_you_mean(key, allowed)}; it takes {', '.join(allowed)}"))
                continue
            ok, expected = FIGURE_VALUES[key]
            if not ok(value):
                problems.append((f"{at}.{key}", f"expected {expected}, got {value!r}"))
        for key in required:
            if key not in fig:
                problems.append((at, f"missing key {key!r} (a {kind} figure needs {', '.join(required)})"))
        name = fig.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append((f"{at}.name", f"{name!r} is already the name of figures[{names[name]}]"))
            names.setdefault(name, i)
    return problems


def normalize(block) -> dict:
    """The block with defaults filled in and its bad parts dropped (`check` says what they were).

    Data-dependent defaults (group_by, metrics) stay None here: only the sweep dir knows them.
    `figure_index[j]` is the position in the block's own list of `figures[j]` (a figure dropped
    for a mistake shifts the ones after it), so that errors name the figure the user wrote.
    """
    block = block if isinstance(block, dict) else {}
    bad = {path for path, _ in check(block)}
    out = {
        "stage": block.get("stage") if "stage" not in bad else None,
        "group_by": _names(block.get("group_by")) if "group_by" not in bad else None,
        "metrics": _names(block.get("metrics")) if "metrics" not in bad else None,
        "error": block.get("error", "std") if "error" not in bad else "std",
        "decimals": block.get("decimals", 3) if "decimals" not in bad else 3,
        "units": {str(k): v for k, v in (block.get("units") or {}).items() if isinstance(v, str)}
        if isinstance(block.get("units"), dict) else {},
        "labels": {str(k): v for k, v in (block.get("labels") or {}).items() if isinstance(v, str)}
        if isinstance(block.get("labels"), dict) else {},
        "figures": [],
        "figure_index": [],
    }
    if block.get("group_by") == []:
        out["group_by"] = []
    figures = block.get("figures") if isinstance(block.get("figures"), list) else []
    for i, fig in enumerate(figures):
        at = f"figures[{i}]"
        if at in bad or not isinstance(fig, dict) or fig.get("kind") not in FIGURE_KEYS:
            continue
        fig = {k: v for k, v in fig.items() if f"{at}.{k}" not in bad}
        if any(k not in fig for k in FIGURE_KEYS[fig["kind"]][0]):
            continue
        out["figures"].append(fig)
        out["figure_index"].append(i)
    return out
