"""`python main.py aggregate`: a sweep dir (complete or not) -> tables and figures for a paper.

    python main.py aggregate sweeps/ponder.yaml               # the spec's sweep dir, with the spec file's
                                                              # `analysis:` as it is now; or give the dir
    python main.py aggregate results/ponder --format csv,md   # some formats only
    python -m analysis.aggregate results/ponder --out /tmp/ponder_tables

Writes under <sweep dir>/analysis/ (or --out):
    runs.csv                   one row per run: run_id, label, state, stage, attempts, wall time, config,
                               final metrics, diverged
    summary.csv / .md / .tex   per group of `analysis.group_by`: mean, std, n, 95% CI per metric
    <figure>.png / .pdf        each entry of `analysis.figures` (and <figure>.csv: a Pareto front)
    report.html                one self-contained page: summary, figures, a timeline of every attempt,
                               usage and suggestions, provenance (analysis/report.py; format `html`)
    curves.csv                 only when asked (`--format csv,md,curves.csv`): every logged line, long form
Curves live as Parquet in <sweep dir>/analysis/.curves/ (analysis.curve_store: each run's metrics.jsonl
converted once, on the first read after it changed); `analysis.curves(path)` reads them as a DataFrame.
A file is rewritten only when its bytes change, so a second call with no new results touches
nothing (PNG and PDF carry no timestamp); a hidden index (.figures.index.json) holds a hash of what
the figures are drawn from, so they are not even drawn again while it matches.
Problems (a corrupt result.json, a figure with nothing to draw: it says why) are listed at the end
as warnings. A figure that names a key or metric that does not exist (with a did-you-mean), or
whose axis is a config key its grouping averages away, is an error naming the spec file, the
figure (analysis.figures[i]) and its key: the tables and the other figures are written, then
aggregate raises FigureErrors, a ValueError (`main.py aggregate` prints it and exits 1; a bad
--format or a path that is no sweep dir exits 2).
"""
from __future__ import annotations

import dataclasses

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from analysis import curve_store as curves_mod
from analysis import figures as figures_mod
from analysis import summary as summary_mod
from analysis.load import DONE, FAILED, PENDING, load
from jobs.store import SweepDir, atomic

FORMATS = ("csv", "md", "tex", "png", "pdf", "html")
ON_REQUEST = ("curves.csv",)            # written only when named in --format
BLOCK = 16 << 20
WARNINGS_SHOWN = 8


class FigureErrors(ValueError):
    """Mistakes in figures of the `analysis:` block (one line each); everything else was written."""


def same_bytes(path: Path, data: bytes) -> bool:
    """True when `path` holds exactly `data` (compared block by block; no second copy in memory)."""
    try:
        if path.stat().st_size != len(data):
            return False
        view = memoryview(data)
        with open(path, "rb") as f:
            for i in range(0, len(data), BLOCK):
                if f.read(BLOCK) != view[i:i + BLOCK]:
                    return False
        return True
    except OSError:
        return False


def _cpu() -> float:
    """CPU seconds of this process and its finished worker processes."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write atomically unless the file already holds these bytes; True when it was written."""
    if same_bytes(path, data):
        return False
    atomic.write_bytes(path, data)
    os.chmod(path, _file_mode())     # the temp file behind the atomic write is private (0600)
    return True


def runs_csv(sweep) -> bytes:
    runs = sweep.all_runs
    drop = [c for c in ("in_plan", "error") if c == "in_plan" and runs["in_plan"].all()
            or c == "error" and runs["error"].isna().all()]
    return runs.drop(columns=drop).to_csv(index=False).encode()


def _formats(formats):
    if formats is None:
        return set(FORMATS)
    if isinstance(formats, str):
        formats = formats.split(",")
    chosen = {f.strip().lower().lstrip(".") for f in formats if f.strip()}
    chosen = {"curves.csv" if f in ("curves.csv", "curves_csv") else f for f in chosen}
    unknown = chosen - set(FORMATS) - set(ON_REQUEST)
    if unknown:
        raise ValueError(f"unknown format {', '.join(sorted(unknown))}: choose from "
                         f"{','.join(FORMATS + ON_REQUEST)}")
    return chosen


