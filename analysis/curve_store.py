"""metrics.jsonl -> one long table of every logged line, kept as Parquet and built incrementally.

    table, bad = load(SweepDir(path), run_ids)       # pyarrow Table: run_id, step, time, <metrics>...
    frame(table)                                    # the same as a pandas DataFrame

Engine: DuckDB's JSON reader (vectorised C++, all cores), chosen by measurement on 10,000 runs x
1,000 lines (2 cores): DuckDB read_json -> Arrow ~4 s; polars and pyarrow.json slower (pyarrow's
reader also rejects the bare NaN / Infinity tokens Python's json writes, which DuckDB reads).
convert() reads every log once, typed by DuckDB's detection on a sample of logs spread over the
sweep, and checks each file against a byte census (lines; one colon per key) made beside it in a
thread; the few files the census doubts (a key the sample missed, a null, a text where numbers
were seen...) are read again the slow, exact way (_exact: every key found first, then a typed
read, then Python for lines a typed read cannot take). Whole numbers other than `step` are
float64, so a metric that logs 0 then 0.5 never changes type.
A torn last line (a writer killed mid-line) is cut, never fatal; other unreadable lines are
skipped and counted. ctx.restore cuts a resumed run's log back to its checkpoint, but a task that
never restores, or a log written before a crash, may hold replayed steps: when the step goes back
to s, the earlier lines of that run at steps >= s go, so replayed steps keep the last value.

The cache: <sweep dir>/analysis/.curves/ holds Parquet parts (immutable once written) and
manifest.json (run_id -> part, and the size and mtime_ns of the metrics.jsonl it was made from).
A run's lines are converted once, on the first read after it changed (a finished run: once);
the rest come from the parts. Every write is atomic (temp file, fsync, os.replace): the part
first, then the manifest, so a writer killed at any instant leaves either the old manifest (the
new part is an orphan, deleted later) or the new one. Updates hold a file lock (filelock), so
concurrent aggregates wait for each other instead of converting twice. The DataFrame is handed
over while the new parts are still being written: a background thread writes the manifest after
them and then releases the lock (settle() waits for it; so does a next load, through the lock,
and the process before it exits). When the parts grow past
COMPACT_PARTS they are merged into one. A sweep dir that cannot be written is read without a cache.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from jobs.store import SweepDir, atomic

VERSION = 1
COMPACT_PARTS = 8
INDEX = ("run_id", "step", "time")      # the columns every curve table has first
# a metric a task logged as `run_id` (ctx.log refuses it now; older logs have it): its column is
# renamed, as run_id names the run in every curve table
LOGGED_RUN_ID = "logged_run_id"
SAMPLE = 16              # logs DuckDB's type detection reads for the fast read (spread over the list)
SAMPLE_ROWS = 1 << 20    # lines of them it may read for that
SMALL_BYTES = 1 << 21    # up to SAMPLE logs of this many bytes in all are read by Python's json (_small)
FILE, CELLS, STEP_OK = "__hpcsweep_file", "__hpcsweep_cells", "__hpcsweep_step_ok"   # the read's own columns
LOCK_TIMEOUT_S = 600
WRITERS = 2              # parts a big conversion is written as, at once (pyarrow writes one file on one core)
# the census beside DuckDB's read, and the parts' writers beside the DataFrame's making: threads,
# as numpy, DuckDB and pyarrow all work without the GIL
_POOL = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="curves")
# the manifest written after the parts, in the background, one cache update after another
_COMMITTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="curves-commit")
_COMMITS = []            # their futures, for settle()
COMPRESSION = "lz4"
BIG = 1 << 40            # steps are below this; runs are told apart by multiples of it (replay rule)
# what DuckDB may take a text for (a date, a time, a UUID): read as the text it is
_TEXT = {"VARCHAR", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMPTZ",
         "TIMESTAMP WITH TIME ZONE", "TIME WITH TIME ZONE", "TIMETZ", "UUID", "INTERVAL"}
_NUM = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
        "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL"}


def _sd(sweep_dir) -> SweepDir:
    return sweep_dir if isinstance(sweep_dir, SweepDir) else SweepDir(sweep_dir)


def cache_dir(sweep_dir) -> Path:
    return _sd(sweep_dir).analysis / ".curves"


# ---------------------------------------------------------------- conversion

def _connect():
    import duckdb
    con = duckdb.connect(config={"preserve_insertion_order": True})
    return con


def _base(t: str) -> str:
    return t.split("(")[0].strip().upper()


def _merge_type(a, b):
    if a is None or a == b:
        return b
    if a in ("NULL", "JSON"):
        return b if a == "NULL" else a
    if b == "NULL":
        return a
    la, lb = a.endswith("[]"), b.endswith("[]")
    if la and lb:
        return _merge_type(a[:-2], b[:-2]) + "[]"
    if _base(a) in _NUM and _base(b) in _NUM:
        return "DOUBLE"
    return "VARCHAR" if not (la or lb) else "JSON"


def _column_type(key, t):
    """The explicit type a key is read as (whole numbers as float64 except the step)."""
    if key == "step":
        return "BIGINT"
    if t.endswith("[]"):
        inner = _column_type("", t[:-2])
        return inner + "[]" if inner != "JSON" else "JSON"
    b = _base(t)
    if b in _NUM:
        return "DOUBLE"
    if b in _TEXT:
        return "VARCHAR"
    if b == "BOOLEAN":
        return b
    return "JSON" if b not in ("NULL",) else "DOUBLE"


def _detect(con, files, keys_of):
    """{key: DuckDB type}, from DuckDB's detection on the first files and then on the files that
    hold a key not typed yet (32 at a time)."""
    types = {}
    todo = set().union(*(keys_of[f] for f in files))
    batch, rest = files[:32], files[32:]
    while todo and batch:
        rel = con.sql("DESCRIBE SELECT * FROM read_json($f, format='newline_delimited', ignore_errors=true, "
                      "union_by_name=true, sample_size=-1)", params={"f": batch})
        for name, typ, *_ in rel.fetchall():
            types[name] = _merge_type(types.get(name), typ)
        todo -= set(types)
        rest = [f for f in rest if keys_of[f] & todo]
        batch, rest = rest[:32], rest[32:]
    return types


def _python_read(path: str):
    """One log, line by line (the slow, forgiving path): (list of dicts, unreadable lines)."""
    data = Path(path).read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1] if not _whole(data[data.rfind(b"\n") + 1:]) else data + b"\n"
    rows, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "step" in obj:
            rows.append(obj)
        else:
            bad += 1
    return rows, bad


def _whole(tail: bytes) -> bool:
    try:
        return isinstance(json.loads(tail), dict)
    except ValueError:
        return False


def _torn(path: str) -> bool:
    """True when the file's last line has no newline and is not a whole JSON object."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return False
            f.seek(max(0, size - 65536))
            tail = f.read()
    except OSError:
        return False
    if tail.endswith(b"\n"):
        return False
    return not _whole(tail[tail.rfind(b"\n") + 1:])


