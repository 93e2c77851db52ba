"""`python main.py aggregate`: a sweep dir (complete or not) -> tables and figures for a paper.

    python main.py aggregate sweeps/ponder.yaml               # the spec's sweep dir, or give the dir
    python main.py aggregate results/ponder --format csv,md   # some formats only
    python -m analysis.aggregate results/ponder --out /tmp/ponder_tables

Writes under <sweep dir>/analysis/ (or --out):
    runs.csv                   one row per run: run_id, label, state, attempts, wall time, config, final metrics
    curves.csv                 every line of every metrics.jsonl, long form (run_id, then the logged keys)
    summary.csv / .md / .tex   per group of `analysis.group_by`: mean, std, n, 95% CI per metric
    <figure>.png / .pdf        each entry of `analysis.figures` (and <figure>.csv: a Pareto front)
A file is rewritten only when its bytes change, so a second call with no new results touches
nothing. Problems (a corrupt result.json, a missing metric, a figure that cannot be drawn) are
listed at the end as warnings; they never stop the rest.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from analysis import curves as curves_mod
from analysis import figures as figures_mod
from analysis import summary as summary_mod
from analysis.load import DONE, FAILED, PENDING, load
from jobs import atomic

FORMATS = ("csv", "md", "tex", "png", "pdf")
BLOCK = 16 << 20
WARNINGS_SHOWN = 8


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
    runs = sweep.runs
    drop = [c for c in ("in_plan", "error") if c == "in_plan" and runs["in_plan"].all()
            or c == "error" and runs["error"].isna().all()]
    return runs.drop(columns=drop).to_csv(index=False).encode()


def _formats(formats):
    if formats is None:
        return set(FORMATS)
    if isinstance(formats, str):
        formats = formats.split(",")
    chosen = {f.strip().lower().lstrip(".") for f in formats if f.strip()}
    unknown = chosen - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format {', '.join(sorted(unknown))}: choose from {','.join(FORMATS)}")
    return chosen


def aggregate(sweep_dir, out=None, formats=None, log=print, timings=None) -> list:
    """Write the tables and figures of a sweep dir; the paths written or left as they were.

    `formats`: any of csv, md, tex, png, pdf (a list or a comma string; default all).
    `timings`, when a dict, receives the seconds spent per phase (bench/aggregate.py prints them).
    """
    formats = _formats(formats)
    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(phase):
        nonlocal clock
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - clock
        clock = now

    sweep = load(sweep_dir)
    out = Path(out) if out else sweep.dir / "analysis"
    results = []

    def emit(name, data: bytes):
        path = out / name
        results.append((path, write_if_changed(path, data)))

    runs = sweep.runs
    n_state = runs.loc[runs["in_plan"], "state"].value_counts()
    log(f"{sweep.dir}: {int(runs['in_plan'].sum())} runs planned: {n_state.get(DONE, 0)} done, "
        f"{n_state.get(FAILED, 0)} failed, {n_state.get(PENDING, 0)} not finished")
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
    wants_logs = "csv" in formats or any(f["kind"] in ("curves", "hist") for f in figs)
    curves, data = None, b""
    if wants_logs:
        # ctx.restore cuts a resumed run's log back to its checkpoint; a run with several attempts
        # is still read line by line so that a task which never restores cannot double its steps
        jobs = [(rid, sweep.dir / "runs" / rid / "metrics.jsonl", attempts > 1)
                for rid, attempts in zip(runs["run_id"], runs["attempts"].fillna(1))]
        curves = curves_mod.read_curves(jobs)
        parts, curves.parts = curves.parts, []
        data = curves.header() + b"".join(parts)
        del parts
        for rid, bad in zip(runs["run_id"], curves.bad_lines):
            if bad:
                sweep.warn("log", f"runs/{rid}/metrics.jsonl: {bad} unreadable line(s) skipped")
        lap("curves read")
        if "csv" in formats:
            emit("curves.csv", data)
            lap("curves.csv write")

    if figs:
        lists = dict(zip(runs["run_id"], curves.lists)) if curves else {}
        frame_cache = {}

        def curve_frame(columns):
            key = tuple(columns)
            if key not in frame_cache:
                frame_cache[key] = curves_mod.frame(curves, data, columns)
            return frame_cache[key]

        for fig, name in zip(figs, figures_mod.names(figs)):
            try:
                f, tables = figures_mod.draw(sweep, fig, curve_frame=curve_frame, curve_lists=lambda r: lists.get(r, {}))
            except figures_mod.Skip as e:
                sweep.warn("figure", f"figure {name!r} ({fig['kind']}): not drawn: {e}")
                continue
            for fmt in ("png", "pdf"):
                if fmt in formats:
                    emit(f"{name}.{fmt}", figures_mod.to_bytes(f, fmt))
            for suffix, t in tables.items():
                if "csv" in formats:
                    emit(f"{name}{suffix}.csv", t.to_csv(index=False).encode())
        lap("figures")

    report(results, sweep.warnings, log)
    return [p for p, _ in results]


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
    if not any((sdir / name).exists() for name in ("spec.yaml", "plan.json", "runs")):
        print(f"error: {sdir} is not a sweep dir (no spec.yaml, plan.json or runs/)", file=sys.stderr)
        return 2
    try:
        aggregate(sdir, out=args.out, formats=args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
