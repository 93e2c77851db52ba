"""The logged_heatmap figure: a list a run logged on several lines, a row per value of a logged key.

    .venv/bin/python -m pytest -q tests/analysis/test_logged_heatmap.py
"""
import numpy as np
import pytest

from analysis import figures
from analysis.load import load
from jobs.spec.figures import check
from tests.analysis.test_figures import caption, draw
from tests.sweepdir_factory import grid, write_sweep


@pytest.fixture
def sweep(tmp_path):
    runs = grid({"method": ["bp", "dfa"]}, seeds=[1, 2])
    for i, r in enumerate(runs):
        r["metrics"] = {"acc": 0.5}
        # iteration t of run i logs weights [t + i, 10 t, 1]; an earlier line for t = 1 is superseded
        r["log"] = [{"step": 1, "it": 1, "w": [99.0, 99.0, 99.0]}] + \
            [{"step": 2, "it": t, "w": [t + i, 10.0 * t, 1.0]} for t in (1, 2, 3)]
    return load(write_sweep(tmp_path / "hm", runs, analysis={"group_by": ["method"]}))


def test_a_row_per_logged_value_a_column_per_position_mean_over_runs(sweep):
    f, _ = draw(sweep, {"kind": "logged_heatmap", "y": "it", "z": "w", "where": {"method": "dfa"}})
    grid = np.asarray(f.axes[0].images[0].get_array())
    # dfa is runs 2 and 3: column 0 is t + 2.5, the last line per (run, it) counts
    assert grid.tolist() == [[3.5, 10.0, 1.0], [4.5, 20.0, 1.0], [5.5, 30.0, 1.0]]
    assert [t.get_text() for t in f.axes[0].get_yticklabels()] == ["1", "2", "3"]
    assert "mean over the runs that logged the row (n = 2)" in caption(f) and "where: method = dfa" in caption(f)


def test_wrong_keys_are_named(sweep):
    with pytest.raises(figures.FigureError, match="z"):
        draw(sweep, {"kind": "logged_heatmap", "y": "it", "z": "ww"})
    assert check({"figures": [{"kind": "logged_heatmap", "y": "it"}]}) == [
        ("figures[0]", "missing key 'z' (a logged_heatmap figure needs y, z)")]
