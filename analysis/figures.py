"""Figures a paper can take as they are: labelled axes with units, a legend, error bars.

One function per kind (ladder/line, pareto, curves, heatmap, hist), each taking the sweep, one
entry of `analysis.figures` and returning a matplotlib Figure (plus tables some kinds list,
such as the Pareto front). Error bars and bands are the std over seeds unless the figure or the
block says `error: sem | ci95 | none`. Points whose group has fewer finished runs than planned
are drawn hollow, with a note under the axes, so a partial sweep never passes for a whole one.

Nothing is left to guess: the caption under the axes says what the bars or bands are, over what
(seeds, and any varied key the grouping pools), n, and the `where:` filter. A key or metric that
does not exist is a FigureError with a did-you-mean and the figure key at fault (`e.key`), as is
an axis the grouping would average away; a figure with nothing to draw raises Skip saying why.

Rendering goes through matplotlib's object API (no pyplot, no global backend switch): PNG via
Agg and PDF with fixed metadata, so the same data gives the same bytes.
"""
from __future__ import annotations

import io
import math
import re
import textwrap

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, Formatter, MaxNLocator, NullLocator

from jobs.spec import figures as schema
from analysis.load import DONE, SEED
from analysis.pareto import front
from analysis.summary import PARTIAL, counts, error_of, stats, t975, value_text

# Okabe & Ito's palette: told apart with every common colour-vision deficiency and in greyscale
# together with the markers.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2))]
STYLE = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 7,
    "legend.title_fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.6,
    "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.35,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "lines.linewidth": 1.3,
    "lines.markersize": 4, "errorbar.capsize": 2, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,          # TrueType in the PDF: what venues ask for
    "svg.hashsalt": "hpcsweep", "savefig.dpi": 300, "figure.dpi": 100,
}
PANEL_W, PANEL_H = 3.3, 2.4          # inches: one column of a two-column paper
DEFAULT_LABELS = {"wall_time_s": "Wall time", "step": "Step", "attempts": "Attempts"}
DEFAULT_UNITS = {"wall_time_s": "s"}
ERROR_WORDS = {"std": "mean ± std", "sem": "mean ± s.e.m.", "ci95": "mean ± 95% CI", "none": "mean"}


class Skip(Exception):
    """This figure has nothing to draw from this sweep yet (the message says why)."""


class FigureError(ValueError):
    """A mistake in the figure's spec: a key or metric that does not exist (with a did-you-mean),
    or an axis that the grouping averages away. `key` is the figure's key at fault (`x`, `where.lam`)."""

    def __init__(self, message, key=None):
        super().__init__(f"{key}: {message}" if key else message)
        self.message, self.key = message, key


# ---------------------------------------------------------------- naming and text

def names(figures) -> list:
    """The file stem of each figure: its `name`, else the kind, else kind_y_vs_x when a kind repeats."""
    kinds = [f["kind"] for f in figures]
    out, used = [], set()
    for f in figures:
        if f.get("name"):
            stem = f["name"]
        elif kinds.count(f["kind"]) == 1:
            stem = f["kind"]
        else:
            parts = [f["kind"], str(f.get("z") or f.get("y") or f.get("counts"))] + ([f"vs_{f['x']}"] if f.get("x") else [])
            stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "_".join(parts))[:80]
        base, k = stem, 2
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        out.append(stem)
    return out


def label(sweep, key, unit=True) -> str:
    text = sweep.analysis["labels"].get(key) or DEFAULT_LABELS.get(key, key)
    u = sweep.analysis["units"].get(key, DEFAULT_UNITS.get(key))
    return f"{text} ({u})" if unit and u else text


def _key_text(sweep, keys, values) -> str:
    return ", ".join(f"{label(sweep, k, unit=False)} = {value_text(v)}" for k, v in zip(keys, values))


NA = float("nan")      # every missing key value becomes this one object, so tuples and dicts match it


def _norm(v):
    return NA if isinstance(v, float) and math.isnan(v) or v is None or v is pd.NA else v


def _tuples(df, cols) -> list:
    """Each row's values of `cols` as a tuple, missing values normalised (see NA)."""
    if not cols:
        return [()] * len(df)
    return [tuple(map(_norm, r)) for r in df[list(cols)].itertuples(index=False, name=None)]


def _distinct(items) -> list:
    return list(dict.fromkeys(items))


def _match(df, cols, values):
    """Rows of `df` whose `cols` equal `values` (a missing value matches a missing value)."""
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(cols, values):
        mask &= (df[c].isna() if v is NA else df[c] == v).to_numpy(dtype=bool)
    return df[mask]


def _order(values) -> list:
    """Distinct values: numbers ascending (missing last), anything else in order of appearance."""
    uniq = _distinct(map(_norm, values))
    nums = [v for v in uniq if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)]
    if len(nums) == len(uniq):
        return sorted(nums, key=lambda v: (math.isnan(v), v))
    return uniq


# ---------------------------------------------------------------- data

def _need(sweep, fig, keys, numeric=()):
    """The figure keys (`x`, `hue`...) in `keys` name config keys or final metrics of the sweep:
    else a FigureError with a did-you-mean (a Skip while no run has finished, as a metric may
    still come); those in `numeric` name numeric columns."""
    cols = sweep.runs.columns
    options = [c for c in cols if c not in ("run_id", "label", "state", "error", "in_plan", "finished")]
    for key in keys:
        k = fig.get(key)
        if k and k not in cols:
            if not (sweep.runs["state"] == DONE).any():     # a metric may still come: a hint, not an error
                raise Skip(f"no run has finished yet, so there is no final metric {k!r}"
                           f"{schema.did_you_mean(k, options)}")
            raise FigureError(f"{k!r} is neither a config key nor a final metric{schema.did_you_mean(k, options)}",
                              key)
    for key in numeric:
        k = fig[key]
        if not pd.api.types.is_numeric_dtype(sweep.runs[k]) or pd.api.types.is_bool_dtype(sweep.runs[k]):
            raise Skip(f"{key} {k!r} is not numeric")


