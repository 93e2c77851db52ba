"""analysis.load: a sweep dir (complete or not, with broken files) -> one row per run and warnings."""
import math

from analysis.load import DONE, FAILED, PENDING, load
from jobs.store import RunState
from tests.sweepdir_factory import grid, write_sweep


def sweep_with_every_state(tmp_path):
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2])
    for i, r in enumerate(runs):
        r["metrics"] = {"test_acc": 0.5 + i / 100, "loss": 1.0 - i / 100, "weights": [i, i + 1]}
        r["wall_time_s"] = 10.0 + i
    runs[1]["state"] = "failed"
    runs[2]["state"] = "pending"
    runs[3]["state"] = "corrupt"
    runs[4]["state"] = "missing"
    del runs[5]["metrics"]["loss"]
    return write_sweep(tmp_path / "sweep dir with spaces", runs), runs


def test_states_config_keys_and_final_metrics_become_columns(tmp_path):
    sdir, runs = sweep_with_every_state(tmp_path)
    sweep = load(sdir)
    df = sweep.runs
    assert len(df) == len(runs) and list(df["run_id"]) == [r["run_id"] for r in runs]
    assert list(df["state"][:6]) == [DONE, FAILED, PENDING, RunState.CORRUPT, RunState.NEW, DONE]
    assert df.loc[1, "error"] == "ValueError: diverged"
    assert sweep.varied == ["method", "k", "seed"] and sweep.config_keys[:3] == ["method", "k", "seed"]
    assert {"method", "k", "seed", "test_acc", "loss", "wall_time_s", "attempts", "label"} <= set(df.columns)
    assert sorted(sweep.metrics) == ["loss", "test_acc"]
    assert df.loc[0, "test_acc"] == 0.5 and df.loc[0, "wall_time_s"] == 10.0 and df.loc[0, "attempts"] == 1
    assert math.isnan(df.loc[5, "loss"])
    assert sweep.lists[runs[0]["run_id"]] == {"weights": [0, 1]}       # list metrics are kept apart
    assert sweep.analysis["group_by"] == ["method", "k"]              # default: varied keys but the seed


def test_a_corrupt_result_is_reported_by_path_and_label_and_the_rest_goes_on(tmp_path):
    sdir, runs = sweep_with_every_state(tmp_path)
    sweep = load(sdir)
    texts = [t for kind, t in sweep.warnings if kind == "result"]
    assert len(texts) == 1
    assert f"runs/{runs[3]['run_id']}/result.json" in texts[0] and runs[3]["label"] in texts[0]
    assert "unreadable" in texts[0]


def test_a_missing_metric_is_reported_with_how_many_runs_lack_it(tmp_path):
    sdir, runs = sweep_with_every_state(tmp_path)
    sweep = load(sdir)
    texts = [t for kind, t in sweep.warnings if kind == "metric"]
    assert any("'loss'" in t and "1 of" in t and runs[5]["label"] in t for t in texts), texts


def test_a_metric_named_in_the_spec_but_never_logged_is_reported(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1])
    for r in runs:
        r["metrics"] = {"test_acc": 0.5}
    sweep = load(write_sweep(tmp_path / "s", runs, analysis={"metrics": ["test_ac", "test_acc"]}))
    assert sweep.analysis["metrics"] == ["test_acc"]
    assert any("'test_ac'" in t and "did you mean 'test_acc'" in t for _, t in sweep.warnings), sweep.warnings


def test_unreadable_or_missing_spec_and_plan_are_warnings(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1, 2])
    for r in runs:
        r["metrics"] = {"acc": 1.0}
    sdir = write_sweep(tmp_path / "s", runs)
    (sdir / "spec.yaml").write_text("name: [unclosed\n")
    (sdir / "plan.json").write_text("{not json")
    sweep = load(sdir)
    kinds = {k for k, _ in sweep.warnings}
    assert {"spec", "plan"} <= kinds
    assert len(sweep.runs) == 4 and (sweep.runs["state"] == DONE).all()   # run dirs still read


def test_run_dirs_not_in_the_plan_are_listed_but_marked(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1])
    for r in runs:
        r["metrics"] = {"acc": 1.0}
    runs[1]["planned"] = False
    sweep = load(write_sweep(tmp_path / "s", runs))
    assert list(sweep.runs["in_plan"]) == [True, False]


def test_a_bad_analysis_block_is_a_warning_not_a_crash(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1])
    for r in runs:
        r["metrics"] = {"acc": 1.0}
    sweep = load(write_sweep(tmp_path / "s", runs, analysis={"group_by": ["kk"], "error": "bad",
                                                             "figures": [{"kind": "ladr"}]}))
    texts = [t for kind, t in sweep.warnings if kind == "spec"]
    assert any("did you mean 'k'" in t for t in texts) and any("analysis.error" in t for t in texts), texts
    assert sweep.analysis["group_by"] == [] and sweep.analysis["figures"] == []
