"""Runs -> groups: mean, std (ddof=1), n and a 95% confidence interval per metric, as CSV,
Markdown and LaTeX tables whose cells read `0.617 ± 0.002`.

Non-finite values a run reported (NaN / inf: a diverged run) are never dropped silently: the mean
and std are over the finite values, and each cell says how many were not (`0.61 ± 0.02 (1 NaN/inf)`,
column <m>_nonfinite in summary.csv). The 95% CI is mean ± t(0.975, n-1)·std/√n, t from scipy.

Groups are the distinct values of `group_by` (default: every varied key but the seed), in the
order the plan lists them. A group with fewer finished runs than planned is flagged (`2/3 †`),
so a partial sweep is never read as a whole one.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import DONE, FAILED, PENDING

PARTIAL = "†"


def t975(df) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (nan for df < 1), from scipy."""
    if not df >= 1:
        return math.nan
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def _groupby(df, keys):
    if keys:
        return df.groupby(list(keys), sort=False, dropna=False)
    return df.groupby(np.zeros(len(df), dtype=int), sort=False)


def stats(df, keys, values) -> pd.DataFrame:
    """Per group of `keys`: <v>_mean, <v>_std (ddof=1), <v>_n, <v>_sem, <v>_ci95 (half-width) for each value column."""
    values = list(dict.fromkeys(values))
    df = df[list(keys) + values].copy()
    for v in values:                 # NaN / inf a run reported are counted by summary(), not averaged
        df[v] = df[v].where(np.isfinite(df[v].astype(float)))
    g = _groupby(df, keys)
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
    for s in (DONE, FAILED):
        df[s] = (runs["state"] == s).astype(int)
    df[PENDING] = 1 - df[DONE] - df[FAILED]          # not finished: pending, in flight, corrupt result, new
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
            bad = runs["run_id"].isin(sweep.nonfinite.get(m, ())) & (runs["state"] == DONE)
            table[f"{m}_nonfinite"] = _keys_back(_groupby(runs[keys].assign(_b=bad.astype(int)), keys)["_b"].sum(),
                                                 keys)["_b"].values if keys else [int(bad.sum())]
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
            if r.get(f"{m}_nonfinite", 0):
                text += f" ({r[f'{m}_nonfinite']} NaN/inf)"
            elif 0 < r[f"{m}_n"] < r[DONE]:
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
    if any(table.get(f"{m}_nonfinite", pd.Series(dtype=int)).gt(0).any() for m in sweep.analysis["metrics"]):
        notes.append("(k NaN/inf): k finished runs of the group reported a non-finite value (diverged); "
                     "mean ± std are over the finite values, n counts only those.")
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