def _not_logged(logged, data, fig, key):
    """The FigureError for a figure key naming something no run logged: with a did-you-mean over
    every logged key when the reader can list them (`logged.columns()`), else over those it returned."""
    k = fig.get(key, "step") if key == "x" else fig[key]
    names = getattr(logged, "columns", None)
    every = [c for c in names() if c not in ("run", "run_id")] if callable(names) else None
    known = every if every is not None else [c for c in data.columns if c != "run"]
    return FigureError(f"{k!r} was logged by no run{schema.did_you_mean(k, known)}"
                       + (f"; logged: {', '.join(every)}" if every is not None else ""), key)


def _runs(sweep, fig):
    """The planned runs this figure covers (its `where` applied)."""
    runs = sweep.runs[sweep.runs["in_plan"]]
    if runs.empty:
        raise Skip("the sweep has no planned runs")
    for k, v in (fig.get("where") or {}).items():
        if k not in runs.columns:
            options = [c for c in runs.columns if c not in ("run_id", "label", "error", "in_plan", "finished")]
            raise FigureError(f"{k!r} is neither a config key nor a final metric{schema.did_you_mean(k, options)}",
                              f"where.{k}")
        kept = runs[runs[k].isin(v if isinstance(v, list) else [v])]
        if kept.empty:
            values = _order(runs[k].tolist())
            more = f" and {len(values) - 12} more" if len(values) > 12 else ""
            raise Skip(f"no planned run matches where: {_where_text(fig)} (the runs have {k} = "
                       f"{' or '.join(map(value_text, values[:12]))}{more})")
        runs = kept
    return runs


def _where_text(fig) -> str:
    return ", ".join(f"{k} = {v if not isinstance(v, list) else ' or '.join(map(str, v))}"
                     for k, v in (fig.get("where") or {}).items())


def _averaged_away(sweep, runs, fig, axes, keys):
    """An axis (a figure key: `x`, `y`) that is a config key varying among the figure's runs but
    not kept apart by its groups would be averaged over: the points would mix configurations.
    That is an error."""
    for axis in axes:
        a = fig[axis]
        if a in sweep.config_keys and a not in keys and runs[a].nunique(dropna=False) > 1:
            raise FigureError(f"{a!r} is a config key that varies here, and the grouping "
                              f"({', '.join(keys) or 'none'}) averages it away; plot it as x of a line "
                              f"figure, or fix it with where: {{{a}: ...}}", axis)


def _pooled(sweep, runs, keys) -> list:
    """Config keys (not the seed) that vary within a group of `keys`: a point pools runs over them
    (analysis.group_by leaves them out), and the caption says so. A key that varies only between
    groups (constant within each, like a flag that one mode sets) pools nothing."""
    cand = [k for k in sweep.varied if k != SEED and k not in keys and k in runs.columns]
    if not cand or runs.empty:
        return []
    if not keys:
        return [k for k in cand if runs[k].nunique(dropna=False) > 1]
    within = runs.groupby(list(keys), dropna=False)[cand].nunique(dropna=False).max()
    return [k for k in cand if within[k] > 1]


def _over(sweep, pooled) -> str:
    """What a mean is over: `seeds`, or `seeds and lam, d` when other keys are pooled too."""
    return "seeds" + (" and " + ", ".join(label(sweep, k, unit=False) for k in pooled) if pooled else "")


def _point_stats(runs, keys, values):
    """stats() over finished runs plus planned/done counts, for the groups of `keys`."""
    frame = runs[keys].copy()
    for v in values:
        frame[v] = runs[v].where(runs["state"] == DONE)
    st = stats(frame, keys, values)
    ct = counts(runs, keys)
    st["planned"], st["done"], st["partial"] = ct["planned"].values, ct[DONE].values, ct["partial"].values
    return st


def _leftover(sweep, runs, used):
    """Group keys the figure does not place (not x, hue, facet...) that still vary among its runs:
    pooling over them would mix configurations, so they split lines (or panels) further."""
    return [k for k in sweep.analysis["group_by"]
            if k not in used and k in runs.columns and runs[k].nunique(dropna=False) > 1]


def _facets(st, facet):
    if not facet:
        return [(None, st)]
    return [(v, _match(st, [facet], [v])) for v in _order(st[facet].tolist())]


def _shared_y(fig) -> bool:
    """A figure's `sharey` (ladder, line, pareto, curves): whether its facets share one y range (default)."""
    return fig.get("sharey", True)


def _axes(n, fig_kwargs=None, sharey=True):
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    extra = 0.9 if n > 1 else 1.0
    f = Figure(figsize=(PANEL_W * extra * ncols, PANEL_H * nrows), layout="constrained", **(fig_kwargs or {}))
    axs = f.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axs[n:]:
        ax.set_visible(False)
    return f, axs[:n]


def _rests(combos, hue):
    """The distinct non-hue parts of line keys, in order: they set line style (with a hue) or colour."""
    return list(dict.fromkeys(tuple(c[1:] if hue else c) for c in combos))


def _line_style(sweep, lines, hue, combo, hue_vals, rests, y):
    """(colour, marker, linestyle, legend text) of one line: colour and marker follow the hue,
    the line style the other group keys (or colour and marker, without a hue)."""
    ri = rests.index(tuple(combo[1:] if hue else combo))
    color, marker = _style_of(hue_vals.index(combo[0]) if hue else ri)
    ls = LINESTYLES[ri % len(LINESTYLES)] if hue else "-"
    if not lines:
        text = label(sweep, y, unit=False)
    else:                    # the legend's title names the keys (_legend_title)
        text = ", ".join(value_text(v) for v in combo)
    return color, marker, ls, text


