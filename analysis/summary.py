"""Runs -> groups: mean, std (ddof=1), n and a 95% confidence interval per metric, as CSV,
Markdown and LaTeX tables whose cells read `0.617 ± 0.002`.

The statistics are a pandas groupby; the text tables are one DataFrame of cells (`frame`)
rendered by pandas: `DataFrame.to_markdown` (tabulate) for summary.md, `Styler.to_latex`
(booktabs rules, LaTeX escaping) for summary.tex.

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


def cell(mean, std, decimals) -> str:
    """`0.617 ± 0.002`; only the mean when std is undefined (n = 1); `–` when there is no value."""
    if mean is None or not np.isfinite(mean):
        return "–" if mean is None or math.isnan(mean) else str(mean)
    scale = max(abs(mean), abs(std) if std == std else 0.0)
    sci = scale >= 1e5 or (0 < scale < 10 ** -decimals)
    f = (lambda x: f"{x:.3g}") if sci else (lambda x: f"{x:.{decimals}f}")
    return f(mean) if not std == std else f"{f(mean)} ± {f(std)}"


def _decimals(sweep, metric) -> int:
    d = sweep.analysis["decimals"]
    return d.get(metric, 3) if isinstance(d, dict) else d


def _metric_text(sweep, table, m) -> pd.Series:
    """The cells of metric `m`: `0.617 ± 0.002`, then `(k NaN/inf)` or `(n=…)` where that applies."""
    d = _decimals(sweep, m)
    means, stds = table[f"{m}_mean"].dropna(), table[f"{m}_std"].fillna(0)
    if len(means) and all(float(v).is_integer() for v in means) and (stds == 0).all():
        d = 0                         # a count (steps, epochs): 200, not 200.000 ± 0.000
    text = pd.Series([cell(mu, sd, d) for mu, sd in zip(table[f"{m}_mean"], table[f"{m}_std"])],
                     index=table.index, dtype=object)
    bad = table.get(f"{m}_nonfinite", pd.Series(0, index=table.index)).fillna(0).astype(int)
    n = table[f"{m}_n"]
    short = (n > 0) & (n < table[DONE])
    text = text.mask(bad > 0, text + " (" + bad.astype(str) + " NaN/inf)")
    return text.mask((bad == 0) & short, text + " (n=" + n.astype(str) + ")")


def frame(sweep, table) -> pd.DataFrame:
    """The summary as text cells under their headers (labels and units): the group values, `n`
    (`done/planned`, `†` when partial), and a `mean ± std` cell per metric; what summary.md and
    summary.tex print."""
    keys = sweep.analysis["group_by"]
    cols = {}
    if keys:
        for k in keys:
            cols[header_of(sweep, k)] = table[k].map(value_text)
    else:
        cols["Group"] = pd.Series("all runs", index=table.index, dtype=object)
    n = table[DONE].astype(str) + "/" + table["planned"].astype(str)
    cols["n"] = n.mask(table["partial"].astype(bool), n + f" {PARTIAL}")
    for m in sweep.analysis["metrics"]:
        head = header_of(sweep, m)
        cols[head if head not in cols else f"{head} [{m}]"] = _metric_text(sweep, table, m)
    return pd.DataFrame(cols, index=table.index).reset_index(drop=True)


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


def _align(sweep, ncols):
    nkeys = max(len(sweep.analysis["group_by"]), 1)
    return ["left"] * nkeys + ["right"] * (ncols - nkeys)


def markdown(sweep, table) -> str:
    """summary.md: a GitHub (pipe) table from DataFrame.to_markdown (tabulate), notes under it."""
    text = frame(sweep, table)
    pipe = lambda s: str(s).replace("|", "\\|")          # a `|` in a label or value is no column break
    text = text.rename(columns=pipe).map(pipe)
    lines = [text.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                              colalign=_align(sweep, text.shape[1]))]
    for note in _notes(sweep, table):           # a paragraph each
        lines += ["", note]
    return "\n".join(lines) + "\n"


# after pandas' LaTeX escaping (`_` -> `\_`, `&` -> `\&`...): what else a tabular needs written as LaTeX
# (< > | print as other glyphs in the default OT1 font encoding)
_TEX_SYMBOLS = {"<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$",
                PARTIAL: r"$^\dagger$", "–": "--", "…": r"\dots{}"}


def _tex_symbols(text) -> str:
    text = str(text)
    for c, tex in _TEX_SYMBOLS.items():
        text = text.replace(c, tex)
    return text


def latex(sweep, table) -> str:
    """summary.tex: a booktabs tabular (Styler.to_latex, hrules) to \\input into a paper's table;
    the notes follow it as a footnote-size paragraph."""
    text = frame(sweep, table)
    styler = (text.style.hide(axis="index")
              .format(_tex_symbols, escape="latex")
              .format_index(_tex_symbols, escape="latex", axis="columns"))
    tabular = styler.to_latex(hrules=True, column_format="".join(a[0] for a in _align(sweep, text.shape[1])))
    lines = ["% written by `python main.py aggregate`; needs \\usepackage{booktabs}", tabular.rstrip("\n")]
    notes = _notes(sweep, table)
    if notes:                  # under the table, in a tabular of their own: they never widen its columns
        small = lambda note: "\\footnotesize " + _tex_symbols(note)
        lines += ["", "\\smallskip", pd.DataFrame({"note": notes}).style.hide(axis="index").hide(axis="columns")
                  .format(small, escape="latex").to_latex(column_format="@{}l@{}").rstrip("\n")]
    return "\n".join(lines) + "\n"