def is_sweep_dir(path) -> bool:
    return SweepDir(path).is_sweep_dir()


def aggregate(sweep_dir, out=None, formats=None, log=print, timings=None, analysis=None, spec_file=None,
              runs=None) -> list:
    """Write the tables and figures of a sweep dir; the paths written or left as they were.

    `formats`: any of csv, md, tex, png, pdf (a list or a comma string; default all).
    `analysis`: an `analysis:` block to use instead of the one frozen in the sweep dir's spec.yaml
    (`main.py aggregate sweeps/x.yaml` passes the spec file's, so edits to it count).
    `spec_file`: where that block comes from, for the errors (default: the sweep dir's spec.yaml).
    `runs`: a set of run ids (--only / --stage): the tables and figures of those runs alone.
    `timings`, when a dict, receives the wall and CPU seconds per phase (bench/aggregate.py prints them).
    """
    formats = _formats(formats)
    timings = {} if timings is None else timings
    clock, cpu = time.perf_counter(), _cpu()

    def lap(phase):
        nonlocal clock, cpu
        now, cpu_now = time.perf_counter(), _cpu()
        timings[phase] = timings.get(phase, 0.0) + now - clock
        timings[f"{phase} cpu"] = timings.get(f"{phase} cpu", 0.0) + cpu_now - cpu
        clock, cpu = now, cpu_now

    sweep = load(sweep_dir, analysis=analysis)
    if runs is not None:
        def keep(frame):
            return frame[frame["run_id"].isin(set(runs))].reset_index(drop=True)
        sweep = dataclasses.replace(sweep, runs=keep(sweep.runs),
                                    all_runs=None if sweep.all_runs is None else keep(sweep.all_runs))
    out = Path(out) if out else sweep.dir / "analysis"
    results = []

    def emit(name, data: bytes):
        path = out / name
        results.append((path, write_if_changed(path, data)))

    runs = sweep.runs
    n_state = runs.loc[runs["in_plan"], "state"].value_counts()
    n_other = int(runs["in_plan"].sum()) - n_state.get(DONE, 0) - n_state.get(FAILED, 0)
    log(f"{sweep.dir}: {int(runs['in_plan'].sum())} runs planned: {n_state.get(DONE, 0)} done, "
        f"{n_state.get(FAILED, 0)} failed, {n_other} not finished")
    if not runs["in_plan"].all():
        sweep.warn("plan", f"{int((~runs['in_plan']).sum())} run dirs are not in plan.json (an earlier plan): "
                           f"listed in runs.csv and curves.csv, left out of the summary and figures")
    lap("load")

    if "csv" in formats:
        emit("runs.csv", runs_csv(sweep))
    table = summary_mod.summary(sweep)
    if "csv" in formats:
        emit("summary.csv", table.to_csv(index=False).encode())
    if "md" in formats:
        emit("summary.md", summary_mod.markdown(sweep, table).encode())
    if "tex" in formats:
        emit("summary.tex", summary_mod.latex(sweep, table).encode())
    lap("summary tables")

    figs = sweep.analysis["figures"] if formats & {"png", "pdf"} else []
    run_ids = list(runs["run_id"])
    table_cache = {}

    def curve_table():
        if "t" not in table_cache:
            table_cache["t"] = curves_mod.load(sweep.dir, run_ids)
            for rid, bad in table_cache["t"][1].items():
                if bad:
                    sweep.warn("log", f"runs/{rid}/metrics.jsonl: {bad} unreadable line(s) skipped")
        return table_cache["t"][0]

    if "curves.csv" in formats:
        frame = curves_mod.frame(curve_table())
        emit("curves.csv", frame.to_csv(index=False).encode())
        lap("curves.csv")

    if figs:
        logged = logged_reader(sweep, curve_table)
        key = _figures_key(sweep, figs, formats, run_ids)
        index_path = out / ".figures.index.json"
        done = _figures_unchanged(index_path, key, out)
        if done is not None:                 # same inputs, same code: the same bytes; not even drawn
            files, warnings = done
            results += [(out / name, False) for name in files]
            for w in warnings:
                sweep.warn("figure", w)
            lap("figures")
            figs = []

    errors = []
    if figs:
        global _FIGURE_JOB
        names = figures_mod.names(figs)
        try:
            source = spec_file or (SweepDir(sweep.dir).spec if analysis is None else None)
            _FIGURE_JOB = (sweep, figs, names, formats, logged, source,
                           sweep.analysis.get("figure_index") or list(range(len(figs))))
            rendered = [_render(i) for i in range(len(figs))]
        finally:
            _FIGURE_JOB = None
        written, warnings = [], []
        for (files, warning, error), name in zip(rendered, names):
            if not files:                 # not drawn this time: an image of an earlier call would mislead
                for fmt in ("png", "pdf"):
                    (out / f"{name}.{fmt}").unlink(missing_ok=True)
            if error:
                errors.append(error)
            if warning:
                sweep.warn("figure", warning)
                warnings.append(warning)
            for name, data in files:
                emit(name, data)
                written.append(name)
        index = {"key": key, "warnings": warnings,
                 "files": [[name, (out / name).stat().st_size, (out / name).stat().st_mtime_ns] for name in written]}
        if not errors:
            write_if_changed(index_path, json.dumps(index, sort_keys=True).encode())
        lap("figures")

    if formats & {"png", "pdf", "csv"}:
        _search_outputs(sweep, formats, emit)
        lap("search")

    if "html" in formats:               # last: it inlines the figures just written
        from analysis import report as report_mod
        pngs = [p.name for p, _ in results if p.suffix == ".png" and p.exists()]
        emit("report.html", report_mod.render(sweep, table, out, pngs))
        lap("report.html")

    report(results, sweep.warnings, log)
    if errors:
        raise FigureErrors("\n".join(errors))
    return [p for p, _ in results]