def _legend_title(sweep, lines):
    return ", ".join(label(sweep, k, unit=False) for k in lines) or None


def _style_of(i):
    return PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]


CAPTION_SIZE = 6.5          # points


def _note(f, parts):
    """The caption: `parts` joined by `; `, wrapped to the figure's width (between parts where it
    can; never inside `n = 3` or `mean ± std`), under the figure's bottom edge (the saved image
    grows to hold it, so it never covers a tick label)."""
    width = max(30, int(f.get_size_inches()[0] * 72 / (CAPTION_SIZE * 0.56)))
    lines = []
    for part in (piece for part in parts for piece in part.split("; ")):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            if lines:
                lines[-1] += ";"
            keep = part.replace(" = ", "\0=\0").replace(" ± ", "\0±\0")
            lines += [line.replace("\0", " ") for line in textwrap.wrap(keep, width, break_on_hyphens=False)]
    f.text(0.5, 0.0, "\n".join(lines), ha="center", va="top", fontsize=CAPTION_SIZE, color="0.3",
           transform=f.transFigure, linespacing=1.3)


def _log(ax, axis, values):
    """Log scale, or symlog when some values are <= 0 (a ponder cost of 0, say). Ticks read as
    plain numbers (0.2, 0.5, 1, 2) when the values lie between 0.001 and 10,000, else 10^k."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    pos = values[values > 0]
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    if len(pos) and len(pos) < len(values):
        set_scale("symlog", linthresh=float(pos.min()), linscale=0.5)
    else:
        set_scale("log")
        if len(pos) and pos.min() >= 1e-3 and pos.max() <= 1e4:
            which = ax.xaxis if axis == "x" else ax.yaxis
            which.set_major_formatter(_Plain(which.get_major_formatter()))
            which.set_minor_formatter(_Plain(which.get_minor_formatter()))


class _Plain(Formatter):
    """A log axis formatter's choice of which ticks to label, written as plain numbers."""

    def __init__(self, inner):
        self.inner = inner

    def set_axis(self, axis):
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs):
        super().set_locs(locs)
        self.inner.set_locs(locs)

    def __call__(self, x, pos=None):
        return f"{x:g}" if self.inner(x, pos) else ""


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def sci_text(v) -> str:
    """1e-05 as $10^{-5}$, 5e-04 as $5\\times10^{-4}$ (mathtext)."""
    if v == 0 or not np.isfinite(v):
        return value_text(v)
    e = math.floor(math.log10(abs(v)))
    m = f"{v / 10 ** e:.3g}"
    if m in ("10", "-10"):
        m, e = m[:-1], e + 1
    if m in ("1", "-1"):
        return f"${m[:-1]}10^{{{e}}}$"
    return f"${m}\\times10^{{{e}}}$"


def tick_texts(values) -> list:
    """Tick labels for the distinct values of an axis: all in one notation (never 0.0001 next to 1e-05)."""
    if values and all(_is_num(v) and np.isfinite(v) for v in values) and \
            any(v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) for v in values):
        return [sci_text(v) for v in values]
    return [value_text(v) for v in values]


LEGEND_ROWS = 14          # entries in one legend column on the right before another column starts


def _legend(f, handles, title=None):
    """Above the axes in a row (never over the data), or on the right when there are many entries;
    the figure grows taller when a long legend would not fit beside the axes."""
    if not handles:
        return
    few = len(handles) <= 4 and sum(len(t) for t in handles) <= 60
    ncols = len(handles) if few else math.ceil(len(handles) / LEGEND_ROWS)
    if not few:              # room for the legend beside the axes, not taken from them
        rows = math.ceil(len(handles) / ncols) + (1 if title else 0)
        height = rows * STYLE["legend.fontsize"] * 1.75 / 72 + 0.3       # inches
        chars = max(len(t) for t in handles)
        width = ncols * (chars * STYLE["legend.fontsize"] * 0.55 / 72 + 0.5)
        if title:
            width = max(width, len(title) * STYLE["legend.title_fontsize"] * 0.55 / 72 + 0.2)
        w, h = f.get_size_inches()
        f.set_size_inches(w + width, max(h, height))
    styled = any(getattr(h, "get_linestyle", lambda: "-")() not in ("-", "None", "none", "") for h in handles.values())
    f.legend(list(handles.values()), list(handles), title=title, handlelength=2.8 if styled else 1.8,
             borderaxespad=0.2,
             loc="outside upper center" if few else "outside right upper", ncols=ncols,
             columnspacing=1.2)


# ---------------------------------------------------------------- kinds

