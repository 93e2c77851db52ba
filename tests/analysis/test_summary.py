"""analysis.summary: mean, std (ddof=1), n and 95% CI per group against numbers worked out by hand;
partial groups flagged; `0.617 ± 0.002` cells in Markdown (to_markdown) and LaTeX (Styler.to_latex)."""
import math
import re
import shutil
import statistics
import subprocess

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


def md_table(md):
    """A Markdown pipe table parsed: (header, alignment row, rows), each a list of cell texts; and
    the text after the table. Fails when the lines do not form one table of equal-width rows."""
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert lines[:len(table)] == table, "the table is not the first thing in the file"
    rows = []
    for line in table:
        assert line.endswith("|"), line
        cells = re.split(r"(?<!\\)\|", line[1:-1])
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    assert len({len(r) for r in rows}) == 1, rows               # every row has every column
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]), rows[1]
    return rows[0], rows[1], rows[2:], "\n".join(lines[len(table):])


def test_markdown_is_a_table_whose_cells_read_mean_plus_minus_std_and_partial_groups_carry_a_dagger(tmp_path):
    sweep = make(tmp_path, {1: "failed"}, analysis={"labels": {"test_acc": "Test | accuracy"},
                                                     "metrics": ["test_acc", "loss"], "units": {"loss": "nats"}})
    head, align, rows, after = md_table(markdown(sweep, summary(sweep)))
    assert head == ["method", "k", "n", "Test | accuracy", "loss (nats)"]      # labels, units; `|` escaped
    assert [a.startswith(":") for a in align] == [True, True, False, False, False]    # keys left, numbers right
    assert all(a.endswith(":") for a in align[2:])
    assert rows == [["bp", "0", "2/3 †", "0.620 ± 0.014", "0.380 ± 0.014"],
                    ["bp", "1", "3/3", "0.740 ± 0.040", "0.260 ± 0.040"],
                    ["dfa", "0", "3/3", "0.510 ± 0.017", "0.490 ± 0.017"],
                    ["dfa", "1", "3/3", "0.600 ± 0.200", "0.400 ± 0.200"]]
    assert "† partial: fewer finished runs than planned" in after


def test_markdown_cells_say_how_many_values_were_non_finite_or_missing(tmp_path):
    runs = grid({"k": [0, 1]}, seeds=[1, 2, 3])
    for i, r in enumerate(runs):
        r["metrics"] = {"acc": float("nan") if i == 0 else 0.5 + i / 10, **({"loss": 1.0 + i} if i != 4 else {})}
    sweep = load(write_sweep(tmp_path / "s", runs))
    table = summary(sweep)
    assert table.loc[1, "loss_n"] == 2 and table.loc[1, "acc_n"] == 3 and table.loc[0, "acc_n"] == 2
    head, _, rows, after = md_table(markdown(sweep, table))
    assert head == ["k", "n", "acc", "loss"]
    assert rows[0][2] == "0.650 ± 0.071 (1 NaN/inf)" and rows[1][3] == "5.000 ± 1.414 (n=2)"
    assert rows[0][3] == "2.000 ± 1.000" and rows[1][2] == "0.900 ± 0.100"
    assert "(k NaN/inf): k finished runs" in after and "(n=…): the metric is missing" in after


def test_no_group_keys_is_one_row_for_all_runs(tmp_path):
    sweep = make(tmp_path, analysis={"group_by": [], "metrics": ["test_acc"]})
    head, _, rows, _ = md_table(markdown(sweep, summary(sweep)))
    every = [a for accs in ACC.values() for a in accs]
    want = f"{statistics.mean(every):.3f} ± {statistics.stdev(every):.3f}"
    assert head == ["Group", "n", "test_acc"] and rows == [["all runs", "12/12", want]]


def tex_rows(tex):
    """The body of the booktabs tabular: (column spec, header cells, data rows, text after it)."""
    lines = tex.splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("\\begin{tabular}"))
    spec = re.fullmatch(r"\\begin\{tabular\}\{([^}]*)\}", lines[begin]).group(1)
    end = lines.index("\\end{tabular}", begin)
    body = lines[begin + 1:end]
    assert body[0] == "\\toprule" and body[2] == "\\midrule" and body[-1] == "\\bottomrule", body
    assert sum(line.endswith("rule") for line in body) == 3            # no rule between the rows
    assert all(line.endswith(" \\\\") for line in body[1:2] + body[3:-1])
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)&", line.removesuffix("\\\\"))]
    return spec, split(body[1]), [split(line) for line in body[3:-1]], "\n".join(lines[end + 1:])


def test_latex_is_a_booktabs_tabular_with_escaped_text(tmp_path):
    sweep = make(tmp_path, {1: "failed"}, analysis={
        "labels": {"test_acc": "acc_% & more", "method": "#method"}, "metrics": ["test_acc"],
        "units": {"test_acc": "x > 0"}})
    tex = latex(sweep, summary(sweep))
    assert tex.splitlines()[0].startswith("%") and "\\usepackage{booktabs}" in tex.splitlines()[0]
    spec, head, rows, after = tex_rows(tex)
    assert spec == "llrr"
    assert head == ["\\#method", "k", "n", "acc\\_\\% \\& more (x \\textgreater{} 0)"]
    assert rows[0] == ["bp", "0", "2/3 $^\\dagger$", "0.620 $\\pm$ 0.014"]
    assert rows[3] == ["dfa", "1", "3/3", "0.600 $\\pm$ 0.200"] and len(rows) == 4
    assert "$^\\dagger$ partial: fewer finished runs than planned" in after          # the notes, under it
    assert "±" not in tex and "†" not in tex


PDFLATEX = shutil.which("pdflatex")


@pytest.mark.skipif(not PDFLATEX, reason="no pdflatex on PATH")
def test_latex_compiles(tmp_path):
    sweep = make(tmp_path, {1: "failed"}, analysis={"labels": {"test_acc": "acc_% & {more} ~ $x$ #1 <a|b>"}})
    (tmp_path / "summary.tex").write_text(latex(sweep, summary(sweep)))
    runs = grid({"k": [0, 1]}, seeds=[1, 2])
    for i, r in enumerate(runs):
        r["metrics"] = {"acc": float("nan") if i == 0 else 0.5 + i / 10, **({"loss": 1.0} if i != 3 else {})}
    other = load(write_sweep(tmp_path / "other", runs, analysis={"group_by": []}))
    (tmp_path / "other.tex").write_text(latex(other, summary(other)))
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
        "\\begin{table}\\centering\\input{summary.tex}\\end{table}\n"
        "\\begin{table}\\centering\\input{other.tex}\\end{table}\n\\end{document}\n")
    res = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 0


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
