"""Results as pandas DataFrames, from any directory:

    import analysis
    runs = analysis.runs("sweeps/ponder.yaml")            # or a sweep dir: analysis.runs("results/ponder")
    runs.groupby("ponder_coef")["test_acc"].agg(["mean", "std", "count"])
    curves = analysis.curves("results/ponder", metrics=["loss"])
    curves["method"] = curves.run_id.map(runs.set_index("run_id")["method"])   # run_id: categorical
    curves.groupby(["method", "step"])["loss"].mean()

`runs(path)`: one row per run: run_id, label, state (jobs.store.RunState: done, failed, pending,
corrupt result, new), stage, attempts, wall_time_s, finished, the config keys (from each run's
frozen config.yaml), the final metrics (NaN / inf kept as floats), diverged (any final metric
non-finite), error (a failed run's last traceback line), in_plan (False: a run dir of an earlier plan),
and once `usage` or `aggregate` read the accounting, usage_* columns (usage_elapsed_s, usage_cpu_eff,
usage_max_rss_mb, usage_req_mem_mb, usage_gpu_hours, usage_queue_wait_s, usage_requeues...: docs/usage.md).
`curves(path, metrics=None, dtype_backend="numpy")`: every logged line, long form: run_id (categorical), step,
time, one column per logged metric (`metrics` picks some; a name no run logged is an error with a
did-you-mean); `dtype_backend="pyarrow"` gives Arrow-backed columns without a copy (a metric a line
did not log is <NA> there, NaN in the numpy backend).

`path` is a sweep dir or a spec file; a spec file's sweep dir is <root>/<sweep name> with root =
`root=` if given, else $HPCSWEEP_ROOT, else ./results, relative to the current directory.
Curves are read through a Parquet cache under <sweep dir>/analysis/.curves/ (see analysis.curve_store).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["runs", "curves", "sweep_dir_of"]


def sweep_dir_of(path, root=None) -> Path:
    """The sweep dir a path means: the path itself, or a spec file's <root>/<name>."""
    from jobs.store import SweepDir, project_top, registry, root_dir
    p = Path(path).expanduser()
    if p.is_file():
        from jobs.spec import load_sweep
        name = load_sweep(p, registry=registry.read(registry.path(project_top(p)))).name
        return SweepDir.under(root_dir(root, spec=p), name).path
    if not SweepDir(p).is_sweep_dir():
        raise FileNotFoundError(f"{p}: not a sweep dir (no spec.yaml, plan.json or runs/) nor a spec file")
    return p


def runs(path, root=None):
    """One row per run as a pandas DataFrame (see the module docstring)."""
    from analysis.load import load
    return load(sweep_dir_of(path, root)).all_runs.reset_index(drop=True)


def curves(path, metrics=None, root=None, cache=True, dtype_backend="numpy"):
    """Every logged line as a long pandas DataFrame: run_id, step, time, one column per metric
    (`dtype_backend="pyarrow"`: Arrow columns, no copy; see analysis.curve_store.frame)."""
    from analysis import curve_store
    from jobs.store import SweepDir
    sdir = SweepDir(sweep_dir_of(path, root))
    wanted = None if metrics is None else ([metrics] if isinstance(metrics, str) else list(metrics))

    def pick(table):                   # run while the cache's new parts are written
        if wanted is not None:
            from jobs.spec import did_you_mean
            known = [c for c in table.column_names if c not in curve_store.INDEX]
            unknown = [m for m in wanted if m not in table.column_names]
            if unknown:
                raise KeyError(f"{unknown[0]!r} was logged by no run{did_you_mean(unknown[0], known)}; "
                               f"logged: {', '.join(known) or 'nothing'}")
            table = table.select([c for c in table.column_names if c in curve_store.INDEX or c in wanted])
        return curve_store.frame(table, dtype_backend)
    curve_store.check_backend(dtype_backend)           # before the work, not after it
    df = curve_store.load(sdir, curve_store.run_ids(sdir) if cache else sdir.run_ids(), cache=cache, finish=pick)[0]
    if cache:
        curve_store.keep_run_ids(sdir)
    return df