def ladder(sweep, fig, **_):
    """A metric against an ordered axis, one line per hue group (and per other group key)."""
    x, y, hue, facet = fig["x"], fig["y"], fig.get("hue"), fig.get("facet")
    _need(sweep, fig, ["x", "y", "hue", "facet"], numeric=["y"])
    runs = _runs(sweep, fig)
    lines = ([hue] if hue else []) + _leftover(sweep, runs, {x, y, hue, facet, "seed"})
    keys = ([facet] if facet else []) + lines + [x]
    _averaged_away(sweep, runs, fig, ["y"], keys)
    st = _point_stats(runs, keys, [y])
    if not (st[f"{y}_n"] > 0).any():
        raise Skip(f"no finished run{' matching where: ' + _where_text(fig) if fig.get('where') else ''} "
                   f"has a finite {y!r}")
    st["err"] = error_of(st, y, fig.get("error", sweep.analysis["error"])).values
    numeric_x = pd.api.types.is_numeric_dtype(runs[x]) and not pd.api.types.is_bool_dtype(runs[x])
    xs_all = _order(st[x].dropna().tolist() if numeric_x else st[x].tolist())
    pos = (lambda v: v) if numeric_x else (lambda v: xs_all.index(_norm(v)))
    hue_vals = _order(st[hue].tolist()) if hue else [None]
    combos = _distinct(_tuples(st, lines)) if lines else [()]
    rests = _rests(combos, hue)
    panels = _facets(st, facet)
    f, axs = _axes(len(panels), sharey=_shared_y(fig))
    handles, partial, baseline = {}, False, False
    for ax, (fv, part) in zip(axs, panels):
        for combo in combos:
            sel = _match(part, lines, combo)
            sel = sel[sel[f"{y}_n"] > 0]
            if sel.empty:
                continue
            color, marker, ls, text = _line_style(sweep, lines, hue, combo, hue_vals, rests, y)
            base = sel[sel[x].isna()] if numeric_x else sel.iloc[:0]
            sel = sel[sel[x].notna()] if numeric_x else sel
            sel = sel.assign(_p=sel[x].map(pos)).sort_values("_p")
            if not sel.empty:
                ax.errorbar(sel["_p"], sel[f"{y}_mean"], yerr=sel["err"], color=color, ls=ls, marker=marker,
                                markerfacecolor=color, elinewidth=0.8)
                hollow = sel[sel["partial"]]
                if len(hollow):
                    partial = True
                    ax.plot(hollow["_p"], hollow[f"{y}_mean"], ls="none", marker=marker, color=color,
                            markerfacecolor="white", zorder=3)
                handles.setdefault(text, Line2D([], [], color=color, ls=ls, marker=marker))
            for _, b in base.iterrows():       # a group without this axis (a baseline): a flat line
                ax.axhline(b[f"{y}_mean"], color=color, ls="--", lw=1.0)
                if np.isfinite(b["err"]):
                    baseline = True
                    ax.axhspan(b[f"{y}_mean"] - b["err"], b[f"{y}_mean"] + b["err"], color=color, alpha=0.12, lw=0)
                handles.setdefault(text, Line2D([], [], color=color, ls="--"))
                partial |= bool(b["partial"])
        if facet:
            ax.set_title(_key_text(sweep, [facet], [fv]))
        ax.set_xlabel(label(sweep, x))
        if fig.get("logx") and numeric_x:
            _log(ax, "x", xs_all)
        if fig.get("logy"):
            _log(ax, "y", st[f"{y}_mean"].tolist())
        if not numeric_x:
            ax.xaxis.set_major_locator(FixedLocator(range(len(xs_all))))
            ax.set_xticklabels(tick_texts(xs_all))
        elif fig["kind"] == "ladder" and not fig.get("logx") and len(xs_all) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(xs_all))
            ax.xaxis.set_minor_locator(NullLocator())
        elif all(float(v).is_integer() for v in xs_all) and not fig.get("logx"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axs[0].set_ylabel(label(sweep, y))
    if len(handles) > 1 or hue:
        _legend(f, handles, _legend_title(sweep, lines))
    _finish(f, fig, partial, fig.get("error", sweep.analysis["error"]), n=st[f"{y}_n"],
            over=_over(sweep, _pooled(sweep, runs, keys)), bars="error bars and bands" if baseline else "error bars")
    return f, {}


line = ladder


def pareto(sweep, fig, **_):
    """Each group as a point (error bars on both axes) and the non-dominated front through them."""
    x, y, hue, facet = fig["x"], fig["y"], fig.get("hue"), fig.get("facet")
    _need(sweep, fig, ["x", "y", "hue", "facet"], numeric=["x", "y"])
    x_dir, y_dir = fig.get("x_dir", "min"), fig.get("y_dir", "max")
    runs = _runs(sweep, fig)
    keys = list(dict.fromkeys(([facet] if facet else []) + ([hue] if hue else []) +
                              [k for k in sweep.analysis["group_by"] if k not in (x, y)]))
    _averaged_away(sweep, runs, fig, ["x", "y"], keys)
    st = _point_stats(runs, keys, [x, y])
    kind = fig.get("error", sweep.analysis["error"])
    st["x_err"], st["y_err"] = error_of(st, x, kind).values, error_of(st, y, kind).values
    st = st[(st[f"{x}_n"] > 0) & (st[f"{y}_n"] > 0)].reset_index(drop=True)
    if st.empty:
        raise Skip(f"no finished run has both {x!r} and {y!r}")
    st["on_front"] = False
    for _, part in _facets(st, facet):
        mask = front(part[f"{x}_mean"], part[f"{y}_mean"], x_dir, y_dir)
        st.loc[part.index[mask], "on_front"] = True
    hue_vals = _order(st[hue].tolist()) if hue else [None]
    panels = _facets(st, facet)
    f, axs = _axes(len(panels), sharey=_shared_y(fig))
    handles, partial = {}, False
    for ax, (fv, part) in zip(axs, panels):
        for hi, hv in enumerate(hue_vals):
            sel = _match(part, [hue], [hv]) if hue else part
            if sel.empty:
                continue
            color, marker = _style_of(hi)
            ax.errorbar(sel[f"{x}_mean"], sel[f"{y}_mean"], xerr=sel["x_err"], yerr=sel["y_err"], ls="none",
                        marker=marker, color=color, elinewidth=0.7, alpha=0.9)
            hollow = sel[sel["partial"]]
            if len(hollow):
                partial = True
                ax.plot(hollow[f"{x}_mean"], hollow[f"{y}_mean"], ls="none", marker=marker, color=color,
                        markerfacecolor="white", zorder=3)
            if hue:
                handles.setdefault(value_text(hv), Line2D([], [], color=color, marker=marker, ls="none"))
        fr = part[part["on_front"]].sort_values([f"{x}_mean", f"{y}_mean"])
        ax.plot(fr[f"{x}_mean"], fr[f"{y}_mean"], color="0.25", ls="--", lw=0.9, zorder=1)
        ax.plot(fr[f"{x}_mean"], fr[f"{y}_mean"], ls="none", marker="o", ms=7, mfc="none", mec="0.25",
                mew=0.8, zorder=4)
        if facet:
            ax.set_title(_key_text(sweep, [facet], [fv]))
        ax.set_xlabel(label(sweep, x) + (" ↓" if x_dir == "min" else " ↑"))
        if fig.get("logx"):
            _log(ax, "x", part[f"{x}_mean"].tolist())
        if fig.get("logy"):
            _log(ax, "y", part[f"{y}_mean"].tolist())
    axs[0].set_ylabel(label(sweep, y) + (" ↓" if y_dir == "min" else " ↑"))
    handles["Pareto front"] = Line2D([], [], color="0.25", ls="--", lw=0.9, marker="o", ms=7, mfc="none",
                                     mec="0.25", mew=0.8)
    _legend(f, handles, label(sweep, hue, unit=False) if hue else None)
    _finish(f, fig, partial, kind, n=pd.concat([st[f"{x}_n"], st[f"{y}_n"]]),
            over=_over(sweep, _pooled(sweep, runs, keys)))
    cols = keys + [f"{x}_mean", "x_err", f"{y}_mean", "y_err", f"{x}_n", f"{y}_n", "planned", "partial"]
    table = st[st["on_front"]].sort_values(([facet] if facet else []) + [f"{x}_mean"])[cols]
    table = table.rename(columns={"x_err": f"{x}_{kind}", "y_err": f"{y}_{kind}"})
    return f, {"": table.reset_index(drop=True)}


def curves(sweep, fig, logged=None, **_):
    """A logged metric against step (or another logged key): mean line and error band per group."""
    x, y, hue, facet = fig.get("x", "step"), fig["y"], fig.get("hue"), fig.get("facet")
    _need(sweep, fig, ["hue", "facet"])
    runs = _runs(sweep, fig)
    data = logged(list(sweep.runs.index[sweep.runs["in_plan"]]), [x, y])[0] if logged else None
    if data is None or data.empty:
        raise Skip("no run has logged anything yet")
    for key, k in (("x", x), ("y", y)):
        if k not in data.columns:
            raise _not_logged(logged, data, fig, key)
    lines = list(dict.fromkeys(([hue] if hue else []) + _leftover(sweep, runs, {x, y, hue, facet, "seed"})))
    keys = ([facet] if facet else []) + lines
    data = data[data["run"].isin(runs.index)].dropna(subset=[x, y])
    if data.empty:
        raise Skip(f"no run{' matching where: ' + _where_text(fig) if fig.get('where') else ''} "
                   f"logged both {x!r} and {y!r}")
    # a run may log several values at one x (say, per iteration within a step): keep the last
    run = data["run"].to_numpy()
    xv = data[x].to_numpy()
    same = (run[1:] == run[:-1]) & (xv[1:] == xv[:-1])
    if same.any() or (np.diff(xv)[run[1:] == run[:-1]] < 0).any():
        data = data.drop_duplicates(["run", x], keep="last")
    tuples = _tuples(runs, keys)
    groups = _distinct(tuples)
    number = {g: i for i, g in enumerate(groups)}
    group_of = pd.Series([number[t] for t in tuples], index=runs.index)
    data = data.assign(_g=group_of.reindex(data["run"]).to_numpy())
    g = data.groupby(["_g", x], sort=True)[y]
    agg = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()
    kind = fig.get("error", sweep.analysis["error"])
    agg["err"] = {"std": agg["std"], "sem": agg["std"] / np.sqrt(agg["n"]),
                  "ci95": agg["std"] / np.sqrt(agg["n"]) * agg["n"].map(lambda n: t975(n - 1)),
                  "none": agg["std"] * np.nan}[kind]
    planned = runs.groupby(group_of, sort=False).size()
    logged = data.groupby("_g")["run"].nunique()
    hue_vals = _order([grp[keys.index(hue)] for grp in groups]) if hue else [None]
    facet_vals = _order([grp[0] for grp in groups]) if facet else [None]
    f, axs = _axes(len(facet_vals), sharey=_shared_y(fig))
    handles, partial = {}, False
    rests = _rests([grp[1:] if facet else grp for grp in groups], hue)
    for ax, fv in zip(axs, facet_vals):
        for gi, grp in enumerate(groups):
            if facet and grp[0] is not fv and grp[0] != fv:
                continue
            a = agg[agg["_g"] == gi]
            if a.empty:
                continue
            combo = grp[1:] if facet else grp
            color, _, ls, text = _line_style(sweep, lines, hue, combo, hue_vals, rests, y)
            ax.plot(a[x], a["mean"], color=color, ls=ls, lw=1.1)
            if kind != "none":
                ax.fill_between(a[x], a["mean"] - a["err"], a["mean"] + a["err"], color=color, alpha=0.18, lw=0)
            n_runs, n_planned = int(logged.get(gi, 0)), int(planned.get(gi, 0))
            if n_runs < n_planned:
                partial = True
                text += f" ({n_runs}/{n_planned} runs {PARTIAL})"
            handles.setdefault(text, Line2D([], [], color=color, ls=ls))
        if facet:
            ax.set_title(_key_text(sweep, [facet], [fv]))
        ax.set_xlabel(label(sweep, x))
        if fig.get("logx"):
            _log(ax, "x", agg[x].tolist())
        elif pd.api.types.is_numeric_dtype(agg[x]) and np.all(np.mod(agg[x].to_numpy(dtype=float), 1) == 0):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))   # 0, 5, 10: never 2.5
        if fig.get("logy"):
            _log(ax, "y", agg["mean"].tolist())
    axs[0].set_ylabel(label(sweep, y))
    if len(handles) > 1 or hue:
        _legend(f, handles, _legend_title(sweep, lines))
    n, over = agg["n"], _over(sweep, _pooled(sweep, runs, keys))
    word = ("line: one run per point (n = 1): no band" if _one_each(n) else
            f"line: mean over {over}; band: ± {ERROR_WORDS[kind].split(' ± ')[-1]} ({_n_text(n)})"
            if kind != "none" else f"line: mean over {over} ({_n_text(n)})")
    if partial:
        word += f"; {PARTIAL}: fewer runs have logged than planned"
    _finish(f, fig, False, kind, note=False, extra=word)
    return f, {}


