"""What `status` shows of a run, read from its dir: attempts, last step, elapsed, last error; the table.

Every table and progress line of the CLI is made here (rich), so they all look the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table

from jobs.store import RunState, Where

TAIL_BYTES = 1 << 16          # the last metrics line is looked for in the file's last 64 KB, then further
SETTLE_NS = 2_000_000_000     # a run dir changed this recently is looked at again (coarse or skewed clocks)


def last_json_line(path, tail_bytes=TAIL_BYTES):
    """The last complete JSON line of a (possibly large) jsonl file, reading only its tail."""
    rows = last_json_lines(path, 1, tail_bytes)
    return rows[-1] if rows else None


def last_json_lines(path, n, tail_bytes=TAIL_BYTES) -> list:
    """The last `n` complete JSON lines (mappings) of a jsonl file, oldest first, reading only its tail."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            chunk = tail_bytes
            while True:
                f.seek(max(0, size - chunk))
                lines = f.read().split(b"\n")
                if size > chunk:
                    lines = lines[1:]          # the first piece may be the middle of a line
                rows = []
                for line in reversed(lines):
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        rows.append(row)
                        if len(rows) == n:
                            return rows[::-1]
                if chunk >= size:
                    return rows[::-1]
                chunk *= 4
    except OSError:
        return []


