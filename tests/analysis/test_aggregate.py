"""End to end: a synthetic sweep dir -> `aggregate` -> tables and figures under <sweep dir>/analysis;
a second call with nothing new rewrites nothing; `python main.py aggregate` exit codes and paths."""
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.aggregate import aggregate
from tests.sweepdir_factory import grid, write_run, write_sweep

REPO = Path(__file__).resolve().parents[2]

ANALYSIS = {
    "group_by": ["method", "k"],
    "metrics": ["test_acc", "cost"],
    "labels": {"test_acc": "Test accuracy", "k": "Trainable blocks k"},
    "units": {"cost": "GFLOPs"},
    "figures": [
        {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method"},
        {"kind": "pareto", "x": "cost", "y": "test_acc", "hue": "method"},
        {"kind": "curves", "y": "loss", "hue": "method", "where": {"k": 1}},
        {"kind": "heatmap", "x": "k", "y": "method", "z": "test_acc"},
        {"kind": "hist", "y": "weights", "hue": "method"},
    ],
}
FIGURES = ["ladder", "pareto", "curves", "heatmap", "hist"]


def make_sweep(root, states=None, analysis=ANALYSIS):
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1, 2]}, seeds=[1, 2, 3])
    for i, r in enumerate(runs):
        c = r["config"]
        r["metrics"] = {"test_acc": 0.6 + 0.05 * c["k"] + 0.01 * c["seed"] - 0.1 * (c["method"] == "dfa"),
                        "cost": 1.0 + c["k"] + 0.01 * c["seed"], "weights": [0.1 * i, 0.2, 0.3]}
        r["log"] = [{"step": s, "time": 1.7e9 + s, "loss": 1.0 / (s + 1 + i)} for s in range(10)]
        r["wall_time_s"] = 60.0 + i
    for i, state in (states or {}).items():
        runs[i]["state"] = state
    return write_sweep(Path(root) / "my sweep", runs, analysis=analysis), runs


def squeezed(path):
    """A text file with runs of spaces made one (to_markdown pads the columns of summary.md)."""
    return re.sub(r" {2,}", " ", Path(path).read_text())


def read_csv(path):
    return list(csv.DictReader(io.StringIO(Path(path).read_text(), newline="")))


