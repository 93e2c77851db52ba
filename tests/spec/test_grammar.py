"""The sweep spec grammar: every value form, every error path, id stability, and the count arithmetic."""
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from jobs.spec import SpecError, load_sweep
from jobs.spec.grammar import run_id_of

REPO = Path(__file__).resolve().parents[2]

TOY = """
CONFIG = {"seed": 0, "method": "bp", "d_hidden": 256, "num_blocks": 4, "k": 4, "lr": 1e-3,
          "epochs": 10, "deep_supervision": False, "schedule": "constant", "weight": 0.5,
          "lambda_sparse": 0.0, "lambda_acyclic": 0.0, "ponder_coef": 1e-3, "data_dir": None,
          "act": "relu", "warmup": 0}
CHOICES = {"method": ["bp", "fa", "dfa"], "schedule": ["constant", "linear_decay", "exponential_decay"]}
"""


@pytest.fixture
def models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    (d / "toy.py").write_text(TOY)
    return d


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def sweep(tmp_path, models, text, **kw):
    return load_sweep(write(tmp_path, text), models_dir=models, **kw)


def error(tmp_path, models, text, **kw):
    with pytest.raises(SpecError) as e:
        sweep(tmp_path, models, text, **kw)
    return e.value


# ---------------------------------------------------------------- the five sweeps users write

def test_ponder_sweep_list_and_logspace(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid: {ponder_coef: [1e-4, 5e-4, 1e-3, 5e-3]}
        seeds: [1, 2, 3]
    """)
    assert len(s.runs) == 12
    assert s.axes["ponder_coef"] == [1e-4, 5e-4, 1e-3, 5e-3]
    s2 = sweep(tmp_path, models, """
        task: toy
        grid: {ponder_coef: {logspace: [-4, -2, 3]}}
    """)
    assert [r.config["ponder_coef"] for r in s2.runs] == [1e-4, 1e-3, 1e-2]


def test_multiseed_comparison(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid: {deep_supervision: [false, true]}
        seeds: [1, 2, 3]
    """)
    assert [r.label for r in s.runs][:2] == ["deep_supervision=False,seed=1", "deep_supervision=False,seed=2"]
    assert len({r.run_id for r in s.runs}) == 6


def test_k_ladder_union_of_grids(tmp_path, models):
    s = sweep(tmp_path, models, """
        name: depth_ladder
        task: toy
        base: {epochs: 100}
        grid:
          method: [bp, fa, dfa]
          arch:
            - {d_hidden: 256, num_blocks: 4, k: {range: [0, 5]}}
            - {d_hidden: 512, num_blocks: 2, k: {range: [0, 3]}}
        seeds: [42, 123, 456]
    """)
    assert len(s.runs) == 72
    ks = sorted({(r.config["d_hidden"], r.config["k"]) for r in s.runs})
    assert ks == [(256, k) for k in range(5)] + [(512, k) for k in range(3)]
    assert all(r.config["epochs"] == 100 for r in s.runs)
    assert s.runs[0].label == "method=bp,d_hidden=256,num_blocks=4,k=0,seed=42"


def test_lambda_grid(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid:
          lambda_sparse: [1e-4, 1e-3, 1e-2]
          lambda_acyclic: [1e-6, 1e-5, 1e-4]
    """)
    assert len(s.runs) == 9
    assert {(r.config["lambda_sparse"], r.config["lambda_acyclic"]) for r in s.runs} == \
        {(a, b) for a in (1e-4, 1e-3, 1e-2) for b in (1e-6, 1e-5, 1e-4)}


def test_schedules_by_weights_plus_a_baseline(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid:
          supervision:
            - {deep_supervision: true, schedule: [constant, linear_decay, exponential_decay], weight: [0.3, 0.5, 0.7]}
            - {deep_supervision: false}
        seeds: [1, 2]
    """)
    assert len(s.runs) == (9 + 1) * 2
    baseline = [r for r in s.runs if not r.config["deep_supervision"]]
    assert len(baseline) == 2 and all(r.config["weight"] == 0.5 for r in baseline)   # the default


