"""The checkpoint store of one run, and the sweep's checkpoint manifest.

A run's checkpoints live in `runs/<run_id>/checkpoints/` as `step_<8-digit step>.pt` (torch.save of a
payload) beside `step_<...>.pt.sha256` (the file's sha256, in `sha256sum` format, so
`cd checkpoints && sha256sum -c *.sha256` checks them by hand).

- save() writes the .pt atomically, then its sidecar, then applies retention. A writer killed at
  any instant leaves the previous checkpoint loadable: the new .pt only counts once its sidecar
  exists and matches, and an old one is deleted only after a newer one is complete.
- load_latest() returns the newest checkpoint whose sha256 verifies. Anything corrupt, truncated or
  without a sidecar is skipped with a warning that names the file; loading is
  torch.load(weights_only=True), so a checkpoint can never run code.
- record() appends an entry to `checkpoints_manifest.yaml` under a file lock with an atomic
  rewrite, so many runs writing at once lose no entry and a killed writer leaves it readable.
"""
from __future__ import annotations

import hashlib
import io
import contextlib
import fcntl
import json
import operator
import os
import pickle
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from filelock import FileLock

from jobs.store import atomic

CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")
SIDECAR_SUFFIX = ".sha256"
PINS = "pinned.json"      # in checkpoints/: step -> names it is registered under (retention keeps them)
# atomic.write_bytes names its temp files ".<target name>.<random>.tmp"
TEMP_RE = re.compile(r"^\.step_\d{8,}\.pt(\.sha256)?\..*\.tmp$")

# libyaml when present: the manifest is re-read and rewritten on every entry
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class CheckpointWarning(UserWarning):
    """A checkpoint (or the manifest) was found damaged and skipped; training goes on."""


def ckpt_path(ckpt_dir, step: int) -> Path:
    """The path of the checkpoint of `step` in `ckpt_dir`."""
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def sidecar_of(path) -> Path:
    """The sha256 sidecar of a checkpoint file."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def list_steps(ckpt_dir) -> list[int]:
    """The steps that have a checkpoint file in `ckpt_dir` (valid or not), ascending. A directory of
    such a name (made by hand, or by a task) is none: retention could not delete it."""
    try:
        with os.scandir(ckpt_dir) as entries:
            names = [e.name for e in entries if e.is_file()]
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(CKPT_RE.match, names) if m)


# --- writing -----------------------------------------------------------------------------------

def save(ckpt_dir, step: int, payload, *, manifest=None, run_id=None, keep_last: int = 2,
         keep_every: int | None = None, verify: bool = False) -> Path:
    """Write `payload` as the checkpoint of `step` (atomic, with sha256 sidecar); its path.

    Then retention: keep the newest `keep_last` checkpoints up to `step`, plus every one whose
    step is a multiple of `keep_every`; delete the others, and any checkpoint *newer* than
    `step` (it belongs to an abandoned timeline: a corrupt one skipped on restore, or a run that
    started over). `verify=True` first checks that torch.load(weights_only=True) can read the
    payload back, so a task storing, say, a numpy array fails at its first save, not on resume.
    When `step` already has a valid checkpoint, that one is kept and `payload` is not written.
    Each write and deletion goes into `manifest` (a path) when given.
    """
    step = _check_step(step)
    if keep_last is None or int(keep_last) < 1:
        raise ValueError(f"checkpoint keep_last must be >= 1 (the newest checkpoint is where a run resumes), "
                         f"got {keep_last!r}")
    if keep_every is not None and int(keep_every) < 1:
        raise ValueError(f"checkpoint keep_every must be a positive number of steps or null, got {keep_every!r}")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(ckpt_dir)
    path = ckpt_path(ckpt_dir, step)
    # A valid checkpoint is never overwritten: the .pt and its sidecar cannot be replaced in one
    # atomic step, and a kill between the two would leave this step invalid (with keep_last=1, no
    # checkpoint at all). A valid one at this step is the one the run resumed from, so it holds
    # this very state (a stop request right after resuming saves the same step again).
    if _verified_digest(path) is None:
        data = to_bytes(payload)
        if verify:
            _check_loadable(data, path)
        digest = hashlib.sha256(data).hexdigest()
        atomic.write_bytes(path, data)
        atomic.write_text(sidecar_of(path), f"{digest}  {path.name}\n")
        if manifest is not None:
            _record_quietly(manifest, _entry("written", run_id, step, path, manifest, len(data), digest))
    with _pins_lock(ckpt_dir):           # export pins under it: nothing it pins is deleted meanwhile
        keep = pinned(ckpt_dir)
        for old in doomed(list_steps(ckpt_dir), step, int(keep_last), keep_every):
            if old not in keep:
                _delete(ckpt_dir, old, manifest, run_id)
    return path


def pin(ckpt_dir, step: int, name: str) -> str | None:
    """Keep the checkpoint of `step` from retention for good (`main.py export` registers it by `name`,
    maybe while the run still trains); its sha256, or None when it is not there and valid."""
    ckpt_dir = Path(ckpt_dir)
    with _pins_lock(ckpt_dir):
        digest = _verified_digest(ckpt_path(ckpt_dir, step))
        if digest is not None:
            pins = _read_pins(ckpt_dir)
            pins[str(step)] = sorted(set(pins.get(str(step), [])) | {name})
            atomic.write_text(ckpt_dir / PINS, json.dumps(pins, indent=1, sort_keys=True) + "\n")
        return digest


@contextlib.contextmanager
def _pins_lock(ckpt_dir: Path):
    """An exclusive lock on the checkpoints folder itself (flock of its own inode: no lock file beside
    the checkpoints); where the file system refuses one, nothing is held."""
    try:
        fd = os.open(ckpt_dir, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def pinned(ckpt_dir) -> set[int]:
    """The steps `pin` keeps."""
    return {int(s) for s in _read_pins(Path(ckpt_dir)) if s.isdigit()}


def _read_pins(ckpt_dir: Path) -> dict:
    pins = atomic.read_json(ckpt_dir / PINS, {})
    return pins if isinstance(pins, dict) else {}


def to_bytes(payload) -> bytes:
    """`payload` serialised by torch.save."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def doomed(steps, current: int, keep_last: int, keep_every: int | None = None) -> list[int]:
    """The steps retention deletes once `current` is written (pure: the rule, no files)."""
    past = sorted(s for s in steps if s <= current)
    keep = set(past[-keep_last:]) | {current}
    if keep_every:
        keep |= {s for s in past if s % int(keep_every) == 0}
    return [s for s in sorted(steps) if s not in keep]