def snapshot(out):
    """Bytes and mtime of every output (not the hidden indexes that say what needs redoing)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(out).iterdir())
            if not p.name.startswith(".")}


def test_every_output_is_written_under_the_sweep_dir(tmp_path):
    sdir, runs = make_sweep(tmp_path)
    lines = []
    paths = aggregate(sdir, formats="csv,md,tex,png,pdf,curves.csv", log=lines.append)
    out = sdir / "analysis"
    again = []
    assert aggregate(sdir, formats="csv,md,tex,png,pdf,curves.csv", log=again.append) == paths
    assert again[-1] == f"0 written, {len(paths)} unchanged"
    names = {p.name for p in paths}
    assert {"runs.csv", "curves.csv", "summary.csv", "summary.md", "summary.tex", "pareto.csv"} <= names
    assert {f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")} <= names
    assert all(p.parent == out and p.exists() for p in paths)
    assert all(any(str(p) in line for line in lines) for p in paths)          # each path is printed
    rows = read_csv(out / "runs.csv")
    assert len(rows) == 18 and rows[0]["run_id"] == runs[0]["run_id"] and rows[0]["label"] == runs[0]["label"]
    assert {"method", "k", "seed", "test_acc", "cost", "state", "attempts", "wall_time_s"} <= set(rows[0])
    curves = read_csv(out / "curves.csv")
    assert len(curves) == 18 * 10 and list(curves[0]) == ["run_id", "step", "time", "loss"]
    assert curves[11]["run_id"] == runs[1]["run_id"] and float(curves[11]["loss"]) == 1.0 / 3
    summary = read_csv(out / "summary.csv")
    assert len(summary) == 6 and float(summary[0]["test_acc_mean"]) == pytest.approx(0.62)
    assert "| bp | 0 | 3/3 | 0.620 ± 0.010 |" in squeezed(out / "summary.md")


def test_a_second_call_with_no_new_results_rewrites_nothing(tmp_path):
    analysis = {**ANALYSIS, "figures": [f for f in ANALYSIS["figures"] if f["kind"] in ("pareto", "curves")]}
    sdir, _ = make_sweep(tmp_path, analysis=analysis)
    aggregate(sdir, formats="csv,md,tex,pdf", log=lambda *_: None)
    before = snapshot(sdir / "analysis")
    lines = []
    aggregate(sdir, formats="csv,md,tex,pdf", log=lines.append)     # figures known unchanged: not drawn
    assert snapshot(sdir / "analysis") == before                      # same bytes, files not even touched
    assert any(line.startswith("0 written") for line in lines), lines
    for index in (".figures.index.json",):  # drawn and read again: same bytes
        (sdir / "analysis" / index).unlink()
    lines = []
    aggregate(sdir, formats="csv,md,tex,pdf", log=lines.append)
    assert snapshot(sdir / "analysis") == before
    assert any(line.startswith("0 written") for line in lines), lines
    for name, (data, _) in before.items():
        assert b"CreationDate" not in data and b"ModDate" not in data, name


def test_a_new_result_rewrites_what_it_changes_and_only_that(tmp_path):
    analysis = {**ANALYSIS, "figures": [f for f in ANALYSIS["figures"] if f["kind"] in ("curves", "hist")]}
    sdir, runs = make_sweep(tmp_path, states={17: "pending"}, analysis=analysis)
    runs[17]["log"] = runs[17]["log"][:4]
    write_run(sdir, runs[17])
    aggregate(sdir, formats="csv,md,png,curves.csv", log=lambda *_: None)
    before = snapshot(sdir / "analysis")
    runs[17]["state"] = "done"
    runs[17]["log"] = [{"step": s, "time": 1.7e9 + s, "loss": 0.5} for s in range(10)]
    write_run(sdir, runs[17])
    aggregate(sdir, formats="csv,md,png,curves.csv", log=lambda *_: None)
    after = snapshot(sdir / "analysis")
    changed = {n for n in after if after[n] != before.get(n)}
    assert {"runs.csv", "summary.csv", "summary.md", "curves.csv", "hist.png"} <= changed
    assert "curves.png" not in changed                      # k=1 only: run 17 has k=2


def test_partial_sweeps_corrupt_results_and_missing_metrics_are_reported_not_fatal(tmp_path):
    sdir, runs = make_sweep(tmp_path, states={0: "corrupt", 1: "failed", 2: "missing"})
    del runs[5]["metrics"]["cost"]
    write_run(sdir, runs[5])
    (sdir / "runs" / runs[4]["run_id"] / "metrics.jsonl").write_bytes(b'{"step": 0, "loss": 1}\nnot json\n')
    lines = []
    aggregate(sdir, formats="csv,md,curves.csv", log=lines.append)
    text = "\n".join(lines)
    assert f"runs/{runs[0]['run_id']}/result.json" in text and "unreadable" in text
    assert "metric 'cost' is missing from 1 of 15 finished runs" in text
    assert f"runs/{runs[4]['run_id']}/metrics.jsonl: 1 unreadable line(s) skipped" in text
    assert "18 runs planned: 15 done, 1 failed, 2 not finished" in text
    md = squeezed(sdir / "analysis" / "summary.md")
    assert "| bp | 0 | 0/3 † |" in md and "† partial" in md


def test_a_misspelt_figure_key_is_an_error_after_the_rest_is_written(tmp_path):
    analysis = {**ANALYSIS, "figures": [{"kind": "ladr", "x": "k", "y": "test_acc"},     # dropped: a warning
                                        {"kind": "ladder", "x": "kk", "y": "test_acc"},
                                        {"kind": "ladder", "x": "k", "y": "test_acc"},
                                        {"kind": "pareto", "x": "cost", "y": "test_accc"},
                                        {"kind": "ladder", "x": "k", "y": "test_acc", "where": {"k": 9}}]}
    sdir, _ = make_sweep(tmp_path, analysis=analysis)
    lines = []
    with pytest.raises(ValueError, match="did you mean 'k'") as e:
        aggregate(sdir, formats="md,png", log=lines.append)
    errors = str(e.value).splitlines()              # one line per figure: spec file, figure index, key
    assert errors[0].startswith(f"{sdir / 'spec.yaml'}: analysis.figures[1].x: 'kk' is neither")
    assert errors[1].startswith(f"{sdir / 'spec.yaml'}: analysis.figures[3].y: 'test_accc' is neither")
    assert "did you mean 'test_acc'" in errors[1] and len(errors) == 2
    assert (sdir / "analysis" / "ladder_test_acc_vs_k.png").exists()           # the other figures
    assert (sdir / "analysis" / "summary.md").exists()                          # and the tables
    assert any("not drawn: no planned run matches where: k = 9" in line for line in lines), lines
    with pytest.raises(ValueError, match=re.escape("sweeps/mine.yaml: analysis.figures[1].x:")):
        aggregate(sdir, formats="png", log=lines.append, analysis=analysis, spec_file="sweeps/mine.yaml")
    res = subprocess.run([sys.executable, "main.py", "aggregate", str(sdir), "--format", "png"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "analysis.figures[1].x: 'kk'" in res.stderr and "did you mean 'k'" in res.stderr
    assert "not drawn: no planned run matches where: k = 9" in res.stdout


def test_format_and_out_choose_what_and_where(tmp_path):
    sdir, _ = make_sweep(tmp_path)
    out = tmp_path / "tables"
    paths = aggregate(sdir, out=out, formats="md,tex", log=lambda *_: None)
    assert sorted(p.name for p in paths) == ["summary.md", "summary.tex"]
    assert not (sdir / "analysis").exists()
    with pytest.raises(ValueError, match="unknown format"):
        aggregate(sdir, formats="csv,docx", log=lambda *_: None)


def test_main_py_aggregate_prints_the_paths_and_exits_0(tmp_path):
    sdir, _ = make_sweep(tmp_path, analysis={**ANALYSIS, "figures": ANALYSIS["figures"][:1]})
    res = subprocess.run([sys.executable, "main.py", "aggregate", str(sdir), "--format", "csv,md,png"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    printed = [line.split(None, 1)[1] for line in res.stdout.splitlines() if line.startswith(("  wrote", "  unchanged"))]
    assert {Path(p).name for p in printed} == {"runs.csv", "summary.csv", "summary.md", "ladder.png"}
    assert all(Path(p).parent == sdir / "analysis" and Path(p).exists() for p in printed)


def test_main_py_aggregate_on_something_that_is_no_sweep_dir_exits_2(tmp_path, capsys):
    import main
    assert main.main(["aggregate", str(tmp_path / "nothing here")]) == 2
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main.main(["aggregate", str(tmp_path / "empty")]) == 2
    assert "not a sweep dir" in capsys.readouterr().err
    sdir, _ = make_sweep(tmp_path)
    assert main.main(["aggregate", str(sdir), "--format", "docx"]) == 2
    assert "unknown format docx" in capsys.readouterr().err


def test_analysis_imports_no_model_code():
    code = ("import sys; import analysis.aggregate, analysis.figures, analysis.curve_store; "
            "bad = [m for m in sys.modules if m == 'torch' or m == 'models' or m.startswith(('models.', 'torch.'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_figure_not_drawn_any_more_leaves_no_old_image_behind(tmp_path):
    good = {**ANALYSIS, "figures": [{"kind": "ladder", "x": "k", "y": "test_acc"}]}
    sdir, _ = make_sweep(tmp_path, analysis=good)
    aggregate(sdir, formats="png", log=lambda *_: None)
    image = sdir / "analysis" / "ladder.png"
    assert image.exists()
    broken = {**ANALYSIS, "figures": [{"kind": "ladder", "x": "k", "y": "test_acc", "where": {"k": 9}}]}
    aggregate(sdir, formats="png", log=lambda *_: None, analysis=broken)
    assert not image.exists()          # "not drawn" with yesterday's picture beside it would mislead


def test_counts_read_as_counts_and_one_run_per_point_shows_no_spread(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1])
    for r in runs:
        r["metrics"] = {"steps": 200, "test_acc": 0.5 + 0.1 * r["config"]["k"]}
    sdir = write_sweep(tmp_path / "counts", runs, analysis={"group_by": ["k"], "metrics": ["steps", "test_acc"],
                                                            "figures": [{"kind": "ladder", "x": "k", "y": "test_acc"}]})
    aggregate(sdir, formats="md", log=lambda *_: None)
    table = squeezed(sdir / "analysis" / "summary.md")
    assert "| 200 |" in table and "200.000" not in table and "0.500" in table, table
    from analysis import figures as figures_mod
    from analysis.load import load
    f, _ = figures_mod.draw(load(sdir), {"kind": "ladder", "x": "k", "y": "test_acc"})
    caption = " ".join(t.get_text() for t in f.texts)
    assert "one run per point (n = 1)" in caption and "± std" not in caption, caption
