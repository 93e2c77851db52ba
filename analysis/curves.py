"""metrics.jsonl -> curves: every line every run logged, as one long-form CSV table.

    logs = read_logs([(run_id, path_to_metrics_jsonl, may_have_replays), ...])
    columns, parts = csv_parts(logs)         # b"".join(parts) is curves.csv
    frame(logs, columns, b"".join(parts[1:]), ["step", "loss"])   # numbers for figures

Why it is not simply json.loads per line: 10,000 logs of 1,000 lines take ~20 s to parse that
way and ~40 s more to format the floats back into CSV. A training loop logs the same keys in
the same order on almost every line, so the common case does neither: the key tokens of the
first line (`, "loss": `) are replaced by one-byte placeholders, which turns each such line into
a CSV row that keeps the numbers exactly as the run wrote them. A line that does not fit (other
keys, a list, a string) still holds a quote or a bracket afterwards; it is found, parsed with
json and kept in its place. Before a log's rows are trusted, the placeholders of every row are
checked to be exactly the expected ones in the expected order; any doubt and the log is parsed
line by line (`_slow`). Both paths give the same table (tests/test_analysis_curves.py checks
that against json.loads on random logs).

A killed writer may leave a torn last line: it is dropped silently. ctx.restore cuts a resumed
run's log back to its checkpoint; for runs that may still hold replayed steps (`replay`: more
than one attempt) the last attempt's lines win: when the step goes back to s, earlier lines at
steps >= s go.
"""
from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MARKERS = (b'"', b"{", b"}", b"[", b"]")   # left in a line that is not a plain row of the first line's keys
# Bytes that valid JSON text never holds unescaped (control characters other than \t \n \r).
_PLACE = [b for b in range(1, 32) if b not in (9, 10, 13)]
START, END = bytes([_PLACE[0]]), bytes([_PLACE[1]])
SEPS = [bytes([b]) for b in _PLACE[2:]]          # SEPS[i - 1] stands between column i - 1 and column i
MAX_FAST_KEYS = len(SEPS) + 1
_ALL_BUT_PLACES = bytes(b for b in range(256) if b not in set(_PLACE) | {10})
PARALLEL_MIN_LOGS = 200


@dataclass
class RunLog:
    """One run's metrics.jsonl, parsed just enough to render it as CSV rows."""
    run_id: str
    keys: tuple | None = None      # the keys of the bytes items, in order; None when every line was parsed
    items: list = field(default_factory=list)   # in log order: bytes (rows with placeholders) or dict (a line)
    rows: int = 0
    lists: dict = field(default_factory=dict)   # metric -> the last list value it logged
    bad_lines: int = 0             # unreadable lines other than a torn last one


