"""TPE (Optuna's TPESampler) asked and told by the jobs where results land.

The study lives in a journal file in the sweep dir (Optuna's JournalFileBackend), so nothing runs
but the jobs, and it works offline. Each ask builds a fresh sampler seeded with the search's seed
plus the trial's index: a sampler's random start-up draws would otherwise repeat in every job (each
job is a fresh process). The engine holds the search's lock around every ask and tell.
"""
from __future__ import annotations

import math


def distributions(space: dict) -> dict:
    """The spec's space ({key: {uniform|loguniform|choice|randint: ...}}) as Optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for key, dist in space.items():
        form, args = next(iter(dist.items()))
        if form == "choice":
            out[key] = CategoricalDistribution(list(args))
        elif form == "randint":
            out[key] = IntDistribution(int(args[0]), int(args[1]) - 1)      # high excluded, as in `random:`
        else:
            out[key] = FloatDistribution(float(args[0]), float(args[1]), log=form == "loguniform")
    return out


def _study(path, search, index):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    sampler = optuna.samplers.TPESampler(seed=search.seed + index)
    return optuna.create_study(study_name="search", storage=storage, sampler=sampler, load_if_exists=True,
                               direction="minimize" if search.mode == "min" else "maximize")


def ask(path, search, index) -> tuple[int, dict]:
    """(Optuna's trial number, the sampled values) for trial `index`."""
    trial = _study(path, search, index).ask(distributions(search.space))
    return trial.number, {k: _plain(v) for k, v in trial.params.items()}


def tell(path, search, number, value) -> None:
    """The trial's result (None or not finite: failed, so TPE does not model it)."""
    import optuna
    study = _study(path, search, 0)
    if value is None or not math.isfinite(value):
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(number, value)


def _plain(v):
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v