class Watch:
    """The states of a sweep's runs, kept current at a cost that falls as runs finish (`submit --wait`).

        watch = Watch(sweep, sweep_dir, submit.states)
        states = watch.refresh()        # run_id -> RunState, as read_states would say now

    The first look reads every run. A later one reads again only the runs whose dir changed since
    (its mtime: result.json, error.txt, config.yaml and the lock holder all appear or go by a rename or
    unlink in it), a slice of the other unfinished runs in turn (what changes outside a run dir: a
    job that ended without a word), and with them their upstream and downstream runs (a blocked run
    follows its upstream). A run seen done is not read again. `full()` reads everything: what ends a
    wait comes from it. read_states(sweep, sweep_dir) stays the one judge of a run's state.
    """

    def __init__(self, sweep, sweep_dir, read_states, turn=50):
        self.sweep, self.sweep_dir, self.read_states = sweep, sweep_dir, read_states
        self.turn = turn                 # every unfinished run is read at least once in `turn` looks
        self.states, self.stamps, self.next = {}, {}, 0
        self.head = os.fspath(sweep_dir.runs) + os.sep
        self.order = {r.run_id: i for i, r in enumerate(sweep.runs)}
        self.related = {}                # run_id -> its upstream and downstream runs
        for r in sweep.runs:
            for up in r.upstream.values():
                if up["run_id"] in self.order:
                    self.related.setdefault(r.run_id, set()).add(up["run_id"])
                    self.related.setdefault(up["run_id"], set()).add(r.run_id)

    def _stamp(self, run_id, now_ns):
        """The run dir's mtime, or None (missing, or too fresh to trust: look again next time)."""
        try:
            mtime = os.stat(self.head + run_id).st_mtime_ns
        except OSError:
            return None
        return mtime if now_ns - mtime > SETTLE_NS else None

    def full(self) -> dict:
        now = time.time_ns()
        self.stamps = {r.run_id: self._stamp(r.run_id, now) for r in self.sweep.runs}   # before reading
        self.states = dict(self.read_states(self.sweep, self.sweep_dir))
        return self.states

    def refresh(self) -> dict:
        if not self.states:
            return self.full()
        now = time.time_ns()
        unfinished = [rid for rid, state in self.states.items() if state != RunState.DONE]
        look = set()
        for rid in unfinished:
            stamp = self._stamp(rid, now)
            if stamp is None or stamp != self.stamps.get(rid):
                look.add(rid)
            self.stamps[rid] = stamp
        if unfinished:
            step = -(-len(unfinished) // self.turn)
            start = self.next % len(unfinished)
            look.update(unfinished[start:start + step] + unfinished[:max(0, start + step - len(unfinished))])
            self.next = start + step
        for rid in list(look):
            look |= self.related.get(rid, set())
        if look:
            runs = sorted(look, key=self.order.__getitem__)       # stage order: upstream states first
            part = self.read_states(dataclasses.replace(self.sweep, runs=[self.sweep.runs[self.order[r]] for r in runs]),
                                    self.sweep_dir)
            self.states.update(part)
        return self.states


RATE_LINES = 50          # the steps/s of a running run: over its last this many metrics lines (this attempt's)


def rate(rows, since=None):
    """Steps per second over `rows` (metrics lines, oldest first) logged after `since` (the attempt's
    start: a resumed run's rate is its own, not the gap across the requeue); None when unknown."""
    rows = [r for r in rows if isinstance(r.get("time"), (int, float)) and isinstance(r.get("step"), int)
            and (since is None or r["time"] >= since)]
    if len(rows) < 2 or rows[-1]["time"] <= rows[0]["time"] or rows[-1]["step"] <= rows[0]["step"]:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


class Look(NamedTuple):
    """What status and watch show, read at one moment: one squeue and one sacct call (the cached poller)."""
    states: dict     # run_id -> RunState
    places: dict     # run_id -> liveness.placement's record, for the in-flight runs asked about
    failures: dict   # run_id -> what the scheduler says killed it
    notes: dict      # run_id -> what the scheduler says stopped its last attempt


def look(sweep, sweep_dir, runs=None) -> Look:
    """The states of every run of `sweep`, and where the in-flight ones of `runs` (default: all) are."""
    from jobs.sched import liveness, submit
    entries = sweep_dir.read_journal()
    view = liveness.look(sweep_dir, [r.run_id for r in sweep.runs], entries)
    states = submit.states(sweep, sweep_dir, view)
    asked = [r.run_id for r in (sweep.runs if runs is None else runs) if states[r.run_id] == RunState.IN_FLIGHT]
    return Look(states, liveness.placement(sweep_dir, view, asked), submit.scheduler_failures(sweep_dir, entries),
                submit.scheduler_notes(sweep_dir, entries))


def counts(seen: Look, runs) -> dict:
    """state -> how many of `runs`, an in-flight run counted where it is (queued, running, requeued)."""
    out = {}
    for r in runs:
        state = seen.states[r.run_id]
        if state == RunState.IN_FLIGHT and r.run_id in seen.places:
            state = seen.places[r.run_id]["where"]
        out[str(state)] = out.get(str(state), 0) + 1
    return out


def describe(by_state: dict) -> str:
    """"2 running, 28 queued, 3 done (30 in flight)": the in-flight sub-states summed, always said the
    same way (scripts and people look for "in flight")."""
    text = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "no runs"
    flying = sum(n for s, n in by_state.items() if s in {str(w) for w in Where})
    return text + (f" ({flying} in flight)" if flying else "")


def run_row(sweep_dir, run, state, failure="", note="", place=None) -> dict:
    """One line of the status table; `failure`: what the scheduler says killed the run (not yet in its
    dir); `note`: what it says stopped the run's last attempt (a time limit, a preemption); `place`:
    where an in-flight run is (liveness.placement: queued and why, running where, requeued)."""
    run_dir = sweep_dir.run(run.run_id)
    attempts = run_dir.read_attempts()
    starts = [a for a in attempts if a.get("event") == "start" and isinstance(a.get("started"), (int, float))]
    ends = {a.get("attempt"): a for a in attempts if a.get("event") == "end"}
    place = place or {}
    running = place.get("where") == Where.RUNNING
    tail = last_json_lines(run_dir.metrics, RATE_LINES if running else 1)
    last = tail[-1] if tail else {}
    elapsed, unknown = 0.0, False
    for a in starts:
        end = ends.get(a.get("attempt"))
        if end and isinstance(end.get("ended"), (int, float)):
            elapsed += end["ended"] - a["started"]
        elif state == RunState.IN_FLIGHT and a is starts[-1]:
            elapsed += time.time() - a["started"]
        elif a is starts[-1]:
            unknown = True            # killed without an end record: how long it ran is not known here
    step, total = last.get("step"), last.get("total_steps")
    error = ""
    last_end = ends.get(starts[-1].get("attempt"), {}) if starts else {}
    if state == RunState.FAILED:
        error = failure.strip().splitlines()[-1] if failure.strip() else _last_line(run_dir.error)
    elif state == RunState.UNREADABLE:
        error = run_dir.problem() or "its files cannot be read here"
    elif state == RunState.CORRUPT:
        error = f"{run_dir.result} cannot be read; resume reruns the run from its newest valid checkpoint"
    elif last_end.get("error"):
        error = last_end["error"]
    elif state in (RunState.PENDING, RunState.BLOCKED) and attempts and attempts[-1].get("event") == "blocked":
        error = attempts[-1].get("reason", "not started: an upstream run is not done")
    elif state == RunState.STALE:
        error = "an upstream it consumed changed since (rerun or replaced): resume reruns it"
    elif state == RunState.PENDING and attempts and attempts[-1].get("event") == "skipped":
        error = attempts[-1].get("reason", "not started (fail fast)")
    elif state == RunState.PENDING and note:
        error = note
    elif state == RunState.PENDING and starts and not last_end:
        error = f"attempt {starts[-1].get('attempt')} ended abruptly (killed, out of memory, node failure?); resume goes on from its newest valid checkpoint"
    result = run_dir.read_result() if state == RunState.DONE else None
    if result and isinstance(result.get("wall_time_s"), (int, float)):
        elapsed = result["wall_time_s"]
    speed = rate(tail, starts[-1]["started"] if starts else None) if running else None
    eta = (total - step) / speed if speed and isinstance(total, int) and isinstance(step, int) and total >= step else None
    shown = str(place.get("where") or state)
    if place.get("reason"):
        shown += f" ({place['reason']})"
    elif running and place.get("node"):
        shown += f" ({place['node']})"
    metrics = {k: v for k, v in last.items() if k not in ("step", "time", "total_steps")}
    return {"label": run.label or run.run_id, "run_id": run.run_id, "state": str(state), "shown": shown,
            "where": str(place["where"]) if place.get("where") else None, "job_id": place.get("job_id") or _last_job(starts),
            "reason": place.get("reason", ""), "node": place.get("node", ""), "attempts": len(starts),
            "step": step, "total_steps": total, "steps_per_s": speed, "eta_s": eta, "elapsed_s": elapsed if starts else None,
            "last_metrics": metrics,
            "progress": "" if step is None else (f"{step}/{total}" if total else str(step)),
            "rate": "" if speed is None else f"{speed:.3g}/s", "eta": "" if eta is None else duration(eta),
            "elapsed": (duration(elapsed) + ("+?" if unknown else "") if elapsed or not unknown else "?") if starts else "",
            "error": error}


def _last_job(starts) -> str:
    """The job of the run's last attempt (a run no live job holds: where its logs are)."""
    return str(starts[-1].get("job_id") or "") if starts else ""


def _last_line(path):
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def duration(s) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


COLUMNS = (("label", "label"), ("shown", "state"), ("job_id", "job"), ("attempts", "att"), ("progress", "step"),
           ("rate", "steps/s"), ("eta", "eta"), ("elapsed", "elapsed"), ("error", "last error"))
FIXED = ("shown", "job_id", "attempts", "progress", "rate", "eta", "elapsed")     # keep their width


def table(rows, width=120) -> str:
    """The rows as aligned columns within `width` characters: state, job, attempts, step, rate, eta
    and elapsed keep their width; the label and the error give way (cut with an ellipsis). A column
    empty in every row (no run is running: no rate, no eta) is left out."""
    if not rows:
        return ""
    columns = [(k, h) for k, h in COLUMNS if k in ("label", "shown") or any(str(r[k]) for r in rows)]
    need = {k: max(len(h), *(len(str(r[k])) for r in rows)) for k, h in columns}
    fixed = sum(need[k] + 2 for k in FIXED if k in need)
    label = min(need["label"], max(12, (width - fixed) // 2))
    widths = {**need, "label": label}
    if "error" in need:
        widths["error"] = min(need["error"], max(10, width - fixed - label - 2))
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for key, header in columns:
        t.add_column(header, justify="right" if key == "attempts" else "left", overflow="ellipsis",
                     no_wrap=True, width=widths[key])
    for r in rows:
        t.add_row(*(str(r[k]) for k, _ in columns))
    return render(t, max(width, sum(widths.values()) + 2 * len(columns)))


def render(renderable, width=120) -> str:
    """A rich renderable as plain text of at most `width` columns (no colour codes: it may go to a file)."""
    console = Console(width=width, record=True, file=_Null(), color_system=None, soft_wrap=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().rstrip("\n").splitlines())


class _Null:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def next_step(counts, command, prog="python main.py") -> str:
    """One line saying what to do next, given the counts by state; `command` is how the user names the sweep
    (e.g. "sweeps/x.yaml --root /scratch/me"), repeated in every hint; `prog` how they run hpcsweep."""
    if counts.get(RunState.FAILED):
        return (f"next: {counts[RunState.FAILED]} runs failed (see the error column and runs/<run_id>/error.txt); "
                f"fix the cause, then: {prog} resume {command} --retry-failed")
    if counts.get(RunState.CORRUPT):
        return f"next: {counts[RunState.CORRUPT]} results are unreadable: {prog} resume {command} reruns them"
    if counts.get(RunState.STALE):
        return (f"next: {counts[RunState.STALE]} done runs consumed an upstream checkpoint that has changed since: "
                f"{prog} resume {command} reruns them (their old dirs are kept beside)")
    if counts.get(RunState.IN_FLIGHT):
        return f"next: wait; {prog} status {command} again, or {prog} resume {command} --wait"
    if counts.get(RunState.BLOCKED):
        return (f"next: {counts[RunState.BLOCKED]} runs wait on failed upstream runs: "
                f"{prog} resume {command} --retry-failed")
    if counts.get(RunState.PENDING) or counts.get(RunState.NEW):
        return f"next: runs are unfinished and nothing is running them: {prog} resume {command}"
    return f"next: every run is done: {prog} aggregate {command}"


LAST_ERRORS = 5


def live_view(sweep, sweep_dir, seen: Look, runs, width=120, when=""):
    """What `watch` shows (a rich renderable): per stage the counts by state; the running runs with
    step, rate, ETA and last metric; the last errors. Built from one `look`."""
    from rich.console import Group
    from rich.text import Text
    parts = [Text(f"{sweep.name}: {len(runs)} runs: {describe(counts(seen, runs))}   {when}", style="bold")]
    if len(sweep.stages) > 1:
        for stage in sweep.stages:
            mine = [r for r in runs if r.stage == stage.name]
            if mine:
                parts.append(Text(f"  stage {stage.name}: {describe(counts(seen, mine))}"))
    flying = [r for r in runs if r.run_id in seen.places]
    rows = [run_row(sweep_dir, r, seen.states[r.run_id], place=seen.places[r.run_id]) for r in flying]
    rows.sort(key=lambda row: row["where"] != str(Where.RUNNING))
    running = [row for row in rows if row["where"] == str(Where.RUNNING)]
    if running:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold", title="running", title_justify="left")
        for header in ("label", "job", "node", "step", "steps/s", "eta", "last metric"):
            t.add_column(header, no_wrap=True, overflow="ellipsis")
        for row in running[:20]:
            metric = ", ".join(f"{k}={_short(v)}" for k, v in list(row["last_metrics"].items())[:2])
            t.add_row(row["label"], row["job_id"], row["node"], row["progress"], row["rate"], row["eta"], metric)
        parts.append(t)
        if len(running) > 20:
            parts.append(Text(f"... {len(running) - 20} more running"))
    queued = len(rows) - len(running)
    if queued:
        reasons = {}
        for row in rows:
            if row["where"] != str(Where.RUNNING):
                reasons[row["reason"] or row["where"]] = reasons.get(row["reason"] or row["where"], 0) + 1
        parts.append(Text("waiting: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))))
    failed = [r for r in runs if seen.states[r.run_id] == RunState.FAILED]
    if failed:
        parts.append(Text("last errors:", style="bold"))
        newest = sorted(failed, key=lambda r: _mtime(sweep_dir.run(r.run_id).error), reverse=True)[:LAST_ERRORS]
        for r in newest:
            text = seen.failures.get(r.run_id, "").strip().splitlines()[-1:] or [_last_line(sweep_dir.run(r.run_id).error)]
            parts.append(Text(f"  {r.label or r.run_id}: {text[0]}", overflow="ellipsis", no_wrap=True))
    return Group(*parts)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _mtime(path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------- `usage`

USAGE_COLUMNS = (("label", "run"), ("jobs", "jobs"), ("requeues", "requeues"), ("elapsed_s", "elapsed"),
                 ("cpu_eff", "CPU eff"), ("alloc_cpus", "cpus"), ("max_rss_mb", "peak RSS"), ("req_mem_mb", "asked"),
                 ("mem_eff", "mem use"), ("gpu_hours", "GPU-h"), ("queue_wait_s", "queue wait"), ("source", "from"))


def usage_cell(key, value) -> str:
    """One figure of a usage row as `usage` shows it ("" when unknown)."""
    if value is None or value == "":
        return ""
    if key in ("elapsed_s", "queue_wait_s"):
        return duration(value)
    if key in ("cpu_eff", "mem_eff"):
        return f"{value:.0%}"
    if key in ("max_rss_mb", "req_mem_mb"):
        return f"{value / 1024:.2f} GB" if value >= 1024 else f"{value:.0f} MB"
    if key == "gpu_hours":
        return f"{value:.2f}"
    return str(value)


def usage_table(rows, width=120) -> str:
    """The runs' usage as aligned columns (a column empty in every row is left out: no GPU, no queue)."""
    if not rows:
        return ""
    cells = [{k: (r.get("label") or r["run_id"]) if k == "label" else usage_cell(k, r.get(k)) for k, _ in USAGE_COLUMNS}
             for r in rows]
    if not any(r.get("gpus") for r in rows):
        for c in cells:
            c["gpu_hours"] = ""
    columns = [(k, h) for k, h in USAGE_COLUMNS if k == "label" or any(c[k] for c in cells)]
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for key, header in columns:
        t.add_column(header, justify="left" if key in ("label", "source") else "right", overflow="ellipsis",
                     no_wrap=True)
    for c in cells:
        t.add_row(*(c[k] for k, _ in columns))
    return render(t, width)


def usage_totals(totals) -> str:
    """The sweep's totals in one or two lines."""
    parts = [f"{totals['measured']} of {totals['runs']} runs measured",
             f"{totals['elapsed_hours']:.3g} h elapsed", f"{totals['cpu_hours']:.3g} CPU-h allocated"]
    if totals["cpu_eff"] is not None:
        parts.append(f"CPU efficiency {totals['cpu_eff']:.0%}")
    if totals["gpu_hours"]:
        parts.append(f"{totals['gpu_hours']:.3g} GPU-h")
    if totals["max_rss_mb"] is not None:
        parts.append(f"peak RSS {usage_cell('max_rss_mb', totals['max_rss_mb'])} "
                     f"(median {usage_cell('max_rss_mb', totals['median_rss_mb'])})")
    if totals["queue_wait_mean_s"] is not None:
        parts.append(f"queue wait {duration(totals['queue_wait_mean_s'])} mean, {duration(totals['queue_wait_max_s'])} max")
    parts.append(f"{totals['requeues']} requeues")
    return ", ".join(parts)