def _search_outputs(sweep, formats, emit) -> None:
    """A search stage's rung results (search_<stage>.csv) and its figure (search_<stage>.png/.pdf)."""
    from analysis import search as search_mod
    labels = {}
    for frame in (sweep.all_runs, sweep.runs):
        if frame is not None and len(frame):
            labels.update(zip(frame["run_id"], frame["label"]))
    for stage, block in search_mod.searches(sweep.spec):
        frame = search_mod.rung_results(sweep.dir, stage, labels)
        if frame.empty:
            continue
        if "csv" in formats:
            emit(f"search_{stage}.csv", frame.to_csv(index=False).encode())
        f = search_mod.figure(frame, block, stage)
        for fmt in ("png", "pdf"):
            if fmt in formats:
                emit(f"search_{stage}.{fmt}", figures_mod.to_bytes(f, fmt))


def logged_reader(sweep, curve_table=None):
    """A function (positions, columns) -> (lines of the runs at `positions` of sweep.runs: a
    DataFrame with `run` = position and the logged `columns` (and any list-valued ones);
    {position: {list metric: the last list it logged}}), reading the curves once."""
    runs = sweep.runs
    if curve_table is None:
        held = {}

        def curve_table():
            if "t" not in held:
                held["t"] = curves_mod.load(sweep.dir, list(runs["run_id"]))[0]
            return held["t"]
    cache = {}

    def logged(positions, columns):
        key = (tuple(positions), tuple(columns))
        if key not in cache:
            table = curve_table()
            pos_of = {runs.at[p, "run_id"]: p for p in positions}
            lists_cols = [c for c in table.column_names if curves_mod.is_list_type(table.schema.field(c).type)]
            keep = [c for c in table.column_names if c == "run_id" or c in columns or c in lists_cols]
            df = curves_mod.frame(curves_mod.select_runs(table.select(keep), set(pos_of)))
            df.insert(0, "run", df["run_id"].map(pos_of))
            lists = {}
            for c in lists_cols:
                last = df[["run", c]].dropna().drop_duplicates("run", keep="last")
                for p, v in zip(last["run"], last[c]):
                    lists.setdefault(p, {})[c] = list(v)
            cols = ["run"] + [c for c in columns if c in df.columns and c != "run_id"]
            cols += [c for c in df.columns if c not in cols and c != "run_id"]
            cache[key] = (df[list(dict.fromkeys(cols))].reset_index(drop=True), lists)
        return cache[key]
    # every key any run logged: a figure's misspelt one gets a did-you-mean from all of them
    logged.columns = lambda: [c for c in curve_table().column_names if c != "run_id"]
    return logged