def heatmap(sweep, fig, **_):
    """A metric over two axes: one cell per (x, y) with its mean (± std when there is room)."""
    x, y, z, facet = fig["x"], fig["y"], fig["z"], fig.get("facet")
    _need(sweep, fig, ["x", "y", "z", "facet"], numeric=["z"])
    runs = _runs(sweep, fig)
    extra = _leftover(sweep, runs, {x, y, z, facet, "seed"})
    keys = ([facet] if facet else []) + extra + [y, x]
    st = _point_stats(runs, keys, [z])
    panel_keys = ([facet] if facet else []) + extra
    panels = _distinct(_tuples(st, panel_keys)) if panel_keys else [()]
    xs, ys = _order(st[x].tolist()), _order(st[y].tolist())
    f, axs = _axes(len(panels), sharey=True)
    vals = st[f"{z}_mean"].to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    if not len(finite):
        raise Skip(f"no finished run has {z!r}")
    vmin, vmax = float(finite.min()), float(finite.max())
    annotate = fig.get("annotate", len(xs) * len(ys) <= 100)
    with_std = annotate and len(xs) <= 6 and bool(np.isfinite(st[f"{z}_std"].to_numpy(dtype=float)).any())
    image = None
    for ax, pv in zip(axs, panels):
        part = _match(st, panel_keys, pv)
        grid = np.full((len(ys), len(xs)), np.nan)
        for _, r in part.iterrows():
            i, j = ys.index(_norm(r[y])), xs.index(_norm(r[x]))
            grid[i, j] = r[f"{z}_mean"]
            if annotate and np.isfinite(r[f"{z}_mean"]):
                text = f"{r[f'{z}_mean']:.3g}"
                if with_std and np.isfinite(r[f"{z}_std"]):
                    text += f"\n±{r[f'{z}_std']:.2g}"
                if r["partial"]:
                    text += PARTIAL
                shade = (r[f"{z}_mean"] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if shade < 0.55 else "black")
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap=fig.get("cmap", "viridis"),
                          vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(len(xs)), tick_texts(xs))
        ax.set_yticks(range(len(ys)), tick_texts(ys))
        ax.grid(False)
        ax.tick_params(length=0)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel(label(sweep, x))
        if panel_keys:
            ax.set_title(_key_text(sweep, panel_keys, pv))
    axs[0].set_ylabel(label(sweep, y))
    bar = f.colorbar(image, ax=list(axs), shrink=0.9, pad=0.02)
    bar.set_label(label(sweep, z))
    bar.outline.set_visible(False)
    over = _over(sweep, _pooled(sweep, runs, keys))
    text = f"cells: mean{' ± std' if with_std else ''} over {over} ({_n_text(st[f'{z}_n'])})"
    if st["partial"].any():
        text += f"; {PARTIAL}: fewer finished runs than planned"
    _finish(f, fig, False, "none", note=False, extra=text)
    return f, {}


