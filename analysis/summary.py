"""Runs -> groups: mean, std (ddof=1), n and a 95% confidence interval per metric, as CSV,
Markdown and LaTeX tables whose cells read `0.617 ± 0.002`.

Groups are the distinct values of `group_by` (default: every varied key but the seed), in the
order the plan lists them. A group with fewer finished runs than planned is flagged (`2/3 †`),
so a partial sweep is never read as a whole one.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import DONE, FAILED, PENDING

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: an expansion
# around the normal quantile, exact to 1e-7 there), so the CI needs no scipy.
T975 = [12.7062047362, 4.3026527297, 3.1824463053, 2.7764451052, 2.5705818356, 2.4469118511,
        2.3646242516, 2.3060041352, 2.2621571628, 2.228138852, 2.2009851601, 2.1788128297,
        2.1603686565, 2.1447866879, 2.1314495456, 2.1199052992, 2.1098155778, 2.1009220402,
        2.0930240544, 2.0859634473, 2.0796138447, 2.0738730679, 2.0686576104, 2.0638985616,
        2.0595385528, 2.0555294386, 2.0518305165, 2.0484071418, 2.0452296421, 2.0422724563]
Z975 = 1.959963984540054
PARTIAL = "†"


def t975(df) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (nan for df < 1)."""
    if not df >= 1:
        return math.nan
    if df <= len(T975) and df == int(df):
        return T975[int(df) - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * df ** 4))


def _groupby(df, keys):
    if keys:
        return df.groupby(list(keys), sort=False, dropna=False)
    return df.groupby(np.zeros(len(df), dtype=int), sort=False)


def stats(df, keys, values) -> pd.DataFrame:
    """Per group of `keys`: <v>_mean, <v>_std (ddof=1), <v>_n, <v>_sem, <v>_ci95 (half-width) for each value column."""
    values = list(dict.fromkeys(values))
    g = _groupby(df[list(keys) + values], keys)
    mean, std, n = g[values].mean(), g[values].std(ddof=1), g[values].count()
    out = {}
    for v in values:
        nn = n[v].astype(float)
        sem = std[v] / np.sqrt(nn)
        t = nn.map(lambda k: t975(k - 1)).astype(float)
        out[f"{v}_mean"] = mean[v]
        out[f"{v}_std"] = std[v]
        out[f"{v}_n"] = n[v].astype(int)
        out[f"{v}_sem"] = sem
        out[f"{v}_ci95"] = t * sem
    res = pd.DataFrame(out, index=mean.index)
    return _keys_back(res, keys)


def _keys_back(res, keys):
    if keys:
        return res.reset_index()
    return res.reset_index(drop=True)


def error_of(st, value, kind) -> pd.Series:
    """The error-bar half-width per group for `kind` (std | sem | ci95 | none)."""
    if kind == "none":
        return pd.Series(np.nan, index=st.index)
    return st[f"{value}_{kind}"]


def counts(runs, keys) -> pd.DataFrame:
    """Per group: planned, done, failed, pending runs, and partial (done < planned)."""
    df = runs[list(keys)].copy()
    for s in (DONE, FAILED, PENDING):
        df[s] = (runs["state"] == s).astype(int)
    df["planned"] = 1
    res = _keys_back(_groupby(df, keys)[["planned", DONE, FAILED, PENDING]].sum(), keys)
    res["partial"] = res[DONE] < res["planned"]
    return res


def summary(sweep) -> pd.DataFrame:
    """One row per group: group keys, planned/done/failed/pending/partial, and per metric
    <m>_mean, <m>_std, <m>_n, <m>_ci95_lo, <m>_ci95_hi (over the group's finished runs)."""
    keys = list(sweep.analysis["group_by"])
    metrics = list(sweep.analysis["metrics"])
    runs = sweep.runs[sweep.runs["in_plan"]]
    table = counts(runs, keys)
    if metrics:
        values = runs[keys].copy()
        values[metrics] = runs[metrics].where(runs["state"] == DONE)
        st = stats(values, keys, metrics)
        for m in metrics:
            table[f"{m}_mean"] = st[f"{m}_mean"].values
            table[f"{m}_std"] = st[f"{m}_std"].values
            table[f"{m}_n"] = st[f"{m}_n"].values
            table[f"{m}_ci95_lo"] = (st[f"{m}_mean"] - st[f"{m}_ci95"]).values
            table[f"{m}_ci95_hi"] = (st[f"{m}_mean"] + st[f"{m}_ci95"]).values
    return table