def _figures_key(sweep, figs, formats, run_ids) -> str:
    """A hash of everything the figures are drawn from: the runs table, list metrics, the figure
    specs and labels, the logs' sizes and mtimes, and the code that draws them."""
    h = hashlib.sha256()
    h.update(sweep.runs.to_csv(index=False).encode())
    h.update(json.dumps([figs, sorted(formats), sweep.analysis, sweep.lists], sort_keys=True, default=str).encode())
    if any(f["kind"] in ("curves", "hist", "logged_hist", "logged_heatmap") for f in figs):
        sdir = SweepDir(sweep.dir)
        h.update(json.dumps([curves_mod.stat_of(p) for p in sdir.metrics_files(run_ids).values()]).encode())
    import matplotlib
    h.update(matplotlib.__version__.encode())
    for module in (figures_mod, summary_mod, curves_mod):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def _figures_unchanged(index_path, key, out):
    """(file names, warnings) of the last call when its key was this one and its files are as it
    left them (size and mtime), else None."""
    try:
        index = json.loads(index_path.read_bytes())
        if index.get("key") != key:
            return None
        for name, size, mtime in index["files"]:
            st = (out / name).stat()
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return None
        return [name for name, *_ in index["files"]], list(index["warnings"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


_FIGURE_JOB = None          # what _render needs, set before worker processes are forked


def _render(i):
    """Figure i of the job as ([(file name, bytes)], warning or None, error or None): a figure
    with nothing to draw is a warning; a mistake in the figure's spec is an error."""
    sweep, figs, names, formats, logged, source, at = _FIGURE_JOB
    fig, name = figs[i], names[i]
    try:
        f, tables = figures_mod.draw(sweep, fig, logged=logged)
        files = [(f"{name}.{fmt}", figures_mod.to_bytes(f, fmt)) for fmt in ("png", "pdf") if fmt in formats]
        files += [(f"{name}{suffix}.csv", t.to_csv(index=False).encode())
                  for suffix, t in tables.items() if "csv" in formats]
        return files, None, None
    except figures_mod.Skip as e:
        return [], f"figure {name!r} ({fig['kind']}): not drawn: {e}", None
    except figures_mod.FigureError as e:
        key = f"analysis.figures[{at[i]}]" + (f".{e.key}" if e.key else "")
        return [], None, (f"{str(source) + ': ' if source else ''}{key}: {e.message} "
                          f"(figure {name!r}, {fig['kind']}; not drawn)")
    except Exception as e:            # a bug or an odd sweep: say so, write the rest
        return [], f"figure {name!r} ({fig['kind']}): failed: {type(e).__name__}: {e}", None


def report(results, warnings, log=print):
    """The paths (written or unchanged), then the warnings grouped by kind."""
    written = sum(changed for _, changed in results)
    for path, changed in results:
        log(f"  {'wrote    ' if changed else 'unchanged'} {path}")
    log(f"{written} written, {len(results) - written} unchanged")
    if not warnings:
        return
    log(f"warnings ({len(warnings)}):")
    by_kind = {}
    for kind, text in warnings:
        by_kind.setdefault(kind, []).append(text)
    for kind, texts in by_kind.items():
        for text in texts[:WARNINGS_SHOWN]:
            log(f"  - {text}")
        if len(texts) > WARNINGS_SHOWN:
            log(f"  - ... and {len(texts) - WARNINGS_SHOWN} more like these ({kind})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.aggregate", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", help="a sweep dir (holding spec.yaml, plan.json, runs/)")
    p.add_argument("--out", help="where to write (default: <sweep dir>/analysis)")
    p.add_argument("--format", help=f"comma list of {','.join(FORMATS)} (default: all)")
    args = p.parse_args(argv)
    sdir = Path(args.sweep_dir)
    if not is_sweep_dir(sdir):
        print(f"error: {sdir} is not a sweep dir (no spec.yaml, plan.json or runs/)", file=sys.stderr)
        return 2
    try:
        aggregate(sdir, out=args.out, formats=args.format)
    except FigureErrors as e:
        for line in str(e).splitlines():           # one per figure
            print(f"error: {line}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