# ---------------------------------------------------------------- value forms and combinators

def test_value_forms(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid:
          k: {range: [0, 10, 3]}
          lr: {linspace: [0.1, 0.3, 3]}
          weight: {geomspace: [0.01, 1, 3]}
          act: gelu
    """)
    assert s.axes["k"] == [0, 3, 6, 9]
    assert s.axes["lr"] == [0.1, 0.2, 0.3]
    assert s.axes["weight"] == [0.01, 0.1, 1.0]
    assert all(r.config["act"] == "gelu" for r in s.runs)
    assert "act" not in s.axes          # a scalar does not vary


def test_int_given_for_float_key_is_a_float(tmp_path, models):
    s = sweep(tmp_path, models, "task: toy\ngrid: {lr: [1, 2]}\n")
    assert [type(r.config["lr"]) for r in s.runs] == [float, float]


def test_zip_pairs_lists(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid:
          sched: {zip: {lr: [0.1, 0.01, 0.001], warmup: [0, 100, 1000]}}
          method: [bp, fa]
        zip: {d_hidden: [64, 128], num_blocks: [8, 4]}
    """)
    assert len(s.runs) == 3 * 2 * 2
    assert {(r.config["lr"], r.config["warmup"]) for r in s.runs} == {(0.1, 0), (0.01, 100), (0.001, 1000)}
    assert {(r.config["d_hidden"], r.config["num_blocks"]) for r in s.runs} == {(64, 8), (128, 4)}


def test_include_and_exclude_filter(tmp_path, models):
    s = sweep(tmp_path, models, """
        task: toy
        grid: {method: [bp, fa, dfa], k: {range: [0, 5]}}
        exclude:
          - {method: dfa, k: [3, 4]}
    """)
    assert len(s.runs) == 13
    s = sweep(tmp_path, models, """
        task: toy
        grid: {method: [bp, fa, dfa], k: {range: [0, 5]}}
        include:
          - {method: bp}
          - {k: 0}
    """)
    assert sorted((r.config["method"], r.config["k"]) for r in s.runs) == \
        sorted([("bp", k) for k in range(5)] + [("fa", 0), ("dfa", 0)])


def test_random_search_is_deterministic_and_in_bounds(tmp_path, models):
    text = """
        task: toy
        random:
          samples: 20
          seed: 7
          params:
            lr: {loguniform: [1.0e-5, 1.0e-2]}
            weight: {uniform: [0.0, 1.0]}
            act: {choice: [relu, gelu]}
            warmup: {randint: [0, 500]}
        seeds: [1, 2]
    """
    a, b = sweep(tmp_path, models, text), sweep(tmp_path, models, text)
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len(a.runs) == 40
    for r in a.runs:
        assert 1e-5 <= r.config["lr"] <= 1e-2 and 0 <= r.config["weight"] <= 1
        assert r.config["act"] in ("relu", "gelu") and 0 <= r.config["warmup"] < 500
    other = sweep(tmp_path, models, text.replace("seed: 7", "seed: 8"))
    assert {r.run_id for r in other.runs} != {r.run_id for r in a.runs}


def test_extends_makes_a_smoke_copy(tmp_path, models):
    write(tmp_path, """
        name: paper
        task: toy
        base: {epochs: 100, lr: 0.01}
        grid: {method: [bp, fa, dfa], k: {range: [0, 5]}}
        seeds: [1, 2, 3]
    """, "paper.yaml")
    s = sweep(tmp_path, models, """
        extends: paper.yaml
        base: {epochs: 1}
        seeds: [1]
    """)
    assert s.name == "s"                 # a child is its own sweep, named after its file
    assert len(s.runs) == 15
    assert all(r.config["epochs"] == 1 and r.config["lr"] == 0.01 for r in s.runs)
    s = sweep(tmp_path, models, "extends: paper.yaml\ngrid: {k: null}\n")
    assert len(s.runs) == 9              # `axis: null` drops the parent's axis


# ---------------------------------------------------------------- identity

