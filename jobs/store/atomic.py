"""Atomic file writes and line-oriented logs: a reader sees whole files and whole records only.

Every file that another process reads (result.json, config.yaml, plan.json, checkpoints, the
manifest) is written by `write_bytes`: a temp file in the same directory, fsync, os.replace over
the target, then fsync the directory so the rename itself survives a crash.

Append-only logs (journal.jsonl, attempts.jsonl, metrics.jsonl) are written a whole line at a
time by `append_jsonl`. A writer killed mid-line (or a disk that filled up) leaves a torn last
line; the next append first ends it with a newline, so every record starts on a line boundary,
and `read_jsonl` skips what does not parse (counting it) and keeps going.
"""
import json
import math
import os
import tempfile
from pathlib import Path

import yaml
from filelock import FileLock


def write_bytes(path, data: bytes, durable=True) -> None:
    """Write `data` to `path` atomically (same-directory temp file, fsync, os.replace).

    durable=False: still atomic for readers, but nothing is forced to disk, for a file that means
    nothing after a crash of its writer's machine (who holds a lock: that process died with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text: str, durable=True) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def json_safe(obj):
    """`obj` with every NaN / infinity replaced by the string "nan" / "inf" / "-inf" (standard JSON has none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path, obj, durable=True) -> None:
    """Standard JSON, non-finite numbers written as the strings "nan", "inf", "-inf" (see json_safe)."""
    write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n", durable)


def write_yaml(path, obj) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def read_json(path, default=None):
    """The parsed JSON file, or `default` when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def read_jsonl(path, bad=None) -> list:
    """Every JSON object line of a file, in order; torn or foreign lines are skipped.

    `bad`, a list, receives (line number, first 80 characters) of each skipped line.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if isinstance(row, dict):
            out.append(row)
        elif bad is not None:
            bad.append((n, raw[:80].decode("utf-8", "replace")))
    return out


def append_jsonl(path, obj, lock=True) -> None:
    """Append one JSON line, starting on a line boundary; under the file's lock unless lock=False.

    One write of the whole line (a short write is finished), then fsync: a killed writer leaves
    whole lines or a torn last one, which the next append closes off and readers skip.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
    guard = FileLock(str(path) + ".lock") if lock else _NoLock()
    with guard:
        with open(path, "ab+", buffering=0) as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":          # a torn last line: end it so this record stands alone
                    line = b"\n" + line
            written = f.write(line)
            while written < len(line):
                written += f.write(line[written:])
            os.fsync(f.fileno())


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