def convert(files: dict) -> tuple[pa.Table, dict]:
    """{run_id: metrics.jsonl path} -> (Table of their lines: run_id first, in the given order;
    {run_id: unreadable lines other than a torn last one}).

    One DuckDB read of every file, typed by DuckDB's own detection on SAMPLE files spread over the
    list (put first, where its detection looks; explicit `columns=` makes the same read 2x
    slower), and a census of each file's bytes made alongside it in a thread: its lines and its
    `:` characters. Each key in a JSON object is followed by exactly one colon, whatever the
    spacing, and every cell the read fills comes from one key, so a file with more colons than
    filled cells holds a key the sample missed (or a null, a colon in a text, a nested object),
    and one with fewer rows than lines holds lines the read could not take (a text where the
    sample saw numbers...). Such files alone are read again, by _exact; for the rest the one read
    is exactly what _exact gives."""
    size = {rid: (stat_of(p) or [0])[0] for rid, p in files.items() if p is not None}
    files = {rid: str(p) for rid, p in files.items() if size.get(rid, 0) > 0}
    if len(files) <= SAMPLE:
        return _small(files) if sum(size[rid] for rid in files) <= SMALL_BYTES else _exact(files)
    paths, rids = list(files.values()), list(files)
    n = len(paths)
    counting = _POOL.submit(_census, paths)
    sample = sorted({round(i * (n - 1) / (SAMPLE - 1)) for i in range(SAMPLE)})
    chosen = set(sample)
    order = sample + [i for i in range(n) if i not in chosen]          # positions in `paths`, as read
    con = _connect()
    source = ("read_json($f, format='newline_delimited', ignore_errors=true, maximum_sample_files=$m, "
              "sample_size=$s)")
    params = {"f": [paths[i] for i in order], "m": len(sample), "s": SAMPLE_ROWS}
    try:
        described = [tuple(row[:2]) for row in con.sql(f"DESCRIBE SELECT * FROM {source}", params=params).fetchall()]
        names = [name for name, _ in described]
        if any(_base(t).removesuffix("[]") in _TEXT - {"VARCHAR"} for _, t in described):
            # a text DuckDB took for a date, a time or a UUID (the sample's): every column typed by
            # hand, that one as text (slower, so only then)
            source = source[:-1] + ", columns=$c)"
            params["c"] = {name: _column_type(name, t) for name, t in described}
        # the per-row bookkeeping computed by DuckDB inside the read, in parallel (the result has
        # one Arrow chunk per file: per-row work in Python on it costs a second per 10M rows)
        quoted = {c: '"' + c.replace('"', '""') + '"' for c in names}
        filled = " + ".join(f"({quoted[c]} IS NOT NULL)::INTEGER" for c in names)
        step = f"({quoted['step']} IS NOT NULL)" if "step" in names else "false"
        table = con.sql(f"SELECT file_index::INTEGER AS {FILE}, ({filled})::INTEGER AS {CELLS}, "
                        f"{step} AS {STEP_OK}, * FROM {source}", params=params).to_arrow_table()
    except Exception:           # nothing DuckDB could type (every file unreadable, ...): the slow way
        counting.result()
        return _exact(files)
    census = counting.result()
    where = np.asarray(order, dtype=np.int64)[table.column(FILE).to_numpy()]     # row -> position in paths
    step_ok = table.column(STEP_OK).to_numpy()
    cells = table.column(CELLS).to_numpy()
    table = _typed(table.drop_columns([FILE, CELLS, STEP_OK]))
    lines = np.array([census[p][0] for p in paths])
    seen = np.array([census[p][1] for p in paths])
    doubtful = (np.bincount(where[step_ok], minlength=n) != lines) | \
        (np.bincount(where, weights=cells, minlength=n) != seen)
    if doubtful.any():
        keep = step_ok & ~doubtful[where]
        table, where = table.filter(pa.array(keep)), where[keep]
        table = table.select([c for c in table.column_names if c == "step" or table.column(c).null_count < table.num_rows])
    table = _own_run_id(_in_order(table, where))
    per_file = np.bincount(where, minlength=n)
    table = table.add_column(0, "run_id", pa.DictionaryArray.from_arrays(           # files in order now
        pa.array(np.repeat(np.arange(n, dtype=np.int32), per_file)), pa.array(rids, pa.string())))
    bad = {rid: 0 for rid in rids}
    parts = [table]
    redo = {rids[i]: paths[i] for i in np.flatnonzero(doubtful)}
    if redo:
        again, again_bad = _exact(redo)
        parts.append(again)
        bad.update(again_bad)
    return _replays(_concat(parts), {rid: i for i, rid in enumerate(rids)}), bad


