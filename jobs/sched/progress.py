"""What `status` shows of a run, read from its dir: attempts, last step, elapsed, last error; the table.

Every table and progress line of the CLI is made here (rich), so they all look the same.
"""
from __future__ import annotations

import json
import time

from rich import box
from rich.console import Console
from rich.table import Table

from jobs.store import RunState

TAIL_BYTES = 1 << 16          # the last metrics line is looked for in the file's last 64 KB, then further


def last_json_line(path, tail_bytes=TAIL_BYTES):
    """The last complete JSON line of a (possibly large) jsonl file, reading only its tail."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            chunk = tail_bytes
            while True:
                f.seek(max(0, size - chunk))
                lines = f.read().split(b"\n")
                if size > chunk:
                    lines = lines[1:]          # the first piece may be the middle of a line
                for line in reversed(lines):
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        return row
                if chunk >= size:
                    return None
                chunk *= 4
    except OSError:
        return None


def run_row(sweep_dir, run, state, failure="", note="") -> dict:
    """One line of the status table; `failure`: what the scheduler says killed the run (not yet in its
    dir); `note`: what it says stopped the run's last attempt (a time limit, a preemption)."""
    run_dir = sweep_dir.run(run.run_id)
    attempts = run_dir.read_attempts()
    starts = [a for a in attempts if a.get("event") == "start" and isinstance(a.get("started"), (int, float))]
    ends = {a.get("attempt"): a for a in attempts if a.get("event") == "end"}
    last = last_json_line(run_dir.metrics) or {}
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
    elif state == RunState.PENDING and attempts and attempts[-1].get("event") == "skipped":
        error = attempts[-1].get("reason", "not started (fail fast)")
    elif state == RunState.PENDING and note:
        error = note
    elif state == RunState.PENDING and starts and not last_end:
        error = f"attempt {starts[-1].get('attempt')} ended abruptly (killed, out of memory, node failure?); resume goes on from its newest valid checkpoint"
    result = run_dir.read_result() if state == RunState.DONE else None
    if result and isinstance(result.get("wall_time_s"), (int, float)):
        elapsed = result["wall_time_s"]
    return {"label": run.label or run.run_id, "run_id": run.run_id, "state": str(state), "attempts": len(starts),
            "progress": "" if step is None else (f"{step}/{total}" if total else str(step)),
            "elapsed": (duration(elapsed) + ("+?" if unknown else "") if elapsed or not unknown else "?") if starts else "",
            "error": error}


def _last_line(path):
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def duration(s) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


COLUMNS = (("label", "label"), ("state", "state"), ("attempts", "att"), ("progress", "step"),
           ("elapsed", "elapsed"), ("error", "last error"))


def table(rows, width=120) -> str:
    """The rows as aligned columns within `width` characters: state, attempts, step and elapsed keep
    their width; the label and the error give way (cut with an ellipsis)."""
    if not rows:
        return ""
    need = {k: max(len(h), *(len(str(r[k])) for r in rows)) for k, h in COLUMNS}
    fixed = sum(need[k] + 2 for k in ("state", "attempts", "progress", "elapsed"))
    label = min(need["label"], max(12, (width - fixed) // 2))
    error = max(10, width - fixed - label - 2)
    widths = {**need, "label": label, "error": min(need["error"], error)}
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for key, header in COLUMNS:
        t.add_column(header, justify="right" if key == "attempts" else "left", overflow="ellipsis",
                     no_wrap=True, width=widths[key])
    for r in rows:
        t.add_row(*(str(r[k]) for k, _ in COLUMNS))
    return render(t, max(width, sum(widths.values()) + 2 * len(COLUMNS)))


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
    if counts.get(RunState.IN_FLIGHT):
        return f"next: wait; {prog} status {command} again, or {prog} resume {command} --wait"
    if counts.get(RunState.BLOCKED):
        return (f"next: {counts[RunState.BLOCKED]} runs wait on failed upstream runs: "
                f"{prog} resume {command} --retry-failed")
    if counts.get(RunState.PENDING) or counts.get(RunState.NEW):
        return f"next: runs are unfinished and nothing is running them: {prog} resume {command}"
    return f"next: every run is done: {prog} aggregate {command}"
