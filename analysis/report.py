"""report.html: one self-contained page of a sweep, written by `aggregate` next to its tables.

    python main.py aggregate sweeps/x.yaml                   # <sweep dir>/analysis/report.html
    python main.py aggregate sweeps/x.yaml --format csv,md   # without it (`html` is the report's format)

What it shows: the runs by state, the summary table, every PNG figure, a timeline of every attempt
(a bar per attempt from its start to its end, coloured by how it ended, with the time its job
waited in the queue before it in grey where the scheduler's accounting says), the usage table with
its suggestions (the sweep dir's usage record, as `usage` and `aggregate` last read it), and the
provenance (hpcsweep's and the task's code, packages, submissions).

Nothing is fetched when it is opened: the images are inline (base64), the styles are inline, the
timeline is an SVG drawn here; no script. It opens from a login node or on a laptop it was copied
to. The bytes depend only on what the sweep dir holds, so an aggregate with nothing new leaves it as it was.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from jobs.store import SweepDir, atomic

COLOURS = {"done": "#2e7d32", "interrupted": "#f9a825", "failed": "#c62828", "exited": "#c62828",
           "cancelled": "#757575", "busy": "#9e9e9e", "running": "#1565c0", "queued": "#cfd8dc"}
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:4px} table{border-collapse:collapse;font-size:0.9em;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} .scroll{overflow-x:auto} .figure{display:inline-block;margin:8px;vertical-align:top}
.figure img{max-width:560px;border:1px solid #eee} .figure p{margin:2px 0;color:#555;font-size:0.9em}
.legend span{display:inline-block;margin-right:14px;font-size:0.85em}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.suggestion{background:#fff8e1;border-left:4px solid #f9a825;padding:4px 10px;margin:4px 0}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:0.85em}
"""


def render(sweep, table, out: Path, figure_files) -> bytes:
    """The page's bytes. `sweep`: analysis.load's Sweep; `table`: the summary DataFrame; `figure_files`:
    the PNG files aggregate wrote (names under `out`)."""
    sweep_dir = SweepDir(sweep.dir)
    name = str(sweep.spec.get("name") or sweep_dir.path.name)
    runs = sweep.all_runs if sweep.all_runs is not None else sweep.runs
    counts = runs["state"].astype(str).value_counts()
    usage = atomic.read_json(sweep_dir.usage)
    usage = usage if isinstance(usage, dict) else {}
    parts = [f"<h1>{_e(name)}</h1>",
             f"<p class='sub'>{_e(sweep_dir.path)} &middot; {len(runs)} runs: "
             + ", ".join(f"{n} {_e(state)}" for state, n in counts.items()) + "</p>",
             "<h2 id='summary'>Summary</h2>", _summary(table),
             "<h2 id='figures'>Figures</h2>", _figures(out, figure_files),
             "<h2 id='timeline'>Timeline</h2>", timeline_svg(sweep_dir, runs),
             "<h2 id='usage'>Usage</h2>", _usage(usage),
             "<h2 id='provenance'>Provenance</h2>", _provenance(sweep_dir)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(name)}: hpcsweep report</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n").encode("utf-8")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _summary(table) -> str:
    if table is None or table.empty:
        return "<p>No finished run to summarise yet.</p>"
    return "<div class='scroll'>" + table.to_html(index=False, escape=True, na_rep="", border=0, classes="summary",
                                                  float_format=lambda v: f"{v:.4g}") + "</div>"


def _figures(out: Path, figure_files) -> str:
    cells = []
    for file in figure_files:
        try:
            data = (out / file).read_bytes()
        except OSError:
            continue
        cells.append(f"<div class='figure'><img alt='{_e(file)}' src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode()}'><p>{_e(file)}</p></div>")
    return "".join(cells) or "<p>No figure (the spec's analysis.figures names none, or png was not asked for).</p>"


def attempts_of(sweep_dir: SweepDir, runs) -> list:
    """One dict per attempt of every run, oldest first per run: run label, attempt, job id, started,
    ended (None: still running), outcome, and where the usage record knows, when its allocation was
    submitted (or requeued) and granted (`submit`, `granted`; None elsewhere)."""
    usage = atomic.read_json(sweep_dir.usage)
    allocations = {r["run_id"]: r.get("allocations") or [] for r in (usage or {}).get("runs", [])
                   if isinstance(r, dict) and r.get("run_id")} if isinstance(usage, dict) else {}
    out = []
    for run_id, label in zip(runs["run_id"], runs["label"]):
        records = sweep_dir.run(run_id).read_attempts()
        ends = {a.get("attempt"): a for a in records if a.get("event") == "end"}
        seen = {}
        for a in records:
            if a.get("event") != "start" or not isinstance(a.get("started"), (int, float)):
                continue
            job = str(a.get("job_id"))
            k = seen[job] = seen.get(job, -1) + 1
            mine = [x for x in allocations.get(run_id, []) if x.get("job_id") == job]
            alloc = mine[k] if k < len(mine) else {}
            submit, granted = alloc.get("submit"), alloc.get("start")
            if not (isinstance(submit, (int, float)) and isinstance(granted, (int, float)) and submit <= granted):
                submit = granted = None
            end = ends.get(a.get("attempt")) or {}
            out.append({"run_id": run_id, "label": label or run_id, "attempt": a.get("attempt"), "job_id": job,
                        "started": a["started"], "ended": end.get("ended"),
                        "outcome": str(end.get("outcome") or "running"),
                        "submit": submit, "granted": min(granted, a["started"]) if granted is not None else None})
    return out


