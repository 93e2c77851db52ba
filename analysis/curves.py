"""metrics.jsonl -> curves: every line every run logged, as one long-form CSV table.

    jobs = [(run_id, path_to_metrics_jsonl, may_have_replays), ...]
    write_csv(jobs, "analysis/curves.csv")      # the table on disk (skipped when no log changed)
    numbers([(position, *job) for ...], ["step", "loss"])   # numbers for a figure, from its runs only
    read_curves(jobs)                           # the table in memory: header() + b"".join(parts)

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
        return (",".join(["run_id"] + [_cell(c) for c in self.columns]) + "\n").encode()


def _chunk(jobs, columns=None):
    """Read, parse and render some logs: (columns, parts, rows, lists, bad_lines)."""
    logs = [read_log(*job) for job in jobs]
    columns = columns_of(logs, list(columns or ()))
    parts = [piece for log in logs for piece in render(log, columns)]
    return columns, parts, [log.rows for log in logs], [log.lists for log in logs], [log.bad_lines for log in logs]


def _workers(workers, n_jobs):
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    return 1 if n_jobs < PARALLEL_MIN_LOGS else max(1, workers)


def _pool_map(func, shares, workers):
    """func over shares, in `workers` forked processes (results in order)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(func, shares))


def _split(jobs, n):
    return [jobs[i * len(jobs) // n:(i + 1) * len(jobs) // n] for i in range(n)]


def read_curves(jobs, workers=None) -> Curves:
    """[(run_id, metrics.jsonl path, may_have_replays), ...] -> Curves, in worker processes when many.

    Each worker renders its share under the columns it saw; when the shares agree (the runs of
    a sweep log the same keys) their rows are used as they are, else the share is done again
    under the union of all columns.
    """
    jobs = list(jobs)
    workers = _workers(workers, len(jobs))
    if workers <= 1:
        shares = [jobs]
        results = [_chunk(jobs)]
    else:
        shares = _split(jobs, workers * 3)
        results = _pool_map(_chunk, shares, workers)
    columns = _union([cols for cols, *_ in results])
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


def _union(column_lists) -> list:
    columns, index = [], {}
    for cols in column_lists:
        if not _merge(columns, index, cols):
            for c in cols:
                if c not in index:
                    index[c] = len(columns)
                    columns.append(c)
    return columns


# ---------------------------------------------------------------- curves.csv on disk

INDEX_VERSION = 1


@dataclass
class CsvInfo:
    """What write_csv wrote (or found already written): columns, rows and unreadable lines per run."""
    columns: list
    rows: list
    bad_lines: list
    changed: bool


def _signature(jobs) -> list:
    """Per log: [run_id, size, mtime_ns, replay] (size -1 when there is no log): when none of these
    changed, neither did curves.csv."""
    out = []
    for rid, path, replay in jobs:
        try:
            st = os.stat(path)
            out.append([str(rid), st.st_size, st.st_mtime_ns, bool(replay)])
        except OSError:
            out.append([str(rid), -1, 0, bool(replay)])
    return out


def _index_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.index.json"


def _chunk_to_file(share_path):
    """Read, parse and render some logs into a file: (columns, rows, bad_lines, has a quote)."""
    jobs, path, columns = share_path
    logs = [read_log(*job) for job in jobs]
    columns = columns_of(logs, list(columns or ()))
    quoted = False
    with open(path, "wb") as f:
        for log in logs:
            parts = render(log, columns)
            quoted = quoted or any(b'"' in p for p in parts)
            f.write(b"".join(parts))
    return columns, [log.rows for log in logs], [log.bad_lines for log in logs], quoted


def _append_file(out, path):
    """Copy the file at `path` to the end of the open file `out` (in the kernel where it can)."""
    with open(path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        out.flush()
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src.fileno(), out.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except (AttributeError, OSError):
            pass
        if done < size:
            src.seek(done)
            out.seek(0, os.SEEK_END)
            while True:
                block = src.read(16 << 20)
                if not block:
                    break
                out.write(block)
        else:
            out.seek(0, os.SEEK_END)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(16 << 20), fb.read(16 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def write_csv(jobs, dest, workers=None, mode=0o644) -> CsvInfo:
    """Write curves.csv for [(run_id, metrics.jsonl path, may_have_replays), ...] at `dest`.

    Nothing is read when no log changed since the last call (sizes and mtimes are kept in a
    hidden index beside `dest`), and `dest` is replaced only when its bytes change. The logs are
    rendered in worker processes, each into its own part file, then put together in the kernel
    (no copy of a GB-sized table passes through Python).
    """
    import json as _json
    import shutil
    import tempfile
    dest = Path(dest)
    jobs = list(jobs)
    sig = _signature(jobs)
    index_path = _index_path(dest)
    try:
        index = _json.loads(index_path.read_bytes())
        st = dest.stat()
        if (index.get("version") == INDEX_VERSION and index.get("logs") == sig
                and index.get("csv") == [st.st_size, st.st_mtime_ns]):
            return CsvInfo(index["columns"], index["rows"], index["bad_lines"], False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        workers = _workers(workers, len(jobs))
        shares = _split(jobs, workers * 3) if workers > 1 else [jobs]
        tasks = [(share, tmpdir / f"part{i:03d}", None) for i, share in enumerate(shares)]
        results = (_pool_map(_chunk_to_file, tasks, workers) if workers > 1
                   else [_chunk_to_file(t) for t in tasks])
        columns = _union([r[0] for r in results])
        rows, bad = [], []
        for i, (task, (cols, r, b, _quoted)) in enumerate(zip(tasks, results)):
            if cols != columns and sum(r):       # keys this share never saw: render it again under all
                cols, r, b, _ = _chunk_to_file((task[0], task[1], columns))
            rows += r
            bad += b
        tmp = tmpdir / "curves.csv"
        with open(tmp, "wb") as out:
            out.write(Curves(columns, [], [], [], []).header())
            for task in tasks:
                _append_file(out, task[1])
            out.flush()
            os.fsync(out.fileno())      # on disk before it replaces the old table (a crash leaves one or the other)
        changed = not _same_file(tmp, dest)
        if changed:
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        st = dest.stat()
        index = {"version": INDEX_VERSION, "csv": [st.st_size, st.st_mtime_ns], "columns": columns,
                 "rows": rows, "bad_lines": bad, "logs": sig}
        data = _json.dumps(index, separators=(",", ":")).encode()
        try:
            same = index_path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            itmp = tmpdir / "index.json"
            itmp.write_bytes(data)
            os.replace(itmp, index_path)
        return CsvInfo(columns, rows, bad, changed)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- numbers for figures

def _numbers(share):
    """(frame of `wanted` with a `run` column of global positions, {position: lists}) for some logs."""
    jobs, wanted = share
    logs = [read_log(rid, path, replay) for _, rid, path, replay in jobs]
    columns = columns_of(logs)
    cv = Curves(columns, [p for log in logs for p in render(log, columns)], [log.rows for log in logs],
                [log.lists for log in logs], [log.bad_lines for log in logs])
    df = frame(cv, cv.header() + b"".join(cv.parts), wanted)
    positions = [pos for pos, *_ in jobs]
    import numpy as np
    df["run"] = np.asarray(positions, dtype=np.int64)[df["run"].to_numpy()] if len(df) else df["run"]
    return df, {pos: log.lists for pos, log in zip(positions, logs) if log.lists}


def numbers(jobs, wanted, workers=None):
    """[(position, run_id, path, replay), ...] and column names -> (DataFrame `run` + the wanted
    columns that any log has, as numbers; {position: {metric: last list logged}})."""
    import pandas as pd
    jobs = list(jobs)
    workers = _workers(workers, len(jobs))
    shares = [(s, list(wanted)) for s in (_split(jobs, workers * 3) if workers > 1 else [jobs])]
    results = _pool_map(_numbers, shares, workers) if workers > 1 else [_numbers(s) for s in shares]
    frames = [df for df, _ in results]
    cols = ["run"] + [c for c in dict.fromkeys(wanted) if any(c in df.columns for df in frames)]
    df = pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True) if frames else pd.DataFrame(columns=cols)
    lists = {}
    for _, ls in results:
        lists.update(ls)
    return df, lists


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