def hist(sweep, fig, logged=None, **_):
    """Distributions: a list-valued metric pooled over each hue group's runs (or a scalar metric's
    values across runs)."""
    y, hue, facet = fig["y"], fig.get("hue"), fig.get("facet")
    _need(sweep, fig, ["hue", "facet"])
    runs = _runs(sweep, fig)
    done = runs[runs["state"] == DONE]

    scalar = y in runs.columns
    from_logs = {}
    if not scalar and logged and not any(y in sweep.lists.get(r, {}) for r in runs["run_id"]):
        # a list only metrics.jsonl holds (say, weights logged at the end): the last one each run logged
        from_logs = {runs.at[p, "run_id"]: ls for p, ls in logged(list(runs.index), [])[1].items()}

    def values_of(rid):
        v = sweep.lists.get(rid, {}).get(y)
        return from_logs.get(rid, {}).get(y) if v is None else v

    if not scalar and not any(values_of(r) is not None for r in runs["run_id"]):
        _no_such_list(sweep, y, logged)
        raise Skip(f"no run{' matching where: ' + _where_text(fig) if fig.get('where') else ''} "
                   f"has a list {y!r} in result.json or metrics.jsonl")
    pool = runs if not scalar else done
    groups = ([facet] if facet else []) + ([hue] if hue else [])
    combos = _distinct(_tuples(pool, groups)) if groups else [()]
    data, n_runs = {}, {}
    for combo in combos:
        sel = _match(pool, groups, combo)
        if scalar:
            per_run = [np.asarray([v], dtype=float) for v in sel[y]]
        else:
            per_run = [np.asarray([float(t) for t in _flat(values_of(r))], dtype=float) for r in sel["run_id"]
                       if values_of(r) is not None]
        per_run = [v[np.isfinite(v)] for v in per_run]
        per_run = [v for v in per_run if len(v)]
        if per_run:
            data[combo], n_runs[combo] = np.concatenate(per_run), len(per_run)
    if not data:
        raise Skip(f"no finite values of {y!r}")
    every = np.concatenate(list(data.values()))
    edges = np.histogram_bin_edges(every, bins=fig.get("bins", 30))
    facet_vals = _order([c[0] for c in data]) if facet else [None]
    hue_vals = _order([c[-1] for c in data]) if hue else [None]
    f, axs = _axes(len(facet_vals))
    density = fig.get("density", True)
    handles = {}
    for ax, fv in zip(axs, facet_vals):
        for combo, vals in data.items():
            if facet and combo[0] is not fv and combo[0] != fv:
                continue
            hi = hue_vals.index(combo[-1]) if hue else 0
            color = PALETTE[hi % len(PALETTE)]
            ax.hist(vals, bins=edges, density=density, histtype="stepfilled", color=color, alpha=0.25, lw=0)
            ax.hist(vals, bins=edges, density=density, histtype="step", color=color, lw=1.1)
            if hue:
                handles.setdefault(value_text(combo[-1]), Line2D([], [], color=color, lw=1.1))
        if facet:
            ax.set_title(_key_text(sweep, [facet], [fv]))
        ax.set_xlabel(label(sweep, y))
        if fig.get("logy"):
            ax.set_yscale("log")
    axs[0].set_ylabel("Density" if density else "Count")
    if hue:
        _legend(f, handles, label(sweep, hue, unit=False))
    n = list(n_runs.values())
    what = "one value per finished run" if scalar else "values pooled over the runs"
    per = f"{min(n)}" if min(n) == max(n) else f"{min(n)}–{max(n)}"
    _finish(f, fig, False, "none", note=False,
            extra=f"{'each histogram' if len(n) > 1 else 'histogram'}: {what} (n = {sum(n)} runs"
                  + (f", {per} per histogram)" if len(n) > 1 else ")"))
    return f, {}


