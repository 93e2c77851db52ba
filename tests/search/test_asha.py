"""ASHA's decisions as a pure function, the rung schedule and budgets, and the spec's `search:` block."""
import json

import pytest

from jobs.search import asha
from jobs.spec import SpecError, load_sweep
from jobs.spec.settings import Budget

from tests.search.journal_check import expected

CURVE = "tests/fixtures/tasks/curve.py:train"


def test_rungs_grow_by_the_reduction_and_end_at_max():
    assert Budget(key="epochs", min=1, max=27, reduction=3).rungs() == [1, 3, 9, 27]
    assert Budget(key="epochs", min=2, max=20, reduction=3).rungs() == [2, 6, 18, 20]


def test_a_promotion_needs_reduction_results_and_takes_the_best_unpromoted():
    results = [[(0, 5.0), (1, 1.0)], [], []]
    promoted = [set(), set(), set()]
    # two results at rung 0 with reduction 3: floor(2/3) = 0 promotable, so a new trial starts
    assert asha.decide(results, promoted, set(), 2, 9, 3, 3) == ("start", 2, 0)
    results[0].append((2, 3.0))
    assert asha.decide(results, promoted, set(), 3, 9, 3, 3) == ("promote", 1, 1)
    promoted[0].add(1)
    assert asha.decide(results, promoted, set(), 3, 9, 3, 3) == ("start", 3, 0)
    # mode max ranks the other way
    assert asha.decide(results, [set()] * 3, set(), 3, 9, 3, 3, mode="max") == ("promote", 0, 1)
    # nothing left: every trial started, none promotable
    assert asha.decide(results, promoted, set(), 9, 9, 3, 3) is None


def test_higher_rungs_come_first_and_running_trials_are_not_promoted():
    results = [[(t, float(t)) for t in range(9)], [(0, 0.5), (1, 0.1), (2, 0.9)], []]
    promoted = [{0, 1, 2}, set(), set()]
    assert asha.decide(results, promoted, set(), 9, 9, 3, 3) == ("promote", 1, 2)
    assert asha.decide(results, promoted, {1}, 9, 9, 3, 3) is None


def test_nan_ranks_last():
    assert [t for t, _ in asha.ranked([(0, float("nan")), (1, 2.0), (2, 1.0)])] == [2, 1, 0]
    assert [t for t, _ in asha.ranked([(0, float("nan")), (1, 2.0), (2, 1.0)], mode="max")] == [1, 2, 0]


def test_the_engine_and_the_independent_check_agree_on_random_histories():
    import random
    rng = random.Random(3)
    for _ in range(200):
        n_rungs, trials, eta = rng.randint(2, 4), rng.randint(1, 12), rng.randint(2, 4)
        results = [[(rng.randrange(trials), rng.choice([rng.random(), float("nan")])) for _ in range(rng.randint(0, 8))]
                   for _ in range(n_rungs)]
        promoted = [set(rng.sample(range(trials), rng.randint(0, trials))) for _ in range(n_rungs)]
        running = set(rng.sample(range(trials), rng.randint(0, min(3, trials))))
        started = rng.randint(0, trials)
        assert tuple(asha.decide(results, promoted, running, started, trials, eta, n_rungs) or ()) == \
            tuple(expected(results, promoted, running, started, trials, eta, n_rungs, "min") or ())


def test_budgets_printed_by_plan():
    rungs = [1, 3, 9, 27]
    assert asha.nominal_budget(27, rungs, 3) == 27 * 1 + 9 * 2 + 3 * 6 + 1 * 18
    assert asha.largest_budget(27, rungs, 3) == 27 * 1 + 25 * 2 + 23 * 6 + 21 * 18


def _spec(tmp_path, **search):
    block = {"method": "asha", "metric": "val_loss", "budget": {"key": "epochs", "min": 1, "max": 27},
             "trials": 9, "parallel": 3, "space": {"lr": {"loguniform": [1e-4, 1e-1]}, "width": {"choice": [16, 64]}}}
    block.update(search)
    p = tmp_path / "s.yaml"
    p.write_text(json.dumps({"name": "s", "task": str(__import__("pathlib").Path(CURVE.split(":")[0]).resolve()) + ":train",
                             "search": block, "seeds": [1]}))
    return p


def test_trials_are_runs_whose_id_leaves_out_the_budget(tmp_path):
    sweep = load_sweep(_spec(tmp_path))
    assert len(sweep.runs) == 9 and all(r.config["epochs"] == 1 for r in sweep.runs)
    again = load_sweep(_spec(tmp_path, budget={"key": "epochs", "min": 3, "max": 81}))
    assert [r.run_id for r in again.runs] == [r.run_id for r in sweep.runs]      # the same trials, trained further
    assert all(r.config["epochs"] == 3 for r in again.runs)


def test_tpe_trials_are_numbered_slots(tmp_path):
    sweep = load_sweep(_spec(tmp_path, method="tpe", trials=5))
    assert [r.label for r in sweep.runs] == [f"trial={i}" for i in range(5)]
    assert len({r.run_id for r in sweep.runs}) == 5
    assert all(r.config["epochs"] == 27 for r in sweep.runs)


@pytest.mark.parametrize("change, says", [
    ({"method": "hyperband"}, "search.method"),
    ({"budget": {"key": "epoch", "min": 1, "max": 27}}, "unknown key 'epoch'"),
    ({"budget": {"key": "epochs", "min": 9, "max": 3}}, "must be below max"),
    ({"budget": None}, "asha needs budget"),
    ({"space": {"lr": {"loguniform": [0, 1]}}}, "positive"),
    ({"space": {"depth": {"choice": [1, 2]}}}, "unknown key 'depth'"),
    ({"space": {"epochs": {"choice": [1, 2]}}}, "raised by promotion"),
    ({"trials": 0}, "search.trials"),
    ({"mode": "minimise"}, "search.mode"),
])
def test_a_bad_search_block_is_named(tmp_path, change, says):
    with pytest.raises(SpecError) as e:
        load_sweep(_spec(tmp_path, **change))
    assert says in str(e.value), str(e.value)