def test_run_id_ignores_defaults(tmp_path, models):
    s = sweep(tmp_path, models, "task: toy\ngrid: {method: [bp, fa]}\n")
    ids = [r.run_id for r in s.runs]
    # adding an option with a default to the task keeps every id
    (models / "toy.py").write_text(TOY.replace('"warmup": 0}', '"warmup": 0, "new_option": 3}'))
    assert [r.run_id for r in sweep(tmp_path, models, "task: toy\ngrid: {method: [bp, fa]}\n").runs] == ids
    # stating a default explicitly is the same run
    assert sweep(tmp_path, models, "task: toy\nbase: {epochs: 10}\ngrid: {method: [bp, fa]}\n").runs[0].run_id == ids[0]
    # a different value is a different run, and the task is part of the identity
    assert run_id_of("toy", {"method": "fa", "lr": 1e-3}, {"lr": 1e-3}) != run_id_of("toy", {"method": "bp", "lr": 1e-3}, {"lr": 1e-3})
    assert run_id_of("a", {"x": 1}, {}) != run_id_of("b", {"x": 1}, {})


def test_run_ids_are_stable_across_processes(tmp_path, models):
    p = write(tmp_path, "task: toy\ngrid: {method: [bp, fa], lr: {logspace: [-4, -2, 3]}}\nseeds: [1, 2]\n")
    code = (f"from jobs.spec import load_sweep; from pathlib import Path; "
            f"print(' '.join(r.run_id for r in load_sweep({str(p)!r}, models_dir=Path({str(models)!r})).runs))")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"}).stdout for seed in (1, 2)}
    assert len(outs) == 1 and len(outs.pop().split()) == 12


# ---------------------------------------------------------------- errors name file, line, key

@pytest.mark.parametrize("text, line, key, words", [
    ("task: toy\ngrid:\n  method: [bp, fa\n", 4, None, "YAML syntax"),
    ("task: toy\ngrid:\n  methd: [bp, fa]\n", 3, "grid.methd", "did you mean 'method'"),
    ("task: toy\nbase: {epochs: ten}\n", 2, "base.epochs", "expected an integer"),
    ("task: toy\ngrid:\n  method: [bp, xa]\n", 3, "grid.method", "not one of"),
    ("task: toy\ngrid:\n  k: []\n", 3, "grid.k", "empty"),
    ("task: toy\ngrid:\n  k: {range: [0, 0]}\n", 3, "grid.k.range", "empty"),
    ("task: toy\ngrid:\n  k: {rnage: [0, 4]}\n", 3, "grid.k", "expected a list"),
    ("task: toy\ngrdi: {k: [1]}\n", 2, "grdi", "did you mean 'grid'"),
    ("task: tyo\n", 1, "task", "did you mean 'toy'"),
    ("name: 'a/../../b'\ntask: toy\n", 1, "name", "not a safe sweep name"),
    ("task: toy\ngrid:\n  act: [relu, \"gelu\\n#SBATCH --x\"]\n", 3, "grid.act", "control characters"),
    ("task: toy\ngrid:\n  act: [relu, '$(rm -rf ~)']\n", 3, "grid.act", "appears in run labels"),
    ("task: toy\ngrid:\n  k: [1, 2, 1]\n", 2, "grid", "duplicate runs"),
    ("task: toy\ngrid:\n  k: [1, 2]\n  arch:\n    - {k: 3}\n", 4, "grid.arch", "set by both"),
    ("task: toy\nbase: {k: 1}\ngrid:\n  k: [1, 2]\n", 2, "base.k", "both fixed in base and varied"),
    ("task: toy\ngrid:\n  k: {range: [0, 100]}\n  d_hidden: {range: [0, 100]}\n", 2, "grid", "over the cap"),
    ("task: toy\ngrid:\n  method: [bp]\nexclude: [{method: bp}]\n", 2, "grid", "no runs left"),
    ("task: toy\ngrid: {sched: {zip: {lr: [1, 2], warmup: [1]}}}\n", 2, "grid.sched.zip", "differ in length"),
    ("task: toy\nresources: {partition: \"gpu\\n#SBATCH --account=x\"}\n", 2, "resources.partition", "plain SLURM name"),
    ("task: toy\nresources: {time_min: -5}\n", 2, "resources.time_min", "positive"),
    ("task: toy\ncheckpoint: {keep_lst: 2}\n", 2, "checkpoint.keep_lst", "did you mean 'keep_last'"),
    ("task: toy\nrandom: {samples: 0, params: {lr: {uniform: [0, 1]}}}\n", 2, "random.samples", "positive"),
    ("task: toy\ntask: toy\n", 2, None, "duplicate key"),
    ("- a\n- b\n", 1, None, "must be a mapping"),
])
def test_errors_name_file_line_key(tmp_path, models, text, line, key, words):
    e = error(tmp_path, models, text, max_runs=1000)
    assert words in str(e)
    assert e.file is not None and Path(e.file).name == "s.yaml"
    assert e.line == line, str(e)
    if key:
        assert e.key == key, str(e)
        assert str(e).startswith(f"{e.file}:{line}: {key}: ")


