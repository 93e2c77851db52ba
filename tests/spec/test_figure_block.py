"""analysis.schema.check: every problem of an `analysis:` block, with a key path and a did-you-mean."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.spec.figures import FIGURE_KEYS, check, normalize

REPO = Path(__file__).resolve().parents[2]

FULL = {
    "group_by": ["method", "d_hidden", "k"],
    "metrics": ["test_acc"],
    "error": "std",
    "decimals": {"test_acc": 3},
    "units": {"wall_time_s": "s", "macs": "MACs"},
    "labels": {"test_acc": "Test accuracy"},
    "figures": [
        {"kind": "ladder", "x": "k", "y": "test_acc", "hue": "method", "facet": "d_hidden"},
        {"kind": "line", "x": "ponder_coef", "y": "test_acc", "hue": "method", "logx": True},
        {"kind": "pareto", "x": "mean_ponder_steps", "y": "test_acc", "x_dir": "min", "y_dir": "max", "hue": "method"},
        {"kind": "curves", "y": "loss", "x": "step", "hue": "method", "error": "ci95"},
        {"kind": "heatmap", "x": "lambda_sparse", "y": "lambda_acyclic", "z": "shd", "name": "shd_grid"},
        {"kind": "hist", "y": "router_weights", "hue": "method", "bins": 20, "where": {"k": [1, 2]}},
    ],
}


def test_a_full_block_and_no_block_are_fine():
    assert check(FULL) == []
    assert check(None) == []
    assert check({}) == []


def test_every_spec_in_sweeps_has_a_valid_analysis_block():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        block = (yaml.safe_load(path.read_text()) or {}).get("analysis")
        assert check(block) == [], path.name


@pytest.mark.parametrize("block, where, words", [
    ([1], "", "expected a mapping"),
    ({"groupby": ["k"]}, "groupby", "did you mean 'group_by'"),
    ({"group_by": 3}, "group_by", "expected a list"),
    ({"error": "stderr"}, "error", "std, sem, ci95"),
    ({"decimals": -1}, "decimals", "integer"),
    ({"units": ["s"]}, "units", "mapping"),
    ({"labels": {"k": 3}}, "labels.k", "expected text"),
    ({"figures": {"kind": "ladder"}}, "figures", "list of figures"),
    ({"figures": ["ladder"]}, "figures[0]", "expected a mapping"),
    ({"figures": [{"x": "k", "y": "a"}]}, "figures[0]", "missing key 'kind'"),
    ({"figures": [{"kind": "ladr", "x": "k", "y": "a"}]}, "figures[0].kind", "did you mean 'ladder'"),
    ({"figures": [{"kind": "ladder", "x": "k"}]}, "figures[0]", "missing key 'y'"),
    ({"figures": [{"kind": "heatmap", "x": "a", "y": "b"}]}, "figures[0]", "missing key 'z'"),
    ({"figures": [{"kind": "ladder", "x": "k", "y": "a", "colour": "red"}]}, "figures[0].colour", "unknown key"),
    ({"figures": [{"kind": "ladder", "x": "k", "y": "a", "hues": "m"}]}, "figures[0].hues", "did you mean 'hue'"),
    ({"figures": [{"kind": "ladder", "x": "k", "y": "a", "logx": "yes"}]}, "figures[0].logx", "true or false"),
    ({"figures": [{"kind": "pareto", "x": "c", "y": "a", "x_dir": "down"}]}, "figures[0].x_dir", "min or max"),
    ({"figures": [{"kind": "heatmap", "x": "a", "y": "b", "z": "c", "hue": "m"}]}, "figures[0].hue", "unknown key"),
    ({"figures": [{"kind": "hist", "y": "w", "bins": 0}]}, "figures[0].bins", "integer from 1"),
    ({"figures": [{"kind": "hist", "y": "w", "name": "a/b"}]}, "figures[0].name", "file stem"),
    ({"figures": [{"kind": "hist", "y": "w", "where": {"k": {"a": 1}}}]}, "figures[0].where", "mapping"),
    ({"figures": [{"kind": "hist", "y": "w", "name": "n"}, {"kind": "hist", "y": "v", "name": "n"}]},
     "figures[1].name", "already the name of figures[0]"),
])
def test_each_problem_is_named_with_its_key_path(block, where, words):
    problems = check(block)
    assert any(path == where and words in message for path, message in problems), problems


def test_every_problem_is_reported_not_only_the_first():
    problems = check({"groupby": [], "error": "x", "figures": [{"kind": "ladr"}, {"kind": "line", "x": 1}]})
    assert {p for p, _ in problems} >= {"groupby", "error", "figures[0].kind", "figures[1].x", "figures[1]"}


def test_every_kind_lists_its_required_keys_in_the_message():
    for kind, (required, _) in FIGURE_KEYS.items():
        problems = check({"figures": [{"kind": kind}]})
        assert len(problems) == len(required), (kind, problems)


def test_normalize_fills_defaults_and_drops_what_check_rejects():
    block = normalize({"group_by": "method", "error": "bad", "figures": [
        {"kind": "ladder", "x": "k", "y": "a", "logx": "yes"}, {"kind": "ladr"}, {"kind": "hist"}]})
    assert block["group_by"] == ["method"] and block["metrics"] is None and block["error"] == "std"
    assert block["figures"] == [{"kind": "ladder", "x": "k", "y": "a"}]
    assert block["figure_index"] == [0]
    block = normalize({"figures": [{"kind": "ladr"}, {"kind": "hist"}, {"kind": "hist", "y": "w"},
                                   {"kind": "pareto", "x": "c", "y": "a", "x_dir": "down"}]})
    assert block["figures"] == [{"kind": "hist", "y": "w"}, {"kind": "pareto", "x": "c", "y": "a"}]
    assert block["figure_index"] == [2, 3]          # where each is in the list as written
    assert normalize(None)["figures"] == [] and normalize(None)["group_by"] is None


def test_the_schema_imports_neither_pandas_nor_matplotlib():
    code = ("import sys; import jobs.spec.figures; "
            "bad = [m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