def _no_such_list(sweep, y, logged):
    """A FigureError when `y` names nothing of the sweep (no final metric, list or logged list)
    though runs have finished: a misspelling; nothing while no run has, as the list may still come."""
    if not (sweep.runs["state"] == DONE).any():
        return
    known = {m for lists in sweep.lists.values() for m in lists}
    if logged:
        known |= {m for lists in logged(list(sweep.runs.index), [])[1].values() for m in lists}
    if y in known:
        return
    options = sorted(known) + [m for m in sweep.metrics if m not in known]
    raise FigureError(f"{y!r} is no list metric of any run{schema.did_you_mean(y, options)}; lists: "
                      f"{', '.join(sorted(known)) or 'none'}", "y")


def _flat(v):
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _flat(x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v


def _one_each(n) -> bool:
    """Does every point stand for one run (no spread to show, "mean ± std (n = 1)" would mislead)?"""
    n = [int(v) for v in n if v == v and v > 0] if n is not None else []
    return bool(n) and max(n) == 1


def _n_text(n) -> str:
    n = [int(v) for v in n if v == v and v > 0] if n is not None else []
    if not n:
        return "n = 0"
    return f"n = {min(n)}" if min(n) == max(n) else f"n = {min(n)}–{max(n)} per point"


def _finish(f, fig, partial, kind, note=True, n=None, extra=None, over="seeds", bars="error bars"):
    """Title, and the caption under the axes: what the error bars are (std, s.e.m. or CI, over
    what, and n), the `where:` filter, and what hollow markers mean."""
    if fig.get("title"):         # above the figure's top edge: over a legend there, never on it
        f.suptitle(fig["title"], fontsize=9, y=1.0, va="bottom")
    parts = []
    if extra:
        parts.append(extra)
    if note:
        parts.append(f"one run per point (n = 1): no {bars}" if _one_each(n) else
                     f"{bars}: {ERROR_WORDS[kind]} over {over} ({_n_text(n)})" if kind != "none"
                     else f"points: mean over {over} ({_n_text(n)})")
        if partial:
            parts.append("hollow: fewer finished runs than planned")
    if fig.get("where"):
        parts.append(f"where: {_where_text(fig)}")
    if parts:
        _note(f, parts)


def logged_hist(sweep, fig, logged=None, **_):
    """Histograms a run logged already binned (`counts` and `edges`: list-valued keys of the same
    metrics.jsonl lines): one panel per value of the logged key `facet`, a line per value of the
    logged key `hue` (bars when there is no hue). A run's last line per (facet, hue) counts; the
    lines of several runs with the same edges are averaged as densities (n says how many)."""
    ck, ek, facet, hue = fig["counts"], fig["edges"], fig.get("facet"), fig.get("hue")
    runs = _runs(sweep, fig)
    wanted = [k for k in (ck, ek, facet, hue) if k]
    data = logged(list(runs.index), wanted)[0] if logged else None
    if data is None or data.empty:
        raise Skip("no run has logged anything yet")
    for key in ("counts", "edges", "facet", "hue"):
        if fig.get(key) and fig[key] not in data.columns:
            raise _not_logged(logged, data, fig, key)
    data = data[data["run"].isin(runs.index)]
    data = data[data[ck].notna() & data[ek].notna()]
    if data.empty:
        raise Skip(f"no run{' matching where: ' + _where_text(fig) if fig.get('where') else ''} "
                   f"logged both {ck!r} and {ek!r} on one line")
    group = ["run"] + [k for k in (facet, hue) if k]
    data = data.drop_duplicates(group, keep="last")
    facet_vals = _order(data[facet].tolist()) if facet else [None]
    hue_vals = _order(data[hue].tolist()) if hue else [None]
    f, axs = _axes(len(facet_vals), sharey=False)
    density = fig.get("density", True)
    handles, ns = {}, []
    for ax, fv in zip(axs, facet_vals):
        part = _match(data, [facet], [fv]) if facet else data
        for hi, hv in enumerate(hue_vals):
            sel = _match(part, [hue], [hv]) if hue else part
            if sel.empty:
                continue
            color = PALETTE[hi % len(PALETTE)] if hue else PALETTE[0]
            by_edges = {}
            for c, e in zip(sel[ck], sel[ek]):
                c, e = np.asarray(c, dtype=float), np.asarray(e, dtype=float)
                if len(e) != len(c) + 1:
                    raise FigureError(f"{ek!r} must have one more value than {ck!r} (got {len(e)} and {len(c)})",
                                      "edges")
                if density:
                    total = np.nansum(c) * np.diff(e)
                    c = np.divide(c, np.nansum(c) * np.diff(e), out=np.zeros_like(c), where=total > 0)
                by_edges.setdefault(tuple(e), []).append(c)
            for e, cs in by_edges.items():
                ns.append(len(cs))
                mean = np.mean(cs, axis=0)
                if hue:
                    ax.stairs(mean, e, color=color, lw=1.1)
                else:
                    ax.stairs(mean, e, color=color, fill=True, alpha=0.6)
            if hue:
                handles.setdefault(value_text(hv), Line2D([], [], color=color, lw=1.1))
        if facet:
            ax.set_title(f"{label(sweep, facet, unit=False)} = {value_text(fv)}")
        ax.set_xlabel(label(sweep, ck, unit=False) if ck not in sweep.analysis["labels"] else label(sweep, ck))
        if fig.get("logy"):
            ax.set_yscale("log")
    axs[0].set_ylabel("Density" if density else "Count")
    if hue:
        _legend(f, handles, label(sweep, hue, unit=False))
    _finish(f, fig, False, "none", note=False,
            extra=f"each {'line' if hue else 'histogram'}: {'density' if density else 'counts'} "
                  f"averaged over the runs that logged it ({_n_text(ns)}); a run's last line counts")
    return f, {}


def logged_heatmap(sweep, fig, logged=None, **_):
    """A list a run logged on several lines, as a heatmap: a row per value of the logged scalar key
    `y` (say, an iteration), a column per position of the list-valued key `z` (say, a weight per
    head); a run's last line per row counts, and each cell is the mean over the runs kept by `where`."""
    y, z = fig["y"], fig["z"]
    runs = _runs(sweep, fig)
    data = logged(list(runs.index), [y, z])[0] if logged else None
    if data is None or data.empty:
        raise Skip("no run has logged anything yet")
    for key in ("y", "z"):
        if fig[key] not in data.columns:
            raise _not_logged(logged, data, fig, key)
    data = data[data["run"].isin(runs.index)]
    data = data[data[y].notna() & data[z].notna()].drop_duplicates(["run", y], keep="last")
    if data.empty:
        raise Skip(f"no run{' matching where: ' + _where_text(fig) if fig.get('where') else ''} "
                   f"logged both {y!r} and {z!r} on one line")
    ys = _order(data[y].tolist())
    width = max(len(v) for v in data[z])
    grid, ns = np.full((len(ys), width), np.nan), []
    for i, yv in enumerate(ys):
        rows = [np.asarray(v, dtype=float) for v in _match(data, [y], [yv])[z]]
        if any(len(r) != width for r in rows):
            raise FigureError(f"the lists of {z!r} differ in length", "z")
        grid[i] = np.mean(rows, axis=0)
        ns.append(len(rows))
    f, axs = _axes(1)
    ax = axs[0]
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap=fig.get("cmap", "viridis"), interpolation="nearest")
    if fig.get("annotate", grid.size <= 100):
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for (i, j), v in np.ndenumerate(grid):
            shade = (v - lo) / (hi - lo) if hi > lo else 0.5
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6, color="white" if shade < 0.55 else "black")
    ax.set_xticks(range(width), [str(j) for j in range(width)])
    ax.set_yticks(range(len(ys)), tick_texts(ys))
    ax.grid(False)
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(label(sweep, z))
    ax.set_ylabel(label(sweep, y))
    bar = f.colorbar(image, ax=[ax], shrink=0.9, pad=0.02)
    bar.outline.set_visible(False)
    _finish(f, fig, False, "none", note=False,
            extra=f"cells: mean over the runs that logged the row ({_n_text(ns)}); a run's last line per {y} counts")
    return f, {}


