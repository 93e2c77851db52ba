"""analysis.figures: every kind draws from a synthetic sweep with labelled axes, legends and error
bars; the Pareto front matches brute force over the group means; the same data gives the same bytes."""
import json
import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from analysis import curves as curves_mod
from analysis import figures
from analysis.load import load
from analysis.summary import summary
from tests.sweepdir_factory import grid, write_sweep
from tests.analysis.test_pareto import brute_force


def make(tmp_path, analysis, states=None):
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1, 2], "lam": [0.001, 0.01]}, seeds=[1, 2, 3])
    rng = np.random.default_rng(0)
    for r in runs:
        c = r["config"]
        acc = 0.6 + 0.05 * c["k"] - (0.1 if c["method"] == "dfa" else 0) + 0.01 * rng.standard_normal()
        r["metrics"] = {"test_acc": acc, "cost": 1.0 + c["k"] + 0.1 * rng.standard_normal(),
                        "weights": list(rng.random(5))}
        r["log"] = [{"step": s, "time": 100.0 + s, "loss": 2.0 / (s + 1 + c["k"])} for s in range(20)]
    for i, state in (states or {}).items():
        runs[i]["state"] = state
    return load(write_sweep(tmp_path / "s", runs, analysis=analysis))


def logged_for(sweep):
    """aggregate's reader of the logs, able to list every logged key (`columns`) for did-you-means."""
    from analysis.aggregate import logged_reader
    reader = logged_reader(sweep)
    if not hasattr(reader, "columns"):
        def columns():
            names = {}
            for rid in sweep.runs["run_id"]:
                path = sweep.dir / "runs" / rid / "metrics.jsonl"
                for line in path.read_text().splitlines() if path.exists() else []:
                    names.update(dict.fromkeys(json.loads(line)))
            return list(names)
        reader.columns = columns
    return reader


ANALYSIS = {
    "group_by": ["method", "k", "lam"],
    "labels": {"test_acc": "Test accuracy", "k": "Trainable blocks", "cost": "Cost"},
    "units": {"cost": "GFLOPs"},
}


def draw(sweep, fig):
    return figures.draw(sweep, fig, logged=logged_for(sweep))


def texts(f):
    out = []
    for ax in f.axes:
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    for leg in f.legends:
        out += [t.get_text() for t in leg.get_texts()] + [leg.get_title().get_text()]
    out += [t.get_text() for t in f.texts]
    return out


def test_ladder_has_labelled_axes_one_line_per_hue_and_std_error_bars(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "where": {"lam": 0.001}})
    ax = f.axes[0]
    assert ax.get_xlabel() == "Trainable blocks" and ax.get_ylabel() == "Test accuracy"
    assert [t.get_text() for t in f.legends[0].get_texts()] == ["bp", "dfa"]
    assert f.legends[0].get_title().get_text() == "method"
    # the bars are the std over seeds of the group: check bp, k=0
    runs = sweep.runs[(sweep.runs["method"] == "bp") & (sweep.runs["k"] == 0) & (sweep.runs["lam"] == 0.001)]
    container = ax.containers[0]
    seg = container.lines[2][0].get_segments()[0]
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * runs["test_acc"].std(ddof=1))


