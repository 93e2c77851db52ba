"""The public API: analysis.runs / analysis.curves on a sweep dir with pending, failed, resumed
(replayed steps), torn-line, diverged and multi-stage runs; the Parquet cache converts a log once."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import analysis
from analysis import curve_store
from jobs.store import RunState, atomic
from tests.sweepdir_factory import grid, write_run, write_sweep

REPO = Path(__file__).resolve().parents[2]


def lines(steps, **extra):
    return [{"step": s, "time": 1.7e9 + s, "loss": 1.0 / (s + 1), **extra} for s in steps]


def make(tmp_path):
    runs = grid({"method": ["bp", "dfa"]}, seeds=[1, 2, 3])
    for i, r in enumerate(runs):
        r["metrics"] = {"test_acc": 0.5 + 0.1 * i}
        r["log"] = lines(range(5))
    runs[1]["state"] = "pending"                                       # submitted, unfinished
    runs[2]["state"] = "failed"
    # resumed: attempt 1 logged steps 0..6, attempt 2 restored step 4 and logged 4..9 again
    runs[3]["log"] = lines(range(7), loss=9.0) + lines(range(4, 10))
    runs[3]["attempts"] = 2
    # torn last line (killed mid-write), and a bare NaN token Python's json writes
    good = "".join(json.dumps(x) + "\n" for x in lines(range(3)))
    runs[4]["log"] = (good + '{"step": 3, "time": 1.7e9, "loss": NaN}\n{"step": 4, "ti').encode()
    runs[5]["metrics"] = {"test_acc": float("nan")}                     # diverged
    sdir = write_sweep(tmp_path / "sweep", runs)
    plan = json.loads((sdir / "plan.json").read_text())
    plan["runs"][0]["stage"] = "pretrain"
    atomic.write_json(sdir / "plan.json", plan)
    return sdir, runs


def test_runs_has_a_row_per_run_with_state_stage_config_metrics_and_diverged(tmp_path):
    sdir, runs = make(tmp_path)
    df = analysis.runs(sdir)
    assert list(df["run_id"]) == [r["run_id"] for r in runs]
    assert list(df["state"]) == [RunState.DONE, RunState.PENDING, RunState.FAILED, RunState.DONE,
                                 RunState.DONE, RunState.DONE]
    assert list(df["stage"]) == ["pretrain", "", "", "", "", ""]
    assert {"label", "method", "seed", "test_acc", "diverged"} <= set(df.columns)
    assert math.isnan(df.loc[5, "test_acc"]) and bool(df.loc[5, "diverged"])
    assert not df.loc[:4, "diverged"].any()
    assert df.loc[0, "test_acc"] == pytest.approx(0.5)


def test_config_columns_come_from_the_frozen_run_config_not_the_plan(tmp_path):
    sdir, runs = make(tmp_path)
    plan = json.loads((sdir / "plan.json").read_text())
    plan["runs"][0]["config"]["method"] = "changed-later"
    atomic.write_json(sdir / "plan.json", plan)
    assert analysis.runs(sdir).loc[0, "method"] == "bp"


def test_curves_cut_replays_and_torn_lines_and_read_nan(tmp_path):
    sdir, runs = make(tmp_path)
    df = analysis.curves(sdir)
    assert list(df.columns[:3]) == ["run_id", "step", "time"] and "loss" in df.columns
    resumed = df[df["run_id"] == runs[3]["run_id"]]
    assert list(resumed["step"]) == list(range(10))
    assert (resumed["loss"][resumed["step"] >= 4] != 9.0).all()      # replayed steps keep the last value
    assert (resumed["loss"][resumed["step"] < 4] == 9.0).all()
    torn = df[df["run_id"] == runs[4]["run_id"]]
    assert list(torn["step"]) == [0, 1, 2, 3] and math.isnan(torn["loss"].iloc[-1])
    assert set(df["run_id"]) == {r["run_id"] for r in runs}           # pending and failed runs logged too
    only = analysis.curves(sdir, metrics=["loss"])
    assert list(only.columns) == ["run_id", "step", "time", "loss"]
    with pytest.raises(KeyError, match="did you mean 'loss'"):
        analysis.curves(sdir, metrics=["los"])


def test_curves_convert_each_log_once_and_only_changed_ones_again(tmp_path):
    sdir, runs = make(tmp_path)
    ids = [r["run_id"] for r in runs]
    first, again, later = {}, {}, {}
    a, _ = curve_store.load(sdir, ids, stats=first)
    b, _ = curve_store.load(sdir, ids, stats=again)
    assert first == {"converted": 6, "cached": 0} and again == {"converted": 0, "cached": 6}
    assert curve_store.frame(a).equals(curve_store.frame(b))
    runs[1]["state"] = "done"
    runs[1]["log"] = lines(range(8))
    write_run(sdir, runs[1])
    c, _ = curve_store.load(sdir, ids, stats=later)
    assert later == {"converted": 1, "cached": 5}
    assert c.filter(curve_store.pc.equal(curve_store.pc.cast(c.column("run_id"), curve_store.pa.string()),
                                         ids[1])).num_rows == 8


def test_cached_curves_equal_a_fresh_read_whatever_was_converted_again_and_in_whatever_order(tmp_path):
    """A part can hold lines of a run converted again since (they must go) and runs not asked
    for; parts can follow each other out of the order asked: the cached read still equals a read
    of the logs themselves, in the order asked."""
    sdir, runs = make(tmp_path)
    ids = [r["run_id"] for r in runs]
    curve_store.load(sdir, ids)
    runs[0]["log"] = lines(range(12))                    # the first run ran on: converted again, a new part
    write_run(sdir, runs[0])
    for asked in (ids, ids[::-1], ids[2:5], [ids[4], ids[0]]):
        cached = curve_store.frame(curve_store.load(sdir, asked)[0])
        fresh = curve_store.frame(curve_store.load(sdir, asked, cache=False)[0])
        assert cached.equals(fresh), asked
        assert list(cached["run_id"].drop_duplicates()) == asked
    assert len(cached[cached.run_id == ids[0]]) == 12


def test_a_cache_write_that_fails_in_the_background_is_said_and_costs_only_a_conversion(tmp_path, monkeypatch, capsys):
    sdir, runs = make(tmp_path)
    ids = [r["run_id"] for r in runs]
    fresh = curve_store.frame(curve_store.load(sdir, ids, cache=False)[0])

    def full_disk(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(curve_store, "_write_part", full_disk)
    got = curve_store.frame(curve_store.load(sdir, ids)[0])       # the DataFrame does not wait for the cache
    curve_store.settle()
    assert got.equals(fresh)
    assert "was not updated (OSError" in capsys.readouterr().err
    monkeypatch.undo()
    stats = {}
    again = curve_store.frame(curve_store.load(sdir, ids, stats=stats)[0])
    assert stats == {"converted": 6, "cached": 0} and again.equals(fresh)


def test_a_killed_writer_leaves_a_readable_cache(tmp_path):
    sdir, runs = make(tmp_path)
    ids = [r["run_id"] for r in runs]
    good, _ = curve_store.load(sdir, ids)
    cdir = curve_store.cache_dir(sdir)
    (cdir / "part-orphan0000000000.parquet").write_bytes(b"PAR1 half a file")   # killed before the manifest
    (cdir / ".manifest.json.x1.tmp").write_bytes(b'{"version": 1, "ru')        # killed mid atomic write
    again, _ = curve_store.load(sdir, ids)
    assert curve_store.frame(again).equals(curve_store.frame(good))
    assert not (cdir / "part-orphan0000000000.parquet").exists() and not (cdir / ".manifest.json.x1.tmp").exists()


def test_a_spec_path_resolves_to_its_sweep_dir_from_any_directory(tmp_path):
    sdir, runs = make(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: sweep\ntask: resmlp\n")
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import analysis; "
            f"df = analysis.runs('spec.yaml', root={str(tmp_path)!r}); print(len(df))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"


def test_summary_counts_non_finite_values_instead_of_dropping_them(tmp_path):
    from analysis.aggregate import aggregate
    sdir, runs = make(tmp_path)
    aggregate(sdir, formats="csv,md", log=lambda *_: None)
    md = (sdir / "analysis" / "summary.md").read_text()
    assert "(1 NaN/inf)" in md and "non-finite" in md


def test_logged_hist_draws_a_panel_per_facet_and_a_line_per_hue(tmp_path):
    from analysis import figures
    from analysis.aggregate import logged_reader
    from analysis.load import load
    runs = grid({"method": ["bp"]}, seeds=[1, 2])
    for r in runs:
        r["metrics"] = {"test_acc": 0.5}
        r["log"] = [{"step": rep, "time": 1.0, "checkpoint_step": c, "counts": [1, 2 + c, 3], "edges": [0, 1, 2, 3]}
                    for rep in (0, 1) for c in (100, 200)]
    sweep = load(write_sweep(tmp_path / "h", runs))
    fig = {"kind": "logged_hist", "counts": "counts", "edges": "edges", "facet": "step", "hue": "checkpoint_step"}
    f, _ = figures.draw(sweep, fig, logged=logged_reader(sweep))
    visible = [ax for ax in f.axes if ax.get_visible()]
    assert len(visible) == 2 and all(len(ax.patches) == 2 for ax in visible)
    assert any("n = 2" in t.get_text() for t in f.texts)
    with pytest.raises(figures.FigureError, match="did you mean 'counts'"):
        figures.draw(sweep, {**fig, "counts": "count"}, logged=logged_reader(sweep))
