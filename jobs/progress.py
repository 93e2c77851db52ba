"""What `status` shows of a run, read from its dir: attempts, last step, elapsed, last error."""
from __future__ import annotations

import json
import time
from pathlib import Path

from jobs import sweepdir


def last_json_line(path: Path, tail_bytes=8192):
    """The last complete JSON line of a (possibly large) jsonl file, reading only its tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_row(sdir, run, state) -> dict:
    rdir = sweepdir.run_dir(sdir, run.run_id)
    attempts = sweepdir.read_jsonl(rdir / "attempts.jsonl")
    starts = [a for a in attempts if a.get("event") == "start"]
    ends = {a["attempt"]: a for a in attempts if a.get("event") == "end"}
    elapsed = 0.0
    for a in starts:
        end = ends.get(a["attempt"])
        if end:
            elapsed += end["ended"] - a["started"]
        elif state == "in flight" and a is starts[-1]:
            elapsed += time.time() - a["started"]
    last = last_json_line(rdir / "metrics.jsonl") or {}
    step = last.get("step")
    total = last.get("total_steps")
    error = ""
    if state == "failed":
        error = _last_line(rdir / "error.txt")
    elif starts and ends.get(starts[-1]["attempt"], {}).get("error"):
        error = ends[starts[-1]["attempt"]]["error"]
    elif state == "pending" and starts and starts[-1]["attempt"] not in ends:
        error = f"attempt {starts[-1]['attempt']} ended abruptly (killed, out of memory, node failure?)"
    result = sweepdir.read_json(rdir / "result.json") if state == "done" else None
    if result:
        elapsed = result.get("wall_time_s", elapsed)
    return {"label": run.label or run.run_id, "run_id": run.run_id, "state": state, "attempts": len(starts),
            "progress": "" if step is None else (f"{step}/{total}" if total else str(step)),
            "elapsed": _duration(elapsed) if starts else "", "error": error}


def _last_line(path):
    try:
        lines = [l for l in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _duration(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


COLUMNS = (("label", "label"), ("state", "state"), ("attempts", "att"), ("progress", "step"),
           ("elapsed", "elapsed"), ("error", "last error"))


def table(rows, width=120) -> str:
    """The rows as aligned columns cut to `width` characters (the label and error give way first)."""
    if not rows:
        return ""
    widths = {k: max(len(h), *(len(str(r[k])) for r in rows)) for k, h in COLUMNS}
    fixed = sum(widths[k] + 2 for k in ("state", "attempts", "progress", "elapsed"))
    widths["label"] = min(widths["label"], max(20, width - fixed - 22))
    widths["error"] = max(10, width - fixed - widths["label"] - 2)
    out = ["  ".join(h.ljust(widths[k]) if k != "attempts" else h.rjust(widths[k]) for k, h in COLUMNS).rstrip()]
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            v = str(r[k])
            if len(v) > widths[k]:
                v = v[:widths[k] - 1] + "…"
            cells.append(v.rjust(widths[k]) if k == "attempts" else v.ljust(widths[k]))
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def next_step(counts, spec) -> str:
    """One line saying what to do next, given the counts by state."""
    if counts.get("failed"):
        return (f"next: {counts['failed']} runs failed (see the error column and runs/<run_id>/error.txt); "
                f"fix the cause, then: python main.py resume {spec} --retry-failed")
    if counts.get("in flight"):
        return f"next: wait; python main.py status {spec} again, or python main.py submit {spec} --wait"
    if counts.get("pending") or counts.get("new"):
        return f"next: runs are unfinished and nothing is running them: python main.py resume {spec}"
    return f"next: every run is done: python main.py aggregate {spec}"