def test_a_group_key_the_figure_does_not_place_splits_lines_instead_of_being_pooled(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method"})
    labels = [t.get_text() for t in f.legends[0].get_texts()]
    assert labels == ["bp, 0.001", "bp, 0.01", "dfa, 0.001", "dfa, 0.01"]
    assert f.legends[0].get_title().get_text() == "method, lam"


def test_line_with_logx_uses_a_log_axis_and_units(tmp_path):
    sweep = make(tmp_path, {**ANALYSIS, "units": {"cost": "GFLOPs", "lam": "1"}})
    f, _ = draw(sweep, {"kind": "line", "x": "lam", "y": "cost", "hue": "method", "logx": True,
                        "where": {"k": 1}})
    assert f.axes[0].get_xscale() == "log" and f.axes[0].get_ylabel() == "Cost (GFLOPs)"


def test_pareto_front_is_the_brute_force_front_of_the_group_means(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    for x_dir, y_dir in [("min", "max"), ("max", "max"), ("min", "min")]:
        f, tables = draw(sweep, {"kind": "pareto", "x": "cost", "y": "test_acc", "hue": "method",
                                 "x_dir": x_dir, "y_dir": y_dir})
        means = sweep.runs.groupby(["method", "k", "lam"], sort=False)[["cost", "test_acc"]].mean().reset_index()
        mask = brute_force(means["cost"].tolist(), means["test_acc"].tolist(), x_dir, y_dir)
        want = sorted(zip(means["method"][mask], means["k"][mask], means["lam"][mask]))
        got = sorted(zip(tables[""]["method"], tables[""]["k"], tables[""]["lam"]))
        assert got == want
        assert f.axes[0].get_xlabel().startswith("Cost (GFLOPs)")
        assert "Pareto front" in texts(f)


def test_curves_draws_a_mean_line_and_a_std_band_per_group(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {"kind": "curves", "y": "loss", "hue": "method", "where": {"k": 0, "lam": 0.01}})
    ax = f.axes[0]
    assert ax.get_xlabel() == "Step" and ax.get_ylabel() == "loss"
    assert len(ax.lines) == 2 and len(ax.collections) == 2         # two means, two bands
    assert np.allclose(ax.lines[0].get_ydata(), [2.0 / (s + 1) for s in range(20)])


def test_curves_marks_groups_where_fewer_runs_logged_than_planned(tmp_path):
    sweep = make(tmp_path, ANALYSIS, states={0: "missing"})
    f, _ = draw(sweep, {"kind": "curves", "y": "loss", "hue": "method", "where": {"k": 0, "lam": 0.001}})
    assert any("2/3 runs" in t for t in texts(f)), texts(f)


def test_heatmap_and_hist(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {"kind": "heatmap", "x": "k", "y": "lam", "z": "test_acc", "where": {"method": "bp"}})
    assert f.axes[0].get_xlabel() == "Trainable blocks" and f.axes[0].get_ylabel() == "lam"
    assert any(ax.get_ylabel() == "Test accuracy" for ax in f.axes[1:])         # the colour bar
    f, _ = draw(sweep, {"kind": "hist", "y": "weights", "hue": "method"})
    assert f.axes[0].get_ylabel() == "Density" and len(f.legends) == 1


def test_partial_groups_are_drawn_hollow_with_a_note(tmp_path):
    sweep = make(tmp_path, ANALYSIS, states={0: "failed"})
    f, _ = draw(sweep, {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "where": {"lam": 0.001}})
    assert any("fewer finished runs than planned" in t for t in texts(f))


@pytest.mark.parametrize("fig, words", [
    ({"kind": "ladder", "x": "k", "y": "method"}, "not numeric"),
    ({"kind": "hist", "y": "weights", "where": {"method": "bp", "k": 0, "lam": 0.001}, "name": "x"}, None),
    ({"kind": "pareto", "x": "cost", "y": "test_acc", "where": {"k": 7}}, "no planned run matches where: k = 7"),
])
def test_a_figure_that_cannot_be_drawn_says_why(tmp_path, fig, words):
    sweep = make(tmp_path, ANALYSIS, states={0: "failed", 1: "failed", 2: "pending"})
    with pytest.raises(figures.Skip, match=words or "no run matching where: method = bp, k = 0, lam = 0.001 has a list"):
        draw(sweep, fig)


@pytest.mark.parametrize("fig, words", [
    ({"kind": "ladder", "x": "kk", "y": "test_acc"}, "did you mean 'k'"),
    ({"kind": "ladder", "x": "k", "y": "test_ac"}, "did you mean 'test_acc'"),
    ({"kind": "curves", "y": "los"}, "logged by no run"),
    ({"kind": "pareto", "x": "k", "y": "test_acc"}, "averages it away"),
    ({"kind": "ladder", "x": "k", "y": "test_acc", "where": {"lamb": 1}}, "did you mean 'lam'"),
])
def test_a_mistake_in_a_figure_is_an_error_with_a_did_you_mean(tmp_path, fig, words):
    sweep = make(tmp_path, ANALYSIS)
    with pytest.raises(figures.FigureError, match=words):
        draw(sweep, fig)


def test_error_bars_and_where_are_said_on_the_figure(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "error": "ci95",
                        "where": {"lam": 0.001}})
    caption = " ".join(texts(f))
    assert "mean ± 95% CI over seeds" in caption and "n = " in caption and "where: lam = 0.001" in caption


def test_same_data_same_bytes_and_no_timestamps(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    fig = {"kind": "pareto", "x": "cost", "y": "test_acc", "hue": "method"}
    png = [figures.to_bytes(draw(sweep, fig)[0], "png") for _ in range(2)]
    pdf = [figures.to_bytes(draw(sweep, fig)[0], "pdf") for _ in range(2)]
    assert png[0] == png[1] and pdf[0] == pdf[1]
    assert png[0].startswith(b"\x89PNG") and pdf[0].startswith(b"%PDF")
    assert b"tIME" not in png[0] and b"Software" not in png[0]
    assert b"CreationDate" not in pdf[0] and b"ModDate" not in pdf[0] and b"Producer" not in pdf[0]


def test_names_are_unique_file_stems():
    figs = [{"kind": "ladder", "x": "k", "y": "a"}, {"kind": "ladder", "x": "k", "y": "b"},
            {"kind": "pareto", "x": "c", "y": "a"}, {"kind": "hist", "y": "w", "name": "weights"}]
    assert figures.names(figs) == ["ladder_a_vs_k", "ladder_b_vs_k", "pareto", "weights"]


def test_summary_and_figures_agree_on_means(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    table = summary(sweep)
    _, tables = draw(sweep, {"kind": "pareto", "x": "cost", "y": "test_acc"})
    for _, row in tables[""].iterrows():
        match = table[(table["method"] == row["method"]) & (table["k"] == row["k"]) & (table["lam"] == row["lam"])]
        assert math.isclose(match["test_acc_mean"].iloc[0], row["test_acc_mean"])


# ---------------------------------------------------------------- figures that never mislead
# (a) every error bar or band says what it is (std, s.e.m., 95% CI), over what, and n;
# (b) a `where:` filter is printed on the figure; (c) an axis the grouping averages away is an
# error; (d) a misspelt key or metric is an error with a did-you-mean, naming the figure's key;
# (e) a figure with nothing to draw is a Skip that says why; (f) curves draw mean and a band.
# Checked on the matplotlib Figure: legend texts, the caption (figure texts), collections.

def caption(f):
    """The caption under the axes (figure texts but the title), its wrapped lines joined."""
    title = f._suptitle
    return " ".join(t.get_text().replace("\n", " ") for t in f.texts if t is not title)


def legend_texts(f):
    return [t.get_text() for leg in f.legends for t in leg.get_texts()]


def make_binned(tmp_path):
    """A sweep whose runs log histograms already binned (for logged_hist)."""
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2])
    for r in runs:
        r["metrics"] = {"test_acc": 0.5}
        r["log"] = [{"step": rep, "ckpt": c, "counts": [1, 2 + c, 3], "edges": [0, 1, 2, 3]}
                    for rep in (0, 1) for c in (1, 2)]
    return load(write_sweep(tmp_path / "binned", runs, analysis={"group_by": ["method", "k"]}))


LH = {"kind": "logged_hist", "counts": "counts", "edges": "edges", "facet": "step", "hue": "ckpt"}

EVERY_KIND = {
    "ladder": {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method"},
    "line": {"kind": "line", "x": "lam", "y": "cost", "hue": "method", "logx": True},
    "pareto": {"kind": "pareto", "x": "cost", "y": "test_acc", "hue": "method"},
    "curves": {"kind": "curves", "y": "loss", "hue": "method"},
    "heatmap": {"kind": "heatmap", "x": "k", "y": "lam", "z": "test_acc", "facet": "method"},
    "hist": {"kind": "hist", "y": "weights", "hue": "method"},
    "logged_hist": LH,
}


def sweep_for(tmp_path, kind, **kw):
    return make_binned(tmp_path) if kind == "logged_hist" else make(tmp_path, ANALYSIS, **kw)


# (a) ----------------------------------------------------------------

@pytest.mark.parametrize("kind, error, words", [
    ("ladder", None, "error bars: mean ± std over seeds (n = 3)"),
    ("ladder", "ci95", "error bars: mean ± 95% CI over seeds (n = 3)"),
    ("line", "sem", "error bars: mean ± s.e.m. over seeds (n = 3)"),
    ("pareto", "ci95", "error bars: mean ± 95% CI over seeds (n = 3)"),
    ("curves", None, "line: mean over seeds; band: ± std (n = 3)"),
    ("curves", "sem", "line: mean over seeds; band: ± s.e.m. (n = 3)"),
    ("curves", "none", "line: mean over seeds (n = 3)"),
    ("heatmap", None, "cells: mean ± std over seeds (n = 3)"),
    ("hist", None, "each histogram: values pooled over the runs (n = 36 runs, 18 per histogram)"),
    ("logged_hist", None, "density averaged over the runs that logged it (n = 8)"),
])
def test_every_kind_says_what_its_error_bars_are_and_n(tmp_path, kind, error, words):
    fig = {**EVERY_KIND[kind], **({"error": error} if error else {})}
    sweep = sweep_for(tmp_path, kind)
    f, _ = draw(sweep, fig)
    assert words in caption(f), caption(f)
    if kind == "ladder":
        assert "where" not in caption(f)          # nothing is said that is not so


def test_the_bars_are_what_the_caption_says(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    runs = sweep.runs[(sweep.runs["method"] == "bp") & (sweep.runs["k"] == 0) & (sweep.runs["lam"] == 0.001)]
    sd, n = runs["test_acc"].std(ddof=1), len(runs)
    for error, half in [("std", sd), ("sem", sd / math.sqrt(n)), ("ci95", 4.302652729749464 * sd / math.sqrt(n))]:
        f, _ = draw(sweep, {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "error": error,
                            "where": {"lam": 0.001}})
        seg = f.axes[0].containers[0].lines[2][0].get_segments()[0]
        assert seg[1][1] - seg[0][1] == pytest.approx(2 * half), error
        assert figures.ERROR_WORDS[error] in caption(f)


def test_points_pooled_over_a_key_the_grouping_leaves_out_say_so(tmp_path):
    sweep = make(tmp_path, {**ANALYSIS, "group_by": ["method", "k"]})          # lam varies, is pooled
    for fig in (EVERY_KIND["ladder"], EVERY_KIND["pareto"], {**EVERY_KIND["heatmap"], "y": "method", "facet": None}):
        fig = {k: v for k, v in fig.items() if v is not None}
        f, _ = draw(sweep, fig)
        assert "over seeds and lam (n = 6)" in caption(f), (fig["kind"], caption(f))
    f, _ = draw(sweep, {**EVERY_KIND["curves"], "where": {"k": 0}})
    assert "line: mean over seeds and lam; band: ± std (n = 6)" in caption(f)
    f, _ = draw(sweep, {**EVERY_KIND["ladder"], "where": {"lam": 0.01}})      # fixed by where: not pooled
    assert "over seeds (n = 3)" in caption(f)


def test_partial_groups_show_their_own_n(tmp_path):
    sweep = make(tmp_path, ANALYSIS, states={0: "failed", 1: "pending"})
    f, _ = draw(sweep, {**EVERY_KIND["ladder"], "where": {"lam": 0.001}})
    assert "(n = 1–3 per point)" in caption(f) and "hollow: fewer finished runs than planned" in caption(f)
    f, _ = draw(sweep, {**EVERY_KIND["heatmap"], "where": {"method": "bp"}})
    assert "(n = 1–3 per point)" in caption(f) and "†: fewer finished runs than planned" in caption(f)
    f, _ = draw(sweep, {**EVERY_KIND["hist"], "where": {"k": 0, "lam": 0.001}})
    assert "(n = 4 runs, 1–3 per histogram)" in caption(f)       # the runs with a list, not the planned ones


# (b) ----------------------------------------------------------------

@pytest.mark.parametrize("kind", list(EVERY_KIND))
def test_every_kind_prints_its_where_filter(tmp_path, kind):
    where, want = {"k": [1, 2]}, "where: k = 1 or 2"
    if kind in ("heatmap", "logged_hist"):
        where, want = {"method": "dfa"}, "where: method = dfa"
    f, _ = draw(sweep_for(tmp_path, kind), {**EVERY_KIND[kind], "where": where})
    assert want in caption(f), caption(f)


def test_where_filters_what_is_drawn(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    f, _ = draw(sweep, {**EVERY_KIND["ladder"], "where": {"k": [1, 2], "lam": 0.01}})
    assert sorted(set(np.concatenate([line.get_xdata() for line in f.axes[0].lines]))) == [1, 2]
    assert caption(f).endswith("where: k = 1 or 2, lam = 0.01")


# (c) ----------------------------------------------------------------

@pytest.mark.parametrize("fig, key", [
    ({"kind": "pareto", "x": "k", "y": "test_acc", "hue": "method"}, "x"),
    ({"kind": "pareto", "x": "cost", "y": "lam", "hue": "method"}, "y"),
    ({"kind": "line", "x": "k", "y": "lam", "hue": "method"}, "y"),
    ({"kind": "ladder", "x": "k", "y": "lam"}, "y"),
])
def test_an_axis_the_grouping_averages_away_is_an_error(tmp_path, fig, key):
    sweep = make(tmp_path, ANALYSIS)
    with pytest.raises(figures.FigureError, match="averages it away") as e:
        draw(sweep, fig)
    assert e.value.key == key and str(e.value).startswith(f"{key}: ")
    f, _ = draw(sweep, {**fig, "where": {fig[key]: sweep.runs[fig[key]].iloc[0]}})   # fixed: one value, fine
    assert f.axes


# (d) ----------------------------------------------------------------

@pytest.mark.parametrize("kind, key, wrong, right", [
    ("ladder", "x", "kk", "k"), ("ladder", "y", "test_ac", "test_acc"), ("ladder", "hue", "methd", "method"),
    ("ladder", "facet", "lamm", "lam"), ("line", "y", "cots", "cost"),
    ("pareto", "x", "cots", "cost"), ("pareto", "y", "test_acc_", "test_acc"), ("pareto", "hue", "metod", "method"),
    ("curves", "y", "los", "loss"), ("curves", "x", "stepp", "step"), ("curves", "hue", "methods", "method"),
    ("curves", "facet", "kk", "k"),
    ("heatmap", "x", "kk", "k"), ("heatmap", "y", "lamb", "lam"), ("heatmap", "z", "tst_acc", "test_acc"),
    ("heatmap", "facet", "methd", "method"),
    ("hist", "y", "weight", "weights"), ("hist", "hue", "methd", "method"),
    ("logged_hist", "counts", "count", "counts"), ("logged_hist", "edges", "edge", "edges"),
    ("logged_hist", "hue", "ckpt_", "ckpt"), ("logged_hist", "facet", "stp", "step"),
])
def test_a_misspelt_key_or_metric_is_an_error_naming_the_figure_key(tmp_path, kind, key, wrong, right):
    sweep = sweep_for(tmp_path, kind)
    with pytest.raises(figures.FigureError, match=f"did you mean '{right}'") as e:
        draw(sweep, {**EVERY_KIND[kind], key: wrong})
    assert e.value.key == key and repr(wrong) in e.value.message


@pytest.mark.parametrize("kind", list(EVERY_KIND))
def test_a_misspelt_where_key_is_an_error(tmp_path, kind):
    with pytest.raises(figures.FigureError, match="did you mean 'method'") as e:
        draw(sweep_for(tmp_path, kind), {**EVERY_KIND[kind], "where": {"metod": "bp"}})
    assert e.value.key == "where.metod"


def test_while_no_run_has_finished_an_unknown_metric_is_not_yet_an_error(tmp_path):
    sweep = make(tmp_path, ANALYSIS, states={i: "pending" for i in range(36)})
    for fig in ({"kind": "ladder", "x": "k", "y": "test_acc"}, {"kind": "hist", "y": "weights"}):
        with pytest.raises(figures.Skip, match="no run has finished yet|has a list"):
            draw(sweep, fig)
    with pytest.raises(figures.Skip, match="no run has finished yet.*did you mean 'k'"):   # a hint all the same
        draw(sweep, {"kind": "ladder", "x": "kk", "y": "test_acc"})


# (e) ----------------------------------------------------------------

@pytest.mark.parametrize("kind, fig, states, words", [
    ("ladder", {"where": {"method": "bp", "k": 0}}, range(6),
     "no finished run matching where: method = bp, k = 0 has a finite 'test_acc'"),
    ("ladder", {"where": {"method": "sgd"}}, (), "no planned run matches where: method = sgd "
                                                  "(the runs have method = bp or dfa)"),
    ("pareto", {"where": {"method": "bp", "k": 0}}, range(6), "no finished run has both 'cost' and 'test_acc'"),
    ("heatmap", {"where": {"method": "bp"}}, range(18), "no finished run has 'test_acc'"),
    ("hist", {"where": {"method": "bp"}}, range(18), "no run matching where: method = bp has a list 'weights'"),
    ("line", {"where": {"k": 5}}, (), "no planned run matches where: k = 5 (the runs have k = 0 or 1 or 2)"),
])
def test_a_figure_with_nothing_to_draw_says_why(tmp_path, kind, fig, states, words):
    sweep = make(tmp_path, ANALYSIS, states={i: "failed" for i in states})
    with pytest.raises(figures.Skip) as e:
        draw(sweep, {**EVERY_KIND[kind], **fig})
    assert words in str(e.value), str(e.value)


def test_curves_and_logged_hist_with_nothing_logged_say_why(tmp_path):
    sweep = make(tmp_path, ANALYSIS)
    for rid in sweep.runs["run_id"][sweep.runs["method"] == "dfa"]:
        (sweep.dir / "runs" / rid / "metrics.jsonl").unlink()
    with pytest.raises(figures.Skip, match="no run matching where: method = dfa logged both 'step' and 'loss'"):
        draw(sweep, {**EVERY_KIND["curves"], "where": {"method": "dfa"}})
    binned = make_binned(tmp_path)
    for rid in binned.runs["run_id"][binned.runs["method"] == "dfa"]:
        (binned.dir / "runs" / rid / "metrics.jsonl").write_text('{"step": 0, "counts": [1]}\n')
    with pytest.raises(figures.Skip, match="no run matching where: method = dfa logged both 'counts' and 'edges'"):
        draw(binned, {**LH, "where": {"method": "dfa"}})


def test_aggregate_prints_why_a_figure_was_not_drawn(tmp_path):
    from analysis.aggregate import aggregate
    analysis = {**ANALYSIS, "figures": [{**EVERY_KIND["pareto"], "where": {"method": "bp", "k": 0}, "name": "empty"},
                                        EVERY_KIND["ladder"]]}
    sweep = make(tmp_path, analysis, states={i: "failed" for i in range(6)})
    lines = []
    paths = aggregate(sweep.dir, formats="png", log=lines.append)
    assert [p.name for p in paths] == ["ladder.png"]
    assert "  - figure 'empty' (pareto): not drawn: no finished run has both 'cost' and 'test_acc'" in lines, lines


# (f) ----------------------------------------------------------------

def band_edges(collection):
    """{x: (low, high)} of a fill_between band."""
    out = {}
    for x, y in collection.get_paths()[0].vertices:
        lo, hi = out.get(x, (y, y))
        out[x] = (min(lo, y), max(hi, y))
    return out


@pytest.mark.parametrize("error", ["std", "ci95", "sem"])
def test_curves_band_is_the_spread_over_seeds_it_says(tmp_path, error):
    sweep = make(tmp_path, ANALYSIS, states={0: "missing"})          # bp, k=0, lam=0.001: 2 of 3 logged
    f, _ = draw(sweep, {"kind": "curves", "y": "loss", "hue": "method", "error": error,
                        "where": {"k": 0, "lam": 0.001}})
    ax = f.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2          # a mean and a band per group
    words = {"std": "std", "ci95": "95% CI", "sem": "s.e.m."}[error]
    assert f"band: ± {words} (n = 2–3 per point)" in caption(f)
    assert legend_texts(f) == ["bp (2/3 runs †)", "dfa"]           # the group fewer runs logged for
    for line_, band in zip(ax.lines, ax.collections):                # every seed logged 2 / (s + 1): no spread
        assert np.allclose(band.get_facecolor()[0][:3], to_rgb(line_.get_color()))   # the band of that line
        lo, hi = zip(*band_edges(band).values())
        assert np.allclose(lo, hi) and np.allclose(sorted(set(lo)), sorted(set(line_.get_ydata())))


def test_aggregates_reader_gives_a_misspelt_logged_key_a_did_you_mean_over_every_logged_key(tmp_path):
    from analysis.aggregate import logged_reader
    sweep = make(tmp_path, ANALYSIS)
    reader = logged_reader(sweep)
    assert "loss" in reader.columns()
    with pytest.raises(figures.FigureError) as e:
        figures.draw(sweep, {"kind": "curves", "y": "los"}, logged=reader)
    assert e.value.key == "y" and "'los' was logged by no run" in str(e.value)
    assert "did you mean 'loss'" in str(e.value) and "logged: " in str(e.value)


def test_curves_band_matches_the_seeds_spread(tmp_path):
    runs = grid({"method": ["bp"]}, seeds=[1, 2, 3])
    for i, r in enumerate(runs):
        r["metrics"] = {"acc": 0.5}
        r["log"] = [{"step": s, "loss": 1.0 + s + 0.5 * i * s} for s in range(5)]     # spread grows with s
    sweep = load(write_sweep(tmp_path / "s", runs))
    for error in ("std", "ci95"):
        f, _ = draw(sweep, {"kind": "curves", "y": "loss", "error": error})
        ax = f.axes[0]
        assert np.allclose(ax.lines[0].get_ydata(), [1.0 + s + 0.5 * s for s in range(5)])
        edges = band_edges(ax.collections[0])
        for s in range(5):
            values = [1.0 + s + 0.5 * i * s for i in range(3)]
            half = np.std(values, ddof=1) * (1 if error == "std" else 4.302652729749464 / math.sqrt(3))
            assert edges[s] == pytest.approx((np.mean(values) - half, np.mean(values) + half)), (error, s)
        assert "(n = 3)" in caption(f)
    f, _ = draw(sweep, {"kind": "curves", "y": "loss", "error": "none"})
    assert len(f.axes[0].collections) == 0 and "band" not in caption(f)


# layout ---------------------------------------------------------------

def extents(f):
    """Window extents, in the drawing that makes the PNG (bbox_inches="tight" moves things), of
    what must not overlap: title, legends, caption and each visible panel (labels and ticks)."""
    seen = {}

    def grab(event):
        r = event.renderer
        seen["boxes"] = {
            "legend": [leg.get_window_extent(r) for leg in f.legends],
            "caption": [t.get_window_extent(r) for t in f.texts if t is not f._suptitle],
            "title": [f._suptitle.get_window_extent(r)] if f._suptitle else [],
            "panel": [ax.get_tightbbox(r) for ax in f.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]}
        seen["width"] = width_in * r.dpi                   # the figure's own width, not the crop's
    width_in = f.get_figwidth()
    cid = f.canvas.mpl_connect("draw_event", grab)
    try:
        figures.to_bytes(f, "png")
    finally:
        f.canvas.mpl_disconnect(cid)
    return seen["boxes"], seen["width"]


@pytest.mark.parametrize("kind", list(EVERY_KIND))
def test_title_legend_caption_and_panels_do_not_overlap(tmp_path, kind):
    fig = {**EVERY_KIND[kind], "title": "A title for the figure", "where": {"method": ["bp", "dfa"]}}
    f, _ = draw(sweep_for(tmp_path, kind), fig)
    boxes, width = extents(f)
    assert boxes["title"] and boxes["caption"]
    flat = [(name, b) for name, bs in boxes.items() for b in bs]
    for i, (a, box_a) in enumerate(flat):
        for b, box_b in flat[i + 1:]:
            if a == b == "panel":
                continue              # shared axes of facets may touch; their data areas never do
            assert not box_a.overlaps(box_b), (kind, a, b, box_a, box_b)
    for cap in boxes["caption"]:      # wrapped to the figure's width
        assert cap.width <= width, (cap, width)
    assert boxes["title"][0].y0 >= max(b.y1 for b in boxes["legend"] + boxes["panel"]) - 0.5


def test_a_key_that_varies_only_between_groups_pools_nothing_and_facets_may_keep_their_own_range(tmp_path):
    """A flag that one method sets (constant within every group) is not pooled over, so the caption
    does not say it is; `sharey: false` gives each facet its own y range."""
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1, 2]}, seeds=[1, 2])
    for r in runs:
        c = r["config"]
        c["hist"] = r["varied"]["hist"] = c["method"] == "bp"
        r["metrics"] = {"test_acc": (9.0 if c["method"] == "bp" else 0.5) + 0.1 * c["k"] + 0.01 * c["seed"],
                        "cost": 1.0 + c["k"]}
    sweep = load(write_sweep(tmp_path / "flag", runs, analysis={"group_by": ["method", "k"]}))
    assert "hist" in sweep.varied
    fig = {"kind": "pareto", "x": "cost", "y": "test_acc", "facet": "method"}
    f, _ = draw(sweep, fig)
    assert "over seeds (n = 2)" in caption(f) and "hist" not in caption(f), caption(f)
    assert f.axes[0].get_ylim() == f.axes[1].get_ylim()
    f, _ = draw(sweep, {**fig, "sharey": False})
    (lo0, hi0), (lo1, hi1) = f.axes[0].get_ylim(), f.axes[1].get_ylim()
    assert hi1 < lo0 or hi0 < lo1, (f.axes[0].get_ylim(), f.axes[1].get_ylim())   # disjoint ranges