def _cell(text: str) -> str:
    """`text` as one CSV field (quoted only where it must be)."""
    if text == "" or any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def _value(v) -> str:
    """A logged value as a CSV field: numbers and null as JSON writes them, the rest as (quoted) text."""
    t = type(v)
    if t is float:
        return repr(v) if math.isfinite(v) else ("NaN" if v != v else "Infinity" if v > 0 else "-Infinity")
    if t is int:
        return str(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is str:
        return _cell(v)
    return _cell(json.dumps(v))


def _complete(raw: bytes) -> bytes:
    """The log without a torn last line (kept when it is whole JSON that only misses its newline)."""
    if not raw or raw.endswith(b"\n"):
        return raw
    cut = raw.rfind(b"\n") + 1
    try:
        if isinstance(json.loads(raw[cut:]), dict):
            return raw + b"\n"
    except ValueError:
        pass
    return raw[:cut]


def _line(line: bytes):
    """A parsed line, or None (unreadable or not an object); a blank line is returned as ''."""
    if not line.strip():
        return ""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _is_plain(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def parse_log(run_id: str, raw: bytes, replay: bool = False) -> RunLog:
    """One run's metrics.jsonl bytes -> RunLog (the fast path where it is safe, else line by line)."""
    raw = _complete(raw)
    if not raw:
        return RunLog(run_id)
    if not replay:
        log = _fast(run_id, raw)
        if log is not None:
            return log
    return _slow(run_id, raw, replay)


def _fast(run_id, raw):
    """Rows by token replacement (see the module docstring), or None where that is not safe."""
    cell = _cell(run_id).encode()
    nl = raw.find(b"\n")
    line0 = raw[:nl]
    try:
        first = json.loads(line0)
    except ValueError:
        return None
    if (any(c in cell for c in MARKERS) or not isinstance(first, dict) or not first or len(first) > MAX_FAST_KEYS
            or not all(map(_is_plain, first.values()))
            or not all(json.dumps(k)[1:-1] == k for k in first)):
        return None
    if json.dumps(first).encode() == line0:
        colon, comma = b": ", b", "
    elif json.dumps(first, separators=(",", ":")).encode() == line0:
        colon, comma = b":", b","
    else:
        return None
    keys = tuple(first)
    quoted = [json.dumps(k).encode() for k in keys]
    head = b"{" + quoted[0] + colon
    prefix = cell + b"," + START
    body = prefix + raw[len(head):]
    body = body.replace(b"}\n" + head, END + b"\n" + prefix)
    if body.endswith(b"}\n"):
        body = body[:-2] + END + b"\n"
    for i in range(1, len(keys)):
        body = body.replace(comma + quoted[i] + colon, SEPS[i - 1])

    log = RunLog(run_id, keys)
    good, lines = [], None
    pos = line_no = 0
    ahead = {c: body.find(c) for c in MARKERS}      # next position of each marker (-1: none left)
    while True:                   # each line that is not a row of `keys`: parse its original text
        found = [i for i in ahead.values() if i >= 0]
        if not found:
            break
        at = min(found)
        start = body.rfind(b"\n", 0, at) + 1
        end = body.find(b"\n", at) + 1
        line_no += body.count(b"\n", pos, start)
        if start > pos:
            good.append(body[pos:start])
            log.items.append(good[-1])
        if lines is None:
            lines = raw.split(b"\n")
        _add(log, _line(lines[line_no]))
        line_no += 1
        pos = end
        for c, i in ahead.items():
            if 0 <= i < pos:
                ahead[c] = body.find(c, pos)
    if pos < len(body):
        good.append(body[pos:])
        log.items.append(good[-1])
    row = START + b"".join(SEPS[:len(keys) - 1]) + END + b"\n"
    for chunk in good:
        n = chunk.count(b"\n")
        if chunk.translate(None, _ALL_BUT_PLACES) != row * n:
            return None
        log.rows += n
    return log


def _add(log, obj):
    if obj is None:
        log.bad_lines += 1
    elif obj != "":
        log.items.append(obj)
        log.rows += 1
        for k, v in obj.items():
            if isinstance(v, list):
                log.lists[k] = v


def _slow(run_id, raw, replay):
    log = RunLog(run_id)
    kept = []
    for line in raw.split(b"\n")[:-1]:
        obj = _line(line)
        if obj is None:
            log.bad_lines += 1
            continue
        if obj == "":
            continue
        step = obj.get("step")
        if replay and isinstance(step, (int, float)) and not isinstance(step, bool):
            last = _step(kept[-1]) if kept else None
            if last is not None and step < last:       # a resumed attempt logs these steps again
                while kept and (_step(kept[-1]) is None or _step(kept[-1]) >= step):
                    kept.pop()
        kept.append(obj)
    for obj in kept:
        _add(log, obj)
    return log


def _step(obj):
    s = obj.get("step")
    return s if isinstance(s, (int, float)) and not isinstance(s, bool) and not math.isnan(s) else None


def read_log(run_id, path, replay=False) -> RunLog:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return RunLog(run_id)
    return parse_log(run_id, raw, replay)


@dataclass
class Curves:
    """Every run's log as CSV rows under one set of columns (curves.csv is header() + the parts)."""
    columns: list            # logged keys: each run's own order kept, the rest appended
    parts: list              # bytes: CSV rows, run after run, in the order asked for
    rows: list               # rows per run
    lists: list              # per run: {metric: the last list it logged}
    bad_lines: list          # per run: unreadable lines (a torn last line not counted)

    def header(self) -> bytes:
        return ("run_id," + ",".join(_cell(c) for c in self.columns) + "\n").encode()


def _chunk(jobs, columns=None):
    """Read, parse and render some logs: (columns, parts, rows, lists, bad_lines)."""
    logs = [read_log(*job) for job in jobs]
    columns = columns_of(logs, list(columns or ()))
    parts = [piece for log in logs for piece in render(log, columns)]
    return columns, parts, [log.rows for log in logs], [log.lists for log in logs], [log.bad_lines for log in logs]


def read_curves(jobs, workers=None) -> Curves:
    """[(run_id, metrics.jsonl path, may_have_replays), ...] -> Curves, in worker processes when many.

    Each worker renders its share under the columns it saw; when the shares agree (the runs of
    a sweep log the same keys) their rows are used as they are, else the share is done again
    under the union of all columns.
    """
    jobs = list(jobs)
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < PARALLEL_MIN_LOGS:
        shares = [jobs]
        results = [_chunk(jobs)]
    else:
        import multiprocessing
        ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        n = workers * 3
        shares = [jobs[i * len(jobs) // n:(i + 1) * len(jobs) // n] for i in range(n)]
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_chunk, shares))
    columns, index = [], {}
    for cols, *_ in results:
        if not _merge(columns, index, cols):
            for c in cols:
                if c not in index:
                    index[c] = len(columns)
                    columns.append(c)
    out = Curves(columns, [], [], [], [])
    for share, (cols, parts, rows, lists, bad) in zip(shares, results):
        if cols != columns and sum(rows):
            pad = b"," * (len(columns) - len(cols))
            if columns[:len(cols)] == cols and not any(b'"' in p for p in parts):
                parts = [p.replace(b"\n", pad + b"\n") for p in parts]
            else:
                _, parts, rows, lists, bad = _chunk(share, columns)
        out.parts += parts
        out.rows += rows
        out.lists += lists
        out.bad_lines += bad
    return out


# ---------------------------------------------------------------- rendering

def _merge(columns, index, keys) -> bool:
    """Insert `keys` into `columns` keeping their order; False when they are in another order there."""
    last = -1
    for k in keys:
        if k in index:
            if index[k] <= last:
                return False
            last = index[k]
        else:
            columns.insert(last + 1, k)
            index.clear()
            index.update({c: i for i, c in enumerate(columns)})
            last += 1
    return True


def _as_dicts(log):
    """A fast-path log turned into parsed lines (only when its key order clashes with another's)."""
    items = []
    strip = len(_cell(log.run_id)) + 1
    table = bytes.maketrans(b"".join([START, END] + SEPS), b"\x00" * (2 + len(SEPS)))
    for item in log.items:
        if isinstance(item, dict):
            items.append(item)
            continue
        for line in item.split(b"\n")[:-1]:
            values = line[strip:].translate(table).split(b"\x00")[1:-1]
            items.append({k: _scalar(v) for k, v in zip(log.keys, values)})
    return RunLog(log.run_id, None, items, log.rows, log.lists, log.bad_lines)


def _scalar(text: bytes):
    try:
        return json.loads(text)
    except ValueError:
        return text.decode("utf-8", "replace")


def columns_of(logs, columns=None) -> list:
    """The union of logged keys (added to `columns`): each log's own order kept where it can be;
    a log whose order clashes is turned into parsed lines (in place in `logs`)."""
    columns = [] if columns is None else columns
    index = {c: i for i, c in enumerate(columns)}
    for i, log in enumerate(logs):
        if log.keys is not None and not _merge(columns, index, log.keys):
            logs[i] = log = _as_dicts(log)
        for item in log.items:
            if isinstance(item, dict):
                for k in item:
                    if k not in index:
                        index[k] = len(columns)
                        columns.append(k)
    return columns


def render(log, columns) -> list:
    """One log's CSV rows (bytes pieces) under `columns` (which hold all of its keys)."""
    pos = {c: i for i, c in enumerate(columns)}
    out = []
    cell = _cell(log.run_id)
    table, delete, multi = None, b"", []
    if log.keys is not None:
        idx = [pos[k] for k in log.keys]
        widths = [idx[0]] + [b - a for a, b in zip(idx, idx[1:])] + [len(columns) - 1 - idx[-1]]
        places = [START] + SEPS[:len(idx) - 1] + [END]
        table = bytearray(range(256))
        for place, w in zip(places, widths):
            if w == 0:
                delete += place
            elif w == 1:
                table[place[0]] = ord(",")
            else:
                multi.append((place, b"," * w))
        table = bytes(table)
    for item in log.items:
        if isinstance(item, dict):
            out.append((cell + "," + ",".join(_value(item[c]) if c in item else "" for c in columns)
                        + "\n").encode())
        else:
            for place, commas in multi:
                item = item.replace(place, commas)
            out.append(item.translate(table, delete))
    return out


def frame(curves: Curves, data: bytes, wanted):
    """The numbers of the `wanted` columns, plus `run` (the run's position in the jobs), from
    curves.csv's bytes (`data`, header included)."""
    import numpy as np
    import pandas as pd
    runs = np.repeat(np.arange(len(curves.rows)), curves.rows)
    wanted = [c for c in dict.fromkeys(wanted) if c in curves.columns]
    if not wanted or not len(runs):
        return pd.DataFrame({"run": runs[:0], **{c: [] for c in wanted}})
    df = pd.read_csv(io.BytesIO(data), usecols=wanted, engine="c", low_memory=False)[wanted]
    for c in wanted:
        if df[c].dtype.kind not in "fiu":       # true/false or text in a numeric column
            df[c] = pd.to_numeric(df[c].replace({"true": 1, "false": 0}), errors="coerce")
    df.insert(0, "run", runs[:len(df)])
    return df