def _own_run_id(table: pa.Table) -> pa.Table:
    """`table` (lines as read, before the run's id is added) with a logged `run_id` renamed LOGGED_RUN_ID."""
    if "run_id" not in table.column_names:
        return table
    return table.rename_columns([LOGGED_RUN_ID if c == "run_id" else c for c in table.column_names])


def _typed(table: pa.Table) -> pa.Table:
    """DuckDB's detected types made ours: step int64; whole-number metrics float64 (a metric
    that logs 0 and then 0.5 must not change type between runs); lists of numbers of float64."""
    for i, field in enumerate(table.schema):
        t = field.type
        want = None
        if field.name == "step":
            want = None if t == pa.int64() else pa.int64()
        elif pa.types.is_integer(t) or pa.types.is_floating(t) and t != pa.float64():
            want = pa.float64()
        elif is_list_type(t) and (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)) \
                and t != pa.list_(pa.float64()):
            want = pa.list_(pa.float64())
        if want is not None:
            try:
                table = table.set_column(i, field.name, pc.cast(table.column(i), want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    return table


def _in_order(table: pa.Table, where) -> pa.Table:
    """Rows regrouped by `where` (each row's file or run; each one's rows together, in line
    order), ascending: a few zero-copy slices, one per stretch already in order, not a take."""
    if table.num_rows == 0 or np.all(where[1:] >= where[:-1]):
        return table
    starts = np.flatnonzero(np.concatenate([[True], where[1:] != where[:-1]]))   # a file's first row
    files = where[starts]
    ends = np.concatenate([starts[1:], [len(where)]])
    by_file = np.argsort(files, kind="stable")
    pieces, run_start, prev_end = [], None, None
    for k in by_file:
        s, e = int(starts[k]), int(ends[k])
        if run_start is not None and s == prev_end:
            prev_end = e
            continue
        if run_start is not None:
            pieces.append(table.slice(run_start, prev_end - run_start))
        run_start, prev_end = s, e
    pieces.append(table.slice(run_start, prev_end - run_start))
    return pa.concat_tables(pieces)


def _census(paths) -> dict:
    """{path: (lines a reader can take, `:` characters in them)}: a torn last line (no newline,
    not a whole JSON object) is not counted, as the readers cut it. Read into one buffer and
    counted by numpy (5x faster than bytes.count on these sizes)."""
    out = {}
    buf = bytearray(1 << 20)
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if size > len(buf):
                    buf = bytearray(2 * size)
                n = os.readv(fd, [memoryview(buf)[:size]])
            finally:
                os.close(fd)
        except OSError:
            out[p] = (-1, -1)            # unreadable now: _exact decides
            continue
        cut = buf.rfind(b"\n", 0, n) + 1
        lines = 0
        if cut < n:
            if _whole(bytes(buf[cut:n])):
                cut, lines = n, 1        # a whole last line without its newline: readers take it
        a = np.frombuffer(buf, np.uint8, count=cut)
        out[p] = (lines + int(np.count_nonzero(a == 10)), int(np.count_nonzero(a == 58)))     # \n, :
    return out


def _keys_of(con, paths):
    """({path: readable lines}, {path: keys its lines use}) from a pass over every line."""
    counts, keys_of = {}, {}
    for fname, n, keys in con.sql(
            "SELECT filename, count(*), flatten(list(DISTINCT json_keys(json))) FROM "
            "read_ndjson_objects($f, ignore_errors=true, filename=true) WHERE json IS NOT NULL "
            "AND json_type(json) = 'OBJECT' GROUP BY filename", params={"f": paths}).fetchall():
        counts[fname] = n
        keys_of[fname] = set(keys)
    return counts, keys_of


def _exact(files: dict) -> tuple[pa.Table, dict]:
    """convert() the slow, exact way: every key found first (a pass over every line), then the
    typed read, then Python for files the typed read lost lines of. For the files the fast read
    could not vouch for, and for the sample the fast read takes its columns from."""
    files = {rid: str(p) for rid, p in files.items() if p is not None and Path(p).is_file()
             and Path(p).stat().st_size > 0}
    if not files:
        return _empty(), {}
    paths = list(files.values())
    rid_of = {p: rid for rid, p in files.items()}
    con = _connect()
    counts, keys_of = _keys_of(con, paths)
    every = list(dict.fromkeys(k for p in paths for k in sorted(keys_of.get(p, ()))))
    if not every:
        return _empty(), {rid: 0 for rid in files}
    holding = [p for p in paths if p in keys_of]
    types = _detect(con, holding, keys_of)
    columns = {k: _column_type(k, types.get(k, "DOUBLE")) for k in every}
    columns.setdefault("step", "BIGINT")
    rel = con.sql("SELECT * FROM read_json($f, format='newline_delimited', ignore_errors=true, filename=true, "
                  "columns=$c)", params={"f": holding, "c": columns})
    table = rel.to_arrow_table()
    fname = table.column("filename")
    step_ok = pc.is_valid(table.column("step"))
    got = table.filter(step_ok).group_by("filename").aggregate([("step", "count")])
    got = dict(zip(got.column("filename").to_pylist(), got.column("step_count").to_pylist()))
    bad = {}
    redo = []
    for p in holding:
        expected = counts.get(p, 0)
        if got.get(p, 0) < expected:
            redo.append(p)
    table = table.filter(step_ok)
    if redo:               # lines the typed read lost (a key with mixed types): Python reads these files
        table = table.filter(pc.invert(pc.is_in(table.column("filename"), pa.array(redo))))
    # run_id from the file name (dictionary-encoded: the indices stay, the dictionary is renamed)
    enc = pc.dictionary_encode(table.column("filename")).combine_chunks()
    names = enc.dictionary.to_pylist()
    rid_col = pa.DictionaryArray.from_arrays(enc.indices, pa.array([rid_of[n] for n in names], pa.string()))
    table = _own_run_id(table.drop_columns(["filename"]))
    table = table.add_column(0, "run_id", rid_col)
    parts = [table]
    for p in redo:
        rows, nbad = _python_read(p)
        bad[rid_of[p]] = nbad
        if rows:
            parts.append(_from_rows(rid_of[p], rows))
    for p in holding:
        if p not in redo:
            lost = _line_count(p) - counts.get(p, 0) - _torn(p)
            bad[rid_of[p]] = max(0, lost)
    table = _concat(parts)
    order = {rid: i for i, rid in enumerate(files)}
    table = _replays(table, order)
    return table, bad


def _line_count(path) -> int:
    """Lines of a file (ctx.log writes no blank ones), counted in C."""
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0) - data.count(b"\n\n")


def _from_rows(rid, rows, strict=False):
    """A Table of one run's parsed lines, typed as the typed read types them: step int64, numbers
    float64, bools, texts, lists of numbers list<float64>. A key of any other kind (a nested
    object, numbers here and text there): JSON text, or with `strict` None, as this cannot be
    sure to give what DuckDB gives for it."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    arrays = {"run_id": pa.array([rid] * len(rows), pa.string()).dictionary_encode()}
    for key in cols:
        vals = [r.get(key) for r in rows]
        k = LOGGED_RUN_ID if key == "run_id" else key
        kinds = {type(v) for v in vals if v is not None}
        if k == "step":
            if strict and kinds != {int}:
                return None
            arrays[k] = pa.array([int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                                  for v in vals], pa.int64())
        elif kinds <= {int, float}:
            arrays[k] = pa.array([float(v) if v is not None else None for v in vals], pa.float64())
        elif kinds == {bool}:
            arrays[k] = pa.array(vals, pa.bool_())
        elif kinds == {str}:
            arrays[k] = pa.array(vals, pa.string())
        elif kinds == {list} and all(type(x) in (int, float) or x is None for v in vals if v is not None for x in v):
            arrays[k] = pa.array([None if v is None else [None if x is None else float(x) for x in v] for v in vals],
                                 pa.list_(pa.float64()))
        elif strict:
            return None
        else:             # mixed: as JSON text
            arrays[k] = pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v))
                                  for v in vals], pa.string())
    return pa.table(arrays)


def _small(files: dict) -> tuple[pa.Table, dict]:
    """convert() of a few small logs by Python's json (a finished run's 1,000 lines: a few ms;
    one DuckDB query costs more than that). A log holding what _from_rows cannot type for sure
    (a nested object, a key with two kinds of value) is left to _exact."""
    parts, bad, hard = [], {}, {}
    for rid, p in files.items():
        rows, bad[rid] = _python_read(p)
        try:
            table = _from_rows(rid, rows, strict=True) if rows else None
        except (pa.ArrowInvalid, OverflowError, TypeError):       # a step past int64...
            table = None
        if table is None and rows:
            hard[rid] = p
        else:
            parts.append(table)
    if hard:
        table, hard_bad = _exact(hard)
        parts.append(table)
        bad.update(hard_bad)
    return _replays(_concat(parts), {rid: i for i, rid in enumerate(files)}), bad


def _empty() -> pa.Table:
    return pa.table({"run_id": pa.array([], pa.string()).dictionary_encode(), "step": pa.array([], pa.int64()),
                     "time": pa.array([], pa.float64())})


def _concat(tables):
    tables = [t for t in tables if t is not None]
    if not tables:
        return _empty()
    if len(tables) == 1:
        return tables[0]
    if all(t.schema.equals(tables[0].schema) for t in tables):      # pieces of one conversion: no casts
        return pa.concat_tables(tables)
    tables = [t.cast(pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name == "run_id" else f
                                for f in t.schema])) for t in tables]
    try:
        return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # the same key with types that do not promote (number here, text there): as text
        names = list(dict.fromkeys(n for t in tables for n in t.column_names))
        fixed = []
        for t in tables:
            for n in names:
                if n in ("run_id", "step"):
                    continue
                kinds = {str(tt.schema.field(n).type) for tt in tables if n in tt.column_names}
                if len(kinds) > 1 and n in t.column_names:
                    col = t.column(n)
                    t = t.set_column(t.column_names.index(n), n, pa.array(
                        [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in col.to_pylist()],
                        pa.string()))
            fixed.append(t)
        return pa.concat_tables(fixed, promote_options="permissive").unify_dictionaries()


def _replays(table: pa.Table, order: dict) -> pa.Table:
    """Rows grouped by run in `order` (line order kept within a run), replayed steps cut: when a
    run's step goes back to s, its earlier lines at steps >= s go."""
    if table.num_rows == 0:
        return table
    table, rank, indices = _ranks(table, list(order))
    run = np.concatenate([rank[i] for i in indices])
    if np.any(run[1:] < run[:-1]):             # each run's rows are together: regroup by slices
        table, run = _in_order(table, run), np.sort(run, kind="stable")
    step = table.column("step").to_numpy()
    same = np.concatenate([[False], run[1:] == run[:-1]])
    restart = same & np.concatenate([[False], step[1:] < step[:-1]])
    if not restart.any():
        return table
    key = np.where(restart, step, BIG - 1) + run * BIG
    suffix = np.minimum.accumulate(key[::-1])[::-1]           # min over rows i.. of the run's restarts
    later = np.concatenate([suffix[1:], [np.iinfo(np.int64).max]])
    keep = step + run * BIG < later
    return table.filter(pa.array(keep))