KINDS = {"logged_heatmap": logged_heatmap, "logged_hist": logged_hist, "ladder": ladder, "line": line, "pareto": pareto, "curves": curves, "heatmap": heatmap, "hist": hist}


def draw(sweep, fig, **data):
    """(Figure, {suffix: table}) for one entry of analysis.figures; raises Skip when it cannot be drawn."""
    with rc_context(STYLE):
        return KINDS[fig["kind"]](sweep, fig, **data)


def _pin(f):
    """Fix the layout where constrained layout puts it, legends included. Saving with
    bbox_inches="tight" re-anchors a figure legend to the cropped area's edge: a legend above the
    axes would move up onto the title, which lies above the figure's top edge (see _finish)."""
    if not isinstance(f.get_layout_engine(), ConstrainedLayoutEngine):
        return                           # pinned already (or not ours)
    f.draw_without_rendering()
    to_fig = f.transFigure.inverted()
    for leg in f.legends:
        leg.set_bbox_to_anchor(leg.get_window_extent().transformed(to_fig), transform=f.transFigure)
        leg.set_loc("center")            # centred in its own box: where it was
    f.set_layout_engine("none")


def to_bytes(f, fmt) -> bytes:
    """The figure as PNG or PDF bytes with nothing in them that changes from run to run."""
    buf = io.BytesIO()
    meta = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
    with rc_context(STYLE):
        _pin(f)
        f.savefig(buf, format=fmt, metadata=meta, bbox_inches="tight", pad_inches=0.03)
    return buf.getvalue()
