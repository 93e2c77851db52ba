"""analysis.summary: mean, std (ddof=1), n and 95% CI per group against numbers worked out by hand;
partial groups flagged; `0.617 ± 0.002` cells in Markdown and LaTeX."""
import math

import pytest

from analysis.load import load
from analysis.summary import cell, latex, markdown, summary, t975
from tests.sweepdir_factory import grid, write_sweep

# test_acc per (method, k) and seed 1, 2, 3
ACC = {("bp", 0): [0.61, 0.62, 0.63], ("bp", 1): [0.70, 0.74, 0.78],
       ("dfa", 0): [0.50, 0.50, 0.53], ("dfa", 1): [0.40, 0.60, 0.80]}


def make(tmp_path, states=None, analysis=None):
    runs = grid({"method": ["bp", "dfa"], "k": [0, 1]}, seeds=[1, 2, 3])
    for r in runs:
        c = r["config"]
        acc = ACC[c["method"], c["k"]][c["seed"] - 1]
        r["metrics"] = {"test_acc": acc, "loss": 1 - acc}
    for i, state in (states or {}).items():
        runs[i]["state"] = state
    return load(write_sweep(tmp_path / "s", runs, analysis=analysis))


def test_mean_std_n_and_ci_are_the_hand_computed_ones(tmp_path):
    table = summary(make(tmp_path))
    assert list(zip(table["method"], table["k"])) == list(ACC)       # plan order
    row = table.iloc[0]                                              # bp, k=0: 0.61 0.62 0.63
    assert row["test_acc_mean"] == pytest.approx(0.62)
    assert row["test_acc_std"] == pytest.approx(0.01)                # sqrt(((-.01)^2 + 0 + .01^2) / 2)
    assert row["test_acc_n"] == 3
    half = 4.302652729749464 * 0.01 / math.sqrt(3)                   # t(0.975, df=2) * s / sqrt(n)
    assert row["test_acc_ci95_lo"] == pytest.approx(0.62 - half)
    assert row["test_acc_ci95_hi"] == pytest.approx(0.62 + half)
    row = table.iloc[3]                                              # dfa, k=1: 0.4 0.6 0.8
    assert row["test_acc_mean"] == pytest.approx(0.6) and row["test_acc_std"] == pytest.approx(0.2)
    assert row["loss_mean"] == pytest.approx(0.4)
    assert not table["partial"].any() and (table["planned"] == 3).all()


def test_a_group_with_fewer_finished_runs_than_planned_is_flagged_and_its_n_shown(tmp_path):
    # run 1 (bp, k=0, seed 2) failed; runs 3 and 4 (bp, k=1, seeds 1 and 2) have not run
    table = summary(make(tmp_path, {1: "failed", 3: "pending", 4: "missing"}))
    assert list(table["done"]) == [2, 1, 3, 3] and list(table["failed"]) == [1, 0, 0, 0]
    assert list(table["partial"]) == [True, True, False, False]
    assert table.loc[0, "test_acc_mean"] == pytest.approx(0.62)      # mean of 0.61 and 0.63
    assert table.loc[0, "test_acc_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert table.loc[1, "test_acc_n"] == 1 and math.isnan(table.loc[1, "test_acc_std"])
    assert math.isnan(table.loc[1, "test_acc_ci95_lo"])


def test_markdown_cells_read_mean_plus_minus_std_and_partial_groups_carry_a_dagger(tmp_path):
    sweep = make(tmp_path, {1: "failed"}, analysis={"labels": {"test_acc": "Test accuracy"}, "metrics": ["test_acc", "loss"],
                                                     "units": {"loss": "nats"}})
    md = markdown(sweep, summary(sweep))
    lines = md.splitlines()
    assert lines[0] == "| method | k | n | Test accuracy | loss (nats) |"
    assert lines[2] == "| bp | 0 | 2/3 † | 0.620 ± 0.014 | 0.380 ± 0.014 |"
    assert lines[3] == "| bp | 1 | 3/3 | 0.740 ± 0.040 | 0.260 ± 0.040 |"
    assert "† partial" in md


def test_latex_is_a_booktabs_tabular_with_escaped_text(tmp_path):
    sweep = make(tmp_path, {1: "failed"}, analysis={"labels": {"test_acc": "acc_% & more"}, "metrics": ["test_acc"]})
    tex = latex(sweep, summary(sweep))
    assert "\\begin{tabular}{llrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "acc\\_\\% \\& more" in tex
    assert "bp & 0 & 2/3 $^\\dagger$ & 0.620 $\\pm$ 0.014" in tex


def test_missing_metric_in_some_runs_shows_its_own_n(tmp_path):
    runs = grid({"k": [0]}, seeds=[1, 2, 3])
    for i, r in enumerate(runs):
        r["metrics"] = {"acc": 0.5 + i / 10, **({"loss": 1.0} if i else {})}
    sweep = load(write_sweep(tmp_path / "s", runs))
    table = summary(sweep)
    assert table.loc[0, "loss_n"] == 2 and table.loc[0, "acc_n"] == 3
    assert "(n=2)" in markdown(sweep, table)


@pytest.mark.parametrize("mean, std, decimals, text", [
    (0.6172, 0.0021, 3, "0.617 ± 0.002"),
    (0.6172, float("nan"), 3, "0.617"),
    (float("nan"), float("nan"), 3, "–"),
    (123456.0, 10.0, 3, "1.23e+05 ± 10"),
    (0.00001, 0.000002, 3, "1e-05 ± 2e-06"),
    (12.5, 0.25, 1, "12.5 ± 0.2"),
])
def test_cell(mean, std, decimals, text):
    assert cell(mean, std, decimals) == text


def test_t_quantiles():
    assert t975(1) == pytest.approx(12.7062047362)
    assert t975(30) == pytest.approx(2.0422724563)
    assert t975(40) == pytest.approx(2.0210753903, abs=1e-6)
    assert t975(1000) == pytest.approx(1.9623390808, abs=1e-6)
    assert math.isnan(t975(0))