# ---------------------------------------------------------------- text tables

def label_of(sweep, key) -> str:
    return sweep.analysis["labels"].get(key, key)


def header_of(sweep, key) -> str:
    unit = sweep.analysis["units"].get(key)
    return f"{label_of(sweep, key)} ({unit})" if unit else label_of(sweep, key)


def value_text(v) -> str:
    """A group key's value as table text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def cell(mean, std, decimals, pm=" ± ") -> str:
    """`0.617 ± 0.002`; only the mean when std is undefined (n = 1); `–` when there is no value."""
    if mean is None or not np.isfinite(mean):
        return "–" if mean is None or math.isnan(mean) else str(mean)
    scale = max(abs(mean), abs(std) if std == std else 0.0)
    sci = scale >= 1e5 or (0 < scale < 10 ** -decimals)
    f = (lambda x: f"{x:.3g}") if sci else (lambda x: f"{x:.{decimals}f}")
    return f(mean) if not std == std else f"{f(mean)}{pm}{f(std)}"


def _decimals(sweep, metric) -> int:
    d = sweep.analysis["decimals"]
    return d.get(metric, 3) if isinstance(d, dict) else d


def _rows(sweep, table, pm, mark):
    """The text cells of each row: group values, n, metric cells."""
    keys = sweep.analysis["group_by"]
    rows = []
    for _, r in table.iterrows():
        row = [value_text(r[k]) for k in keys] if keys else ["all runs"]
        n = f"{r[DONE]}/{r['planned']}"
        row.append(f"{n} {mark}" if r["partial"] else n)
        for m in sweep.analysis["metrics"]:
            text = cell(r[f"{m}_mean"], r[f"{m}_std"], _decimals(sweep, m), pm)
            if 0 < r[f"{m}_n"] < r[DONE]:
                text += f" (n={r[f'{m}_n']})"
            row.append(text)
        rows.append(row)
    return rows


def _headers(sweep):
    keys = sweep.analysis["group_by"]
    return ([header_of(sweep, k) for k in keys] if keys else ["Group"]) + ["n"] + \
        [header_of(sweep, m) for m in sweep.analysis["metrics"]]


def _notes(sweep, table):
    notes = []
    if table["partial"].any():
        notes.append(f"{PARTIAL} partial: fewer finished runs than planned (n = finished/planned); "
                     f"mean ± std over the finished ones.")
    if any((table[f"{m}_n"] < table[DONE]).any() for m in sweep.analysis["metrics"]):
        notes.append("(n=…): the metric is missing from some finished runs of the group.")
    return notes


def markdown(sweep, table) -> str:
    nkeys = max(len(sweep.analysis["group_by"]), 1)
    esc = lambda s: s.replace("|", "\\|")
    head = _headers(sweep)
    lines = ["| " + " | ".join(map(esc, head)) + " |",
             "|" + "|".join([" --- "] * nkeys + [" ---: "] * (len(head) - nkeys)) + "|"]
    for row in _rows(sweep, table, " ± ", PARTIAL):
        lines.append("| " + " | ".join(map(esc, row)) + " |")
    notes = _notes(sweep, table)
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", PARTIAL: r"$^\dagger$", "–": "--", "…": r"\dots{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def latex(sweep, table) -> str:
    """A booktabs tabular (\\usepackage{booktabs}) to \\input into a paper's table."""
    nkeys = max(len(sweep.analysis["group_by"]), 1)
    head = _headers(sweep)
    lines = ["% written by `python main.py aggregate`; needs \\usepackage{booktabs}",
             "\\begin{tabular}{" + "l" * nkeys + "r" * (len(head) - nkeys) + "}", "\\toprule",
             " & ".join(map(tex_escape, head)) + " \\\\", "\\midrule"]
    for row in _rows(sweep, table, " ± ", PARTIAL):
        lines.append(" & ".join(map(tex_escape, row)) + " \\\\")
    lines.append("\\bottomrule")
    for note in _notes(sweep, table):
        lines.append(f"\\multicolumn{{{len(head)}}}{{l}}{{\\footnotesize {tex_escape(note)}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"