def test_error_in_a_parent_names_the_parent(tmp_path, models):
    write(tmp_path, "task: toy\nbase:\n  epochs: ten\n", "parent.yaml")
    e = error(tmp_path, models, "extends: parent.yaml\nseeds: [1]\n")
    assert Path(e.file).name == "parent.yaml" and e.line == 3


def test_extends_loop_is_an_error(tmp_path, models):
    write(tmp_path, "extends: b.yaml\ntask: toy\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(SpecError, match="loops"):
        load_sweep(tmp_path / "a.yaml", models_dir=models)


def test_yaml_is_loaded_safely(tmp_path, models):
    e = error(tmp_path, models, "task: !!python/object/apply:os.system ['echo pwned']\n")
    assert "YAML" in str(e)


def test_cap_is_configurable(tmp_path, models):
    text = "task: toy\nmax_runs: 20000\ngrid: {k: {range: [0, 100]}, d_hidden: {range: [0, 100]}}\n"
    assert len(sweep(tmp_path, models, text).runs) == 10_000
    assert "over the cap of 50" in str(error(tmp_path, models, text, max_runs=50))


# ---------------------------------------------------------------- count arithmetic (property test)

scalar_lists = st.lists(st.integers(0, 50), min_size=1, max_size=4, unique=True)
KEYS = ["k", "d_hidden", "num_blocks", "epochs", "warmup"]


@st.composite
def grids(draw):
    """A random grid over distinct int keys: plain axes and union axes of sub-grids."""
    keys = list(KEYS)
    draw(st.randoms()).shuffle(keys)
    grid, expected = {}, 1
    while keys and draw(st.booleans()) or not grid:
        if len(keys) >= 2 and draw(st.booleans()):
            a, b = keys.pop(), keys.pop()
            entries, count = [], 0
            for _ in range(draw(st.integers(1, 3))):
                sub = {a: draw(scalar_lists)}
                sub_count = len(sub[a])
                if draw(st.booleans()):
                    sub[b] = draw(scalar_lists)
                    sub_count *= len(sub[b])
                entries.append(sub)
                count += sub_count
            grid[f"u_{a}"] = entries
            expected *= count
        else:
            key = keys.pop()
            values = draw(scalar_lists)
            grid[key] = values
            expected *= len(values)
    return grid, expected


@settings(max_examples=60, deadline=None)
@given(grids(), st.lists(st.integers(0, 10**6), min_size=1, max_size=3, unique=True))
def test_count_is_product_of_unions(tmp_path_factory, grid_expected, seeds):
    grid, expected = grid_expected
    tmp = tmp_path_factory.mktemp("p")
    models = tmp / "models"
    models.mkdir()
    (models / "toy.py").write_text(TOY)
    spec = tmp / "s.yaml"
    spec.write_text(json.dumps({"task": "toy", "grid": grid, "seeds": seeds}))   # JSON is YAML
    try:
        s = load_sweep(spec, models_dir=models, max_runs=10**7)
    except SpecError as e:
        # union entries may repeat a point (same values in two sub-grids): that must be the error
        assert "duplicate runs" in str(e)
        return
    assert len(s.runs) == expected * len(seeds)
    assert len({r.run_id for r in s.runs}) == len(s.runs)
    assert len({r.label for r in s.runs}) == len(s.runs)


# ---------------------------------------------------------------- the CLI

def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, capture_output=True, text=True)


