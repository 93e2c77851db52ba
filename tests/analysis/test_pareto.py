"""The Pareto front against a brute-force one, in every direction, with ties, duplicates and NaN."""
import math

import numpy as np
from hypothesis import given, settings, strategies as st

from analysis.pareto import front


def brute_force(xs, ys, x_dir, y_dir):
    """Point i is on the front iff no j is at least as good in both and strictly better in one."""
    def better_eq(a, b, d):
        return a <= b if d == "min" else a >= b

    def strictly(a, b, d):
        return a < b if d == "min" else a > b

    out = []
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        if not (math.isfinite(xi) and math.isfinite(yi)):
            out.append(False)
            continue
        dominated = any(
            math.isfinite(xj) and math.isfinite(yj)
            and better_eq(xj, xi, x_dir) and better_eq(yj, yi, y_dir)
            and (strictly(xj, xi, x_dir) or strictly(yj, yi, y_dir))
            for j, (xj, yj) in enumerate(zip(xs, ys)) if j != i)
        out.append(not dominated)
    return np.array(out, dtype=bool)


# few distinct values, so ties and duplicates are common; NaN and inf now and then
value = st.one_of(st.integers(0, 6).map(float), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(value, value), max_size=25), st.sampled_from(["min", "max"]), st.sampled_from(["min", "max"]))
def test_front_matches_brute_force(points, x_dir, y_dir):
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    assert (front(xs, ys, x_dir, y_dir) == brute_force(xs, ys, x_dir, y_dir)).all()


def test_a_known_front():
    # cost (min) vs accuracy (max): (1, .5) (2, .7) (3, .9) are the front; (2, .6) and (4, .9) are dominated
    xs = [1, 2, 2, 3, 4]
    ys = [0.5, 0.7, 0.6, 0.9, 0.9]
    assert front(xs, ys, "min", "max").tolist() == [True, True, False, True, False]


def test_equal_points_do_not_dominate_each_other():
    assert front([1, 1], [2, 2]).tolist() == [True, True]
