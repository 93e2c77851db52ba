"""Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel Hyperparameter
Tuning", 2018, Algorithm 2), as a pure function of the rung results recorded so far.

Rung r trains a trial to budget min * reduction**r (the last rung to max). Whenever a worker is
free it asks `decide`: from the highest rung down, a trial that is among the top
floor(n / reduction) of the n results at its rung and has not been promoted yet is promoted to the
next rung (the best such one); if there is none, a new trial starts at rung 0 while fewer than
`trials` were started; otherwise there is nothing to do. No rung waits for another to fill: a
promotion is taken as soon as the results at hand allow it, so a promotion can be one that a
synchronous halving with every result in hand would not make (the paper's trade for no idle workers).

Ties rank by the order results landed. A value that is not a number (NaN, missing) ranks last.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Decision(NamedTuple):
    kind: str          # "promote" | "start"
    trial: int         # the trial's index (0-based, in sampling order)
    rung: int          # the rung it now trains to


def ranked(results, mode="min") -> list:
    """[(trial, value)] of one rung, best first; `results` in the order they landed."""
    sign = 1.0 if mode == "min" else -1.0

    def key(item):
        pos, (trial, value) = item
        bad = not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
        return (bad, 0.0 if bad else sign * float(value), pos)

    return [tv for _, tv in sorted(enumerate(results), key=key)]


def top(results, reduction, mode="min") -> list:
    """The trials among the top floor(n / reduction) of a rung's n results, best first."""
    keep = len(results) // reduction
    return [t for t, _ in ranked(results, mode)[:keep]]


def decide(results, promoted, running, started, trials, reduction, n_rungs, mode="min"):
    """The next thing a free worker does, or None.

    results:  [rung] -> [(trial, value)] in landing order
    promoted: [rung] -> set of trials promoted out of that rung
    running:  trials some worker holds now (never promoted twice at once)
    started:  how many trials have started (trial i starts as the i-th)
    """
    for rung in range(n_rungs - 2, -1, -1):
        for trial in top(results[rung], reduction, mode):
            if trial not in promoted[rung] and trial not in running:
                return Decision("promote", trial, rung + 1)
    if started < trials:
        return Decision("start", started, 0)
    return None


def nominal_budget(trials, rungs, reduction) -> int:
    """What synchronous successive halving spends: floor(trials / reduction**r) trials reach rung r,
    each training only the difference to the rung before (it continues from its checkpoint)."""
    total, before = 0, 0
    for r, b in enumerate(rungs):
        total += (trials // reduction ** r) * (b - before)
        before = b
    return total


def largest_budget(trials, rungs, reduction) -> int:
    """The most ASHA can spend: asynchronous promotion takes the top 1/reduction of the results at
    hand, so a rung's promotions can exceed floor(n / reduction) when better results arrive after a
    promotion; at most n - reduction + 1 of a rung's n trials are ever promoted."""
    total, before, n = 0, 0, trials
    for b in rungs:
        total += n * (b - before)
        before = b
        n = max(0, n - reduction + 1)
    return total