def _check_step(step) -> int:
    """`step` as an int (numpy and 0-d integer tensors too); bools, floats and negatives refused."""
    try:
        value = operator.index(step)
    except TypeError:
        value = None
    if value is None or isinstance(step, bool):
        raise TypeError(f"checkpoint step must be an int, got {type(step).__name__} {step!r}")
    if value < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {value}")
    return value


def _check_loadable(data: bytes, path: Path) -> None:
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise TypeError(
            f"{path.name}: the state passed to ctx.save holds an object that a safe load "
            f"(torch.load weights_only=True) refuses, so the run could not resume from it. Store only "
            f"tensors, dicts, lists, tuples, numbers, strings and None (e.g. torch.from_numpy(a) or "
            f"a.tolist() for a numpy array). torch says: {first}") from None


def _delete(ckpt_dir: Path, step: int, manifest, run_id) -> None:
    """Delete one checkpoint (.pt first, then its sidecar) and record it."""
    path = ckpt_path(ckpt_dir, step)
    digest = _read_sidecar(path)
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        size = None
    # a kill between the two unlinks leaves an orphan sidecar: harmless, cleaned by the next save
    sidecar_of(path).unlink(missing_ok=True)
    if manifest is not None and size is not None:
        _record_quietly(manifest, _entry("deleted", run_id, step, path, manifest, size, digest))


def _clean_leftovers(ckpt_dir: Path) -> None:
    """Remove temp files of a killed writer and sidecars whose checkpoint is gone.

    Only save() does this, never load_latest(): only the run's own writer (one at a time, the
    runner holds the run's lock) may remove a temp file; a reader such as `status` must not pull
    one from under a live writer.
    """
    for p in ckpt_dir.iterdir():
        orphan = p.name.endswith(".pt" + SIDECAR_SUFFIX) and not p.with_name(p.name[:-len(SIDECAR_SUFFIX)]).exists()
        if TEMP_RE.match(p.name) or orphan:
            p.unlink(missing_ok=True)


# --- reading -----------------------------------------------------------------------------------

_DAMAGED = object()   # what _load_verified returns for a file it skipped (None is a valid payload)


def load_latest(ckpt_dir):
    """(step, payload) of the newest checkpoint whose sha256 verifies, or None when there is none.

    Damaged ones (bytes flipped, truncated, no sidecar, unreadable) are skipped with a
    CheckpointWarning naming the file. Temp files of a killed writer are ignored.
    """
    for step in reversed(list_steps(ckpt_dir)):
        payload = _load_verified(ckpt_path(ckpt_dir, step))
        if payload is not _DAMAGED:
            return step, payload
    return None


def load_step(ckpt_dir, step: int):
    """The payload of the checkpoint of `step`, verified; raises FileNotFoundError / ValueError saying why not."""
    path = ckpt_path(ckpt_dir, step)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint at step {step} (kept: {list_steps(ckpt_dir) or 'none'})")
    payload = _load_verified(path)
    if payload is _DAMAGED:
        raise ValueError(f"{path}: damaged (see the warning above)")
    return payload


