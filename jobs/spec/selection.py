"""Which runs a command is about: `--only` (run ids, labels, key=value pairs) and `--stage`.

    runs = select(sweep, only=["lr=0.1,seed=2", "a1b2c3"], stage="train")

Every command that reads a sweep selects its runs here, so `--only` means the same everywhere.
"""
from __future__ import annotations

from jobs.spec.errors import SpecError, did_you_mean
from jobs.spec.grammar import format_value


def matches(run, only: str) -> bool:
    """A run_id, a label, or key=value pairs (any order) that the run's config / varied values match."""
    if only in (run.run_id, run.label):
        return True
    values = {**run.varied, **run.config}
    try:
        pairs = dict(part.split("=", 1) for part in only.split(",") if part)
    except ValueError:
        return False
    return bool(pairs) and all(k in values and (format_value(values[k]) == v or str(values[k]) == v)
                               for k, v in pairs.items())


def select(sweep, only=(), stage=None) -> list:
    """The runs of `sweep` (in sweep order) of `stage` that match any of `only` (all when empty).
    SpecError naming the value when a stage is unknown or an --only matches no run: a typo must not
    quietly act on nothing (or, for cancel, on everything)."""
    runs = list(sweep.runs)
    if stage:
        names = [s.name for s in sweep.stages]
        if stage not in names:
            raise SpecError(f"--stage {stage}: no such stage in {sweep.path} (stages: {', '.join(names)})"
                            f"{did_you_mean(stage, names)}")
        runs = [r for r in runs if r.stage == stage]
    if not only:
        return runs
    for value in only:
        if not any(matches(r, value) for r in runs):
            labels = [r.label or r.run_id for r in runs]
            raise SpecError(f"--only {value}: no run{' of stage ' + stage if stage else ''} of {sweep.name} matches "
                            f"(a run_id, a label, or key=value pairs in any order){did_you_mean(value, labels)}")
    return [r for r in runs if any(matches(r, value) for value in only)]