def test_plan_cli_error_exits_nonzero_and_writes_nothing(tmp_path):
    bad = write(tmp_path, "task: resmlp\ngrid:\n  methd: [bp]\n")
    root = tmp_path / "root"
    r = run_cli("plan", str(bad), "--root", str(root))
    assert r.returncode == 2
    assert f"{bad}:3: grid.methd:" in r.stderr and "Traceback" not in r.stderr
    assert not root.exists()


@pytest.mark.parametrize("grid", [
    "{k: {range: [0, 1000000000000]}}",
    "{lr: {linspace: [0, 1, 100000000000]}}",
    "{lr: {logspace: [-5, 0, 100000000000]}}",
    "{arch: [{k: {range: [0, 100000]}, d_hidden: {range: [0, 100000]}}]}",
])
def test_an_over_cap_form_is_refused_before_it_is_materialised(tmp_path, models, grid):
    import time
    started = time.perf_counter()
    e = error(tmp_path, models, f"task: toy\ngrid: {grid}\n")
    assert "over the cap" in str(e) and time.perf_counter() - started < 1.0


def test_over_cap_random_samples_are_refused_at_once(tmp_path, models):
    import time
    started = time.perf_counter()
    e = error(tmp_path, models, "task: toy\nrandom: {samples: 100000000000, params: {lr: {uniform: [0, 1]}}}\n")
    assert "over the cap" in str(e) and e.key == "random.samples" and time.perf_counter() - started < 1.0


def test_a_spec_with_several_mistakes_is_told_of_all_of_them_at_once(tmp_path):
    p = tmp_path / "three.yaml"
    p.write_text("name: three\ntask: resmlp\nbsae: {epochs: 2}\nbase: {epoch: 2, lr: abc}\nresources: {mem_gb: -1}\n")
    with pytest.raises(SpecError) as e:
        load_sweep(p)
    lines = str(e.value).splitlines()
    assert lines[0] == "4 mistakes:" and len(e.value.errors) == 4
    assert [x.key for x in e.value.errors] == ["bsae", "base.epoch", "base.lr", "resources.mem_gb"]   # in file order
    assert all(f"{p}:" in line for line in lines[1:])
    assert "did you mean 'base'" in lines[1] and "did you mean 'epochs'" in lines[2]


def test_task_references_point_at_what_was_meant(tmp_path):
    (tmp_path / "digits_task.py").write_text("CONFIG = {'lr': 0.1}\n\ndef train(cfg, ctx):\n    return {}\n")
    short = tmp_path / "short.yaml"
    short.write_text("task: digits_task\n")
    with pytest.raises(SpecError, match=r"write `task: digits_task.py:train`"):
        load_sweep(short)
    typo = tmp_path / "typo.yaml"
    typo.write_text("task: digits_task.py:trian\n")
    with pytest.raises(SpecError, match=r"defines no function trian\(cfg, ctx\) \(did you mean 'train'\?\)"):
        load_sweep(typo)


@pytest.mark.parametrize("values", [[1, 1.0], [1, "1"], [1, True], [1, 1.0, True, "1"]])
def test_values_that_read_alike_in_labels_are_refused_naming_the_key(tmp_path, values):
    (tmp_path / "anytype.py").write_text("CONFIG = {'k': None}\n\ndef train(cfg, ctx):\n    return {}\n")
    path = tmp_path / "alike.yaml"
    path.write_text(json.dumps({"name": "alike", "task": "anytype.py:train", "grid": {"k": values}}))
    with pytest.raises(SpecError, match=r"alike.yaml:\d+: grid.k: .*read alike in run labels"):
        load_sweep(path)


def test_values_of_one_type_keep_their_labels(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text(json.dumps({"name": "fine", "task": "resmlp", "grid": {"k": [1, 2], "lr": [0.1, 1.0]}}))
    assert len({r.label for r in load_sweep(path).runs}) == 4