def newest(ckpt_dir) -> dict | None:
    """{step, sha256} of the newest checkpoint whose sidecar states a digest (read, not re-hashed: what a
    result names as the run's final state; whoever loads it verifies), or None."""
    for step in reversed(list_steps(ckpt_dir)):
        digest = _read_sidecar(ckpt_path(ckpt_dir, step))
        if digest is not None:
            return {"step": step, "sha256": digest}
    return None


def verified_digest(path) -> str | None:
    """The sha256 of a checkpoint file when its sidecar matches it, else None."""
    return _verified_digest(Path(path))


def _load_verified(path):
    """The payload of one checkpoint file, or _DAMAGED (after a warning) when it does not verify."""
    path = Path(path)
    expected = _read_sidecar(path)
    if expected is None and sidecar_of(path).exists():
        return _skip(path, f"malformed sha256 sidecar {sidecar_of(path).name} (expected 64 hex digits, then "
                           "the file's name, as sha256sum writes)")
    if expected is None:
        return _skip(path, f"no sha256 sidecar {sidecar_of(path).name} (its writer was killed before finishing)")
    try:
        data = path.read_bytes()      # hash and load the same bytes: the file may be replaced meanwhile
    except OSError as e:
        return _skip(path, f"unreadable ({e})")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return _skip(path, f"sha256 mismatch ({len(data)} bytes, sha256 {actual[:12]}..., sidecar says "
                           f"{expected[:12]}...): corrupt or truncated")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # verified bytes that do not load: a torch version change, or unsafe content
        return _skip(path, f"sha256 verifies but torch.load(weights_only=True) fails: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")


def _verified_digest(path: Path) -> str | None:
    """The sha256 of a checkpoint file when its sidecar matches it, else None."""
    expected = _read_sidecar(path)
    try:
        ok = expected is not None and hashlib.sha256(path.read_bytes()).hexdigest() == expected
    except OSError:
        return None
    return expected if ok else None


def _read_sidecar(path: Path) -> str | None:
    """The hex digest a checkpoint's sidecar states, or None when missing or malformed."""
    try:
        text = sidecar_of(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    digest = text.split()[0].lower() if text.split() else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _skip(path: Path, why: str):
    warnings.warn(f"skipping checkpoint {path}: {why}", CheckpointWarning, stacklevel=4)
    return _DAMAGED


# --- the manifest ------------------------------------------------------------------------------

def now_iso() -> str:
    """The current time as ISO-8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record(manifest_path, entry: dict) -> None:
    """Append `entry` to the manifest YAML ({entries: [...]}); `time` is filled in when missing.

    Read, append, write a temp file, os.replace, all under `<manifest>.lock`: concurrent writers
    (any number of processes) serialise and lose nothing, and a writer killed at any instant
    leaves the old or the new file, both complete.
    """
    manifest_path = Path(manifest_path)
    entry = dict(entry)
    entry.setdefault("time", now_iso())
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(manifest_path) + ".lock"):
        entries = _read_entries(manifest_path, repair=True)
        entries.append(entry)
        text = yaml.dump({"entries": entries}, Dumper=_Dumper, sort_keys=False,
                         default_flow_style=None, width=4096)   # one flow-style line per entry
        atomic.write_text(manifest_path, text)


def read_manifest(manifest_path) -> list[dict]:
    """The manifest's entries, oldest first ([] when there is no manifest yet)."""
    return _read_entries(Path(manifest_path), repair=False)


def _read_entries(path: Path, repair: bool) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        doc = e
    if doc is None:
        return []
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        return doc["entries"]
    # atomic rewrites cannot produce this; a hand edit or a foreign file can. Keep it aside, go on.
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
    if repair:
        path.replace(aside)
    warnings.warn(f"checkpoint manifest {path} is not a YAML mapping {{entries: [...]}} "
                  f"({doc if isinstance(doc, Exception) else type(doc).__name__}); "
                  + (f"moved it to {aside.name} and started a fresh one" if repair else "reading it as empty"),
                  CheckpointWarning, stacklevel=3)
    return []


def _entry(event, run_id, step, path: Path, manifest, size, digest) -> dict:
    return {"event": event, "run": run_id or "", "step": step, "path": _relative(path, Path(manifest).parent),
            "bytes": size, "sha256": digest, "time": now_iso()}


def _relative(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies under it, else absolute."""
    path, base = Path(path).absolute(), Path(base).absolute()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _record_quietly(manifest, entry) -> None:
    """record(), but a manifest that cannot be written warns instead of stopping training:
    the checkpoint itself is already durable, the manifest is bookkeeping."""
    try:
        record(manifest, entry)
    except Exception as e:
        warnings.warn(f"checkpoint manifest {manifest} not updated ({type(e).__name__}: {e}); "
                      f"lost entry: {entry}", CheckpointWarning, stacklevel=3)
