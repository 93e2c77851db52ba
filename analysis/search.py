"""A search's own figure and table, from its journal (search/<stage>.jsonl): every trial's metric
against the budget it reached, promoted trials marked, the best configuration named.

    aggregate writes search_<stage>.png/.pdf and search_<stage>.csv next to the summary tables.
"""
from __future__ import annotations

import math

import pandas as pd

from jobs.store import SweepDir, atomic


def searches(spec: dict) -> list:
    """[(stage name, its search block)] of a frozen spec (a pipeline's stages, or the sweep itself)."""
    stages = spec.get("stages") if isinstance(spec.get("stages"), list) else [spec]
    return [(st.get("name") or spec.get("name", ""), st["search"]) for st in stages
            if isinstance(st, dict) and isinstance(st.get("search"), dict)]


def rung_results(sweep_dir, stage, labels=None) -> pd.DataFrame:
    """One row per rung result: trial, run_id, label, rung, budget, value, promoted (trained further)."""
    path = SweepDir(sweep_dir).search_journal(stage)
    events = atomic.read_jsonl(path) if path.exists() else []
    rows = [e for e in events if e.get("event") == "result"]
    frame = pd.DataFrame([{"trial": e.get("trial"), "run_id": e.get("run_id"), "rung": e.get("rung"),
                           "budget": e.get("budget"), "value": _float(e.get("value"))} for e in rows],
                         columns=["trial", "run_id", "rung", "budget", "value"])
    top = frame.groupby("trial")["rung"].max() if len(frame) else pd.Series(dtype=int)
    frame["promoted"] = [r < top[t] for t, r in zip(frame["trial"], frame["rung"])]
    frame["label"] = [(labels or {}).get(rid, "") for rid in frame["run_id"]]
    return frame


def best(frame: pd.DataFrame, mode="min"):
    """The row of the best result at the highest rung reached, or None."""
    if frame.empty:
        return None
    last = frame[frame["rung"] == frame["rung"].max()].dropna(subset=["value"])
    if last.empty:
        return None
    return last.loc[last["value"].idxmin() if mode == "min" else last["value"].idxmax()]


def figure(frame: pd.DataFrame, block: dict, stage: str):
    """Metric vs budget, one line per trial; trials promoted at least once in colour, the rest grey."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from analysis.figures import PANEL_H, PANEL_W, STYLE
    import matplotlib.pyplot as plt
    metric, mode = block.get("metric", "metric"), block.get("mode", "min")
    key = (block.get("budget") or {}).get("key", "budget")
    with plt.rc_context(STYLE):
        f = Figure(figsize=(PANEL_W * 1.35, PANEL_H * 1.35), layout="constrained")
        ax = f.add_subplot()
        far = frame.groupby("trial")["rung"].max()
        colours = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]     # no grey
        k = 0
        for trial, rows in frame.sort_values("rung").groupby("trial"):
            up = far[trial] > 0
            colour = colours[k % len(colours)] if up else "0.75"
            k += up
            ax.plot(rows["budget"], rows["value"], marker="o", ms=3 if up else 2, lw=1.0 if up else 0.6,
                    color=colour, alpha=1.0 if up else 0.8, zorder=3 if up else 1)
        b = best(frame, mode)
        if b is not None:
            ax.plot([b["budget"]], [b["value"]], marker="*", ms=11, color="black", zorder=5, ls="none")
            ax.annotate(f"best: {b['label'] or b['run_id']}\n{metric} = {b['value']:.4g}",
                        (b["budget"], b["value"]), textcoords="offset points", xytext=(-6, 30), ha="right", fontsize=7,
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.3"})
        budgets = sorted(frame["budget"].dropna().unique())
        if len(budgets) > 1 and budgets[0] > 0:
            ax.set_xscale("log")
            ax.set_xticks(budgets, [str(int(x)) if float(x).is_integer() else str(x) for x in budgets])
            ax.minorticks_off()
        values = frame["value"].dropna()
        if len(values) and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")         # losses over orders of magnitude: the rungs' differences stay visible
        ax.set_xlabel(f"budget ({key})")
        ax.set_ylabel(metric)
        n = frame["trial"].nunique()
        promoted = int((far > 0).sum())
        ax.set_title(f"{block.get('method', 'search')} {stage}: {n} trials, {promoted} promoted "
                     f"(colour; grey: stopped at the first rung)", fontsize=8)
    return f


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