# ---------------------------------------------------------------- the cache

def stat_of(path):
    """[size, mtime_ns] of a file, or None: what says a log changed since it was converted."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_manifest(cdir: Path) -> dict:
    m = atomic.read_json(cdir / "manifest.json", {})
    if not isinstance(m, dict) or m.get("version") != VERSION or not isinstance(m.get("runs"), dict):
        return {"version": VERSION, "runs": {}}
    return m


def run_ids(sweep_dir) -> list:
    """SweepDir.run_ids() (the plan's runs in plan order, then run dirs no plan lists), the plan's
    part kept in the cache beside its plan.json's size and mtime: parsing a 10,000-run plan (every
    run's config) costs a tenth of the time a cached curve load takes otherwise."""
    sdir = _sd(sweep_dir)
    stat = stat_of(sdir.plan)
    kept = cache_dir(sdir) / "plan_ids.json"
    held = atomic.read_json(kept, None)
    if not (isinstance(held, dict) and held.get("plan") == stat and isinstance(held.get("run_ids"), list)):
        return sdir.run_ids()
    return sdir.run_ids(planned=held["run_ids"])


def keep_run_ids(sweep_dir) -> None:
    """Note the plan's run ids for run_ids() (a failed write only costs the next call the parse)."""
    sdir = _sd(sweep_dir)
    stat = stat_of(sdir.plan)
    kept = cache_dir(sdir) / "plan_ids.json"
    if stat is None or atomic.read_json(kept, {}).get("plan") == stat:
        return
    try:
        atomic.write_bytes(kept, json.dumps({"plan": stat, "run_ids": sdir.planned_run_ids()}).encode())
    except OSError:
        pass


def _part_name() -> str:
    return f"part-{uuid.uuid4().hex[:16]}.parquet"


def _write_part(cdir: Path, table: pa.Table, name: str) -> None:
    sink = pa.BufferOutputStream()
    # dictionaries for run_id and step only (logged floats rarely repeat: trying costs a quarter of
    # the write), no statistics (nothing filters on them), row groups of 1M rows (read in parallel)
    pq.write_table(table, sink, compression=COMPRESSION, use_dictionary=[c for c in ("run_id", "step") if c in
                   table.column_names], write_statistics=False, row_group_size=1 << 20)
    atomic.write_bytes(cdir / name, sink.getvalue().to_pybytes())


def _read_part(cdir: Path, name: str, run_ids, columns=None) -> pa.Table:
    schema = pq.read_schema(cdir / name)
    cols = None if columns is None else [c for c in schema.names if c in columns]
    return select_runs(pq.read_table(cdir / name, columns=cols, read_dictionary=["run_id"], memory_map=True,
                                     pre_buffer=False), run_ids)      # mapped: buffering it again costs a third


def select_runs(t: pa.Table, run_ids) -> pa.Table:
    """The rows of `run_ids` (a set), found through the run_id dictionary: a part can hold runs
    converted again since, or not asked for; a figure's `where:` wants a few runs of many."""
    if run_ids is None or not t.num_rows:
        return t
    wanted = set(run_ids)
    if all(set(c.dictionary.to_pylist()) <= wanted for c in t.column("run_id").chunks) or set(_runs_in(t)) <= wanted:
        return t
    col = t.column("run_id").combine_chunks()
    in_dict = pc.is_in(col.dictionary, pa.array(sorted(wanted), pa.string()))
    t = t.filter(in_dict.take(col.indices))
    # the runs left out leave the dictionary too (else they stay categories of the DataFrame's run_id)
    col = t.column("run_id").combine_chunks()
    indices, used = _used(col)
    position = (np.cumsum(used) - 1).astype(np.int32)
    return t.set_column(t.column_names.index("run_id"), "run_id", pa.DictionaryArray.from_arrays(
        pa.array(position[indices]), col.dictionary.filter(pa.array(used))))


def _used(chunk: pa.DictionaryArray):
    """(the chunk's indices as numpy, which of its dictionary's entries a row uses)."""
    indices = chunk.indices.to_numpy(zero_copy_only=False)
    return indices, np.bincount(indices, minlength=len(chunk.dictionary)) > 0


def _cleanup(cdir: Path, manifest: dict):
    """Delete parts no manifest entry points at (orphans of a killed writer, merged parts) and
    temp files left by a killed atomic write."""
    live = {v[0] for v in manifest["runs"].values()}
    for e in os.scandir(cdir):
        if (e.name.startswith("part-") and e.name.endswith(".parquet") and e.name not in live) or \
                (e.name.startswith(".part-") and e.name.endswith(".tmp")) or \
                (e.name.startswith(".manifest.json.") and e.name.endswith(".tmp")):
            try:
                os.unlink(e.path)
            except OSError:
                pass


def load(sweep_dir, run_ids, columns=None, cache=True, stats=None, finish=None):
    """(every logged line of `run_ids` as a Table, {run_id: unreadable lines}); converts only the
    logs that changed since the cache last saw them. `columns`: keep only these (plus run_id).
    `stats`, when a dict, receives converted / cached run counts. `finish`: a function of the
    Table (frame, say) whose result is returned in the Table's place, run while the new parts are
    written (on another core: pyarrow writes without the GIL)."""
    finish = finish or (lambda table: table)
    sdir = _sd(sweep_dir)
    run_ids = list(dict.fromkeys(run_ids))
    paths = sdir.metrics_files(run_ids)
    now = {rid: stat_of(p) for rid, p in paths.items()}
    stats = {} if stats is None else stats
    cdir = cache_dir(sdir)
    lock = None
    if cache:
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            # released by the thread that finishes the write (_commit), not always this one
            lock = FileLock(str(cdir / "lock"), timeout=LOCK_TIMEOUT_S, thread_local=False)
            lock.acquire()
        except (OSError, Timeout):
            lock = None
    if lock is None:                   # no cache: convert everything in memory
        table, bad = convert({rid: paths[rid] for rid in run_ids if now[rid]})
        stats.update(converted=sum(1 for r in run_ids if now[r]), cached=0)
        return finish(_select(table, columns)), bad
    handed = False                     # the lock handed to _commit, which releases it
    try:
        manifest = _read_manifest(cdir)
        entries = manifest["runs"]
        stale = [rid for rid in run_ids if now[rid] and (rid not in entries or entries[rid][1:3] != now[rid])]
        changed = False
        for rid in run_ids:
            if not now[rid] and rid in entries:
                del entries[rid]
                changed = True
        held = {}                      # part name -> its Table, for parts written now (not read back)
        written = manifest.setdefault("parts", {})      # part name -> the runs it was written with, in row order
        writers = []
        if stale:
            table, bad = convert({rid: paths[rid] for rid in stale})
            part_of = {}
            for piece in _pieces(table, WRITERS):
                name = _part_name()
                held[name] = piece
                writers.append(_POOL.submit(_write_part, cdir, piece, name))
                written[name] = _runs_in(piece)
                part_of.update(dict.fromkeys(written[name], name))
            for rid in stale:          # a run with no readable line has no part
                entries[rid] = [part_of.get(rid), *now[rid], int(bad.get(rid, 0))]
        parts = {}
        for rid in run_ids:
            e = entries.get(rid)
            if e and e[0]:
                parts.setdefault(e[0], []).append(rid)
        live_parts = {v[0] for v in entries.values() if v[0]}
        if len(live_parts) > COMPACT_PARTS:
            _wait(writers)
            everything = {}
            for rid, e in entries.items():
                if e[0]:
                    everything.setdefault(e[0], []).append(rid)
            merged = _concat([held[n] if n in held else _read_part(cdir, n, set(rids)) for n, rids in everything.items()])
            name = _part_name()
            writers = [_POOL.submit(_write_part, cdir, merged, name)]
            held = {name: merged}
            for rid, e in entries.items():
                if e[0]:
                    e[0] = name
            written[name] = _runs_in(merged)
            changed = True
            parts = {name: [rid for rid in run_ids if entries.get(rid) and entries[rid][0]]}
        # a part holding just the runs asked of it (none converted again since, none left out) needs
        # no filter; when such parts, one after the other, list the runs in the order asked, the
        # rows are in that order already: no per-row work but the read
        whole = {name for name, rids in parts.items() if len(written.get(name) or ()) == len(rids)}
        want = None if columns is None else {"run_id", *columns}
        tables = [_select(held[name] if name in whole else select_runs(held[name], set(rids)), want) if name in held
                  else _read_part(cdir, name, None if name in whole else set(rids), want) for name, rids in parts.items()]
        ordered = all(written.get(name) == rids for name, rids in parts.items()) and _one_after_another(parts, run_ids)
        stats.update(converted=len(stale), cached=len(run_ids) - len(stale))
        try:
            table = _concat(tables)
            result, failed = finish(table if ordered else _replays_order(table, run_ids)), None
        except Exception as e:         # (a metric no run logged, say): the conversion is kept all the same
            result, failed = None, e
        bad = {rid: entries[rid][3] for rid in run_ids if rid in entries and entries[rid][3]}
        commit = functools.partial(_commit, cdir, manifest, writers, changed or bool(stale), lock)
        if writers:                    # new parts still being written: the DataFrame is handed over now
            _COMMITS[:] = [f for f in _COMMITS if not f.done()] + [_COMMITTER.submit(commit)]
        else:
            commit()
        handed = True
        if failed is not None:
            raise failed
        return result, bad
    finally:
        if not handed:
            lock.release()


def _commit(cdir: Path, manifest: dict, writers, changed: bool, lock) -> None:
    """After the new parts are on disk, the manifest that names them; then the lock goes. Never
    raises (it may run in the background): a write that failed (a full disk) is said on stderr,
    and the next read converts those logs again."""
    try:
        _wait(writers)                 # the parts are on disk before the manifest names them
        entries, written = manifest["runs"], manifest.setdefault("parts", {})
        live = {e[0] for e in entries.values() if e[0]}
        if set(written) - live:        # parts no run points at any more: forgotten (the files go below)
            manifest["parts"] = {name: w for name, w in written.items() if name in live}
            changed = True
        if changed:
            atomic.write_bytes(cdir / "manifest.json", json.dumps(manifest).encode())
        _cleanup(cdir, manifest)           # a scandir of a few files: orphans of killed writers go
    except Exception as e:
        print(f"hpcsweep: the curve cache in {cdir} was not updated ({type(e).__name__}: {e}); "
              f"the next read converts these logs again", file=sys.stderr)
    finally:
        lock.release()


def settle() -> None:
    """Wait for the cache writes load() left running in the background (the new parts, then the
    manifest): the DataFrame is returned as soon as it is made. A process waits for them before it
    exits; a next load() waits for them through the lock."""
    while _COMMITS:
        _COMMITS.pop(0).result()


def _one_after_another(parts: dict, run_ids) -> bool:
    """True when the parts' run lists (each in the order of `run_ids`) follow one another in it:
    the last run of one comes before the first of the next."""
    rank = {rid: i for i, rid in enumerate(run_ids)}
    bounds = [(rank[rids[0]], rank[rids[-1]]) for rids in parts.values() if rids]
    return all(a[1] < b[0] for a, b in zip(bounds, bounds[1:]))


def _pieces(table: pa.Table, n: int) -> list:
    """`table` cut into up to n tables at run boundaries (a run's rows are together), for parallel writes."""
    if table.num_rows < (1 << 20) or n < 2:
        return [table] if table.num_rows else []
    idx = table.column("run_id").combine_chunks().indices.to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(idx[1:] != idx[:-1]) + 1               # where one run's rows end
    if len(bounds) == 0:
        return [table]
    cuts = sorted({0, table.num_rows, *(int(bounds[np.abs(bounds - table.num_rows * k // n).argmin()])
                                        for k in range(1, n))})
    return [table.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]


def _runs_in(table: pa.Table) -> list:
    """The run ids that have rows in `table`."""
    out = []
    for chunk in table.column("run_id").chunks:
        out += chunk.dictionary.filter(pa.array(_used(chunk)[1])).to_pylist()
    return list(dict.fromkeys(out))


def _wait(futures):
    """Every one done; the first error (a full disk...) raised here, in the caller's thread."""
    for f in futures:
        f.result()


def _ranks(table, run_ids):
    """(table with one run_id dictionary for every chunk, each dictionary entry's position in
    `run_ids` (len(run_ids) for one not there), each chunk's indices): a run's rank looked up once."""
    table = table.unify_dictionaries()
    chunks = table.column("run_id").chunks
    if not chunks:
        return table, np.zeros(0, dtype=np.int64), []
    rank = pc.index_in(chunks[0].dictionary, value_set=pa.array(run_ids, pa.string()))
    rank = pc.fill_null(rank, len(run_ids)).to_numpy(zero_copy_only=False).astype(np.int64)
    return table, rank, [c.indices.to_numpy(zero_copy_only=False) for c in chunks]


def _replays_order(table, run_ids):
    """Rows ordered by run as `run_ids` lists them (each part is already cut of replays)."""
    if table.num_rows == 0:
        return table
    table, rank, indices = _ranks(table, run_ids)
    # in order already (the common case: the dictionary in run order, indices not going back)? then
    # no row needs its rank looked up
    if np.all(rank[1:] >= rank[:-1]) and all(np.all(i[1:] >= i[:-1]) for i in indices if len(i)) and \
            all(a[-1] <= b[0] for a, b in zip((i for i in indices if len(i)), [i for i in indices if len(i)][1:])):
        return table
    run = np.concatenate([rank[i] for i in indices])
    if np.any(run[1:] < run[:-1]):
        table = _in_order(table, run)
    return table


def _select(table, columns):
    if columns is None:
        return table
    return table.select([c for c in table.column_names if c == "run_id" or c in columns])


BACKENDS = ("numpy", "pyarrow")


def check_backend(dtype_backend) -> None:
    if dtype_backend not in BACKENDS:
        raise ValueError(f"dtype_backend: expected one of {', '.join(BACKENDS)}, got {dtype_backend!r}")


def frame(table: pa.Table, dtype_backend="numpy"):
    """The Table as a pandas DataFrame: run_id, step, time, then the metrics, in run order.

    run_id is categorical (as pandas' read_parquet gives a dictionary column: a few thousand
    runs' names once, not one string per line; 10M rows of strings cost a third of a cached
    load): `df.run_id.map(runs.set_index("run_id")[key])` puts a run's config key on its lines
    touching each run once (a merge copies every row: 30x slower).
    dtype_backend="numpy" (pandas' default): metrics float64, a line that did not log a metric
    NaN, NaN / inf as logged. dtype_backend="pyarrow" (as pandas' read_parquet(dtype_backend=...)):
    every other column an Arrow column with no copy (4x faster on 10M rows): a metric not logged
    is <NA>, a logged NaN stays NaN. List-valued metrics are pandas' Arrow lists either way
    (`df[m].iloc[i]` is a list, `df[m].list.flatten()` every value; an object column of numpy
    arrays would cost 3x the whole conversion)."""
    check_backend(dtype_backend)
    if dtype_backend == "pyarrow":
        mapper = lambda t: None if pa.types.is_dictionary(t) else pd.ArrowDtype(t)        # noqa: E731
    else:
        mapper = lambda t: pd.ArrowDtype(t) if is_list_type(t) else None                 # noqa: E731
    first = [c for c in INDEX if c in table.column_names]
    table = table.select(first + [c for c in table.column_names if c not in first])
    return table.to_pandas(split_blocks=True, self_destruct=False, types_mapper=mapper)


def is_list_type(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)