def timeline_svg(sweep_dir: SweepDir, runs) -> str:
    """An SVG Gantt chart: a row per run, a bar per attempt (class `attempt`), queued time before it."""
    items = attempts_of(sweep_dir, runs)
    if not items:
        return "<p>No attempt has started yet.</p>"
    t0 = min(min(i["submit"] or i["started"], i["started"]) for i in items)
    t1 = max(i["ended"] or i["started"] for i in items)
    span = max(t1 - t0, 1e-3)
    labels = list(dict.fromkeys(i["label"] for i in items))
    left, width, row = min(260, 12 + 7 * max(len(x) for x in labels)), 860, 22
    scale = lambda t: left + (t - t0) / span * width
    height = 40 + row * len(labels)
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' class='timeline' width='{left + width + 20}' height='{height}' "
           f"font-family='sans-serif' font-size='11'>"]
    for k in range(5):                     # the time axis: minutes since the first event
        x = left + k * width / 4
        svg.append(f"<line x1='{x:.1f}' y1='18' x2='{x:.1f}' y2='{height}' stroke='#eee'/>"
                   f"<text x='{x:.1f}' y='12' text-anchor='middle' fill='#666'>{_since(k * span / 4, span)}</text>")
    for n, label in enumerate(labels):
        y = 24 + n * row
        svg.append(f"<text x='{left - 6}' y='{y + 13}' text-anchor='end'>{_e(label)}</text>")
        for i in (i for i in items if i["label"] == label):
            end = i["ended"] or t1
            if i["submit"] is not None and i["submit"] < i["granted"]:
                # what sacct calls the queue wait: submitted (or requeued) until the allocation started; the
                # gap from there to the bar is the job starting up (python, imports) before the run began
                svg.append(f"<rect class='queued' x='{scale(i['submit']):.1f}' y='{y + 4}' "
                           f"width='{max(1.0, scale(i['granted']) - scale(i['submit'])):.1f}' height='{row - 8}' "
                           f"fill='{COLOURS['queued']}'><title>{_e(label)}: job {_e(i['job_id'])} queued "
                           f"{i['granted'] - i['submit']:.0f} s</title></rect>")
            colour = COLOURS.get(i["outcome"], "#8e24aa")
            svg.append(f"<rect class='attempt' data-outcome='{_e(i['outcome'])}' x='{scale(i['started']):.1f}' "
                       f"y='{y + 2}' width='{max(2.0, scale(end) - scale(i['started'])):.1f}' height='{row - 4}' "
                       f"fill='{colour}'><title>{_e(label)}: attempt {_e(i['attempt'])} in job {_e(i['job_id'])}, "
                       f"{end - i['started']:.0f} s, {_e(i['outcome'])}</title></rect>")
    svg.append("</svg>")
    legend = "".join(f"<span><i style='background:{c}'></i>{_e(k)}</span>" for k, c in COLOURS.items()
                     if k not in ("exited", "busy"))
    start = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"<p class='sub'>{len(items)} attempts of {len(labels)} runs, from {start}</p>"
            f"<div class='legend'>{legend}</div><div class='scroll'>" + "".join(svg) + "</div>")


def _since(seconds, span) -> str:
    """A tick of the time axis, in the unit the whole span reads best in."""
    if span < 120:
        return f"{seconds:.1f} s" if span < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if span < 7200 else f"{seconds / 3600:.1f} h"


USAGE_SHOWN = (("label", "run"), ("attempts", "attempts"), ("requeues", "requeues"), ("elapsed_s", "elapsed s"),
               ("cpu_eff", "CPU eff"), ("alloc_cpus", "cpus"), ("max_rss_mb", "peak RSS MB"),
               ("req_mem_mb", "asked MB"), ("gpu_hours", "GPU-h"), ("queue_wait_s", "queue wait s"), ("source", "from"))


def _usage(usage: dict) -> str:
    rows = [r for r in usage.get("runs") or [] if isinstance(r, dict) and r.get("source")]
    if not rows:
        return "<p>No usage recorded yet (`usage` or `aggregate` reads it once runs have ended).</p>"

    def cell(key, value):
        if value is None:
            return ""
        if key == "cpu_eff":
            return f"{value:.0%}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    head = "".join(f"<th>{_e(h)}</th>" for _, h in USAGE_SHOWN)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell(k, r.get(k)))}</td>" for k, _ in USAGE_SHOWN) + "</tr>" for r in rows)
    totals = usage.get("sweep") or {}
    facts = ", ".join(f"{_e(k.replace('_', ' '))}: {_e(cell(k, v))}" for k, v in totals.items() if v is not None)
    advice = "".join(f"<div class='suggestion'>{_e(s)}</div>" for s in usage.get("suggestions") or [])
    return f"<p class='sub'>{facts}</p>{advice}<table class='usage'><tr>{head}</tr>{body}</table>"


def _provenance(sweep_dir: SweepDir) -> str:
    submits = [e for e in sweep_dir.read_journal() if e.get("event") == "submit"]
    lines = [f"{e.get('time', '')}  submission {e.get('submission', '')}  {e.get('executor', '')}  "
             f"{len(e.get('job_ids') or [])} jobs, {sum(len(p) for p in e.get('packs') or [])} runs" for e in submits]
    latest = atomic.read_json(sweep_dir.code_version(submits[-1].get("submission", ""))) if submits else None
    text = "\n".join(lines) or "no submission recorded"
    if isinstance(latest, dict):
        text += "\n\ncode of the latest submission:\n" + json.dumps(latest, indent=1, sort_keys=True, default=str)
    return f"<pre>{_e(text)}</pre>"
