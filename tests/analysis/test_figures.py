"""analysis.figures: every kind draws from a synthetic sweep with labelled axes, legends and error
bars; the Pareto front matches brute force over the group means; the same data gives the same bytes."""
import math

import numpy as np
import pytest

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
    from analysis.aggregate import logged_reader
    return logged_reader(sweep)


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
    ({"kind": "hist", "y": "nope"}, "no run has a list"),
    ({"kind": "pareto", "x": "cost", "y": "test_acc", "where": {"k": 7}}, "no planned run matches where: k = 7"),
])
def test_a_figure_that_cannot_be_drawn_says_why(tmp_path, fig, words):
    sweep = make(tmp_path, ANALYSIS)
    with pytest.raises(figures.Skip, match=words):
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
