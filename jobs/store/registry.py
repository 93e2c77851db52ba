"""The checkpoint registry: checkpoints_manifest.yaml at the top of a project (the spec's git
checkout, or its folder), named checkpoints that any later sweep of the project can start from
(`from_manifest: NAME` in a stage), whoever trained them and when.

    register("adm_60k", {...})   # main.py export does this
    read()                       # name -> entry

An entry: {sweep, sweep_dir, stage, run_id, label, task, varied, run_dir, step, path, bytes, sha256,
exported}. The file is rewritten atomically under a lock, so exports from several shells at once lose
nothing. $HPCSWEEP_REGISTRY points elsewhere (another lab's file, or a test's).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from filelock import FileLock

import jobs.store.atomic as atomic
from jobs.store.sweepdir import absolute

REPO = Path(__file__).resolve().parents[2]
FILE_NAME = "checkpoints_manifest.yaml"


class RegistryError(Exception):
    pass


def path(project=None) -> Path:
    """The registry file, absolute: $HPCSWEEP_REGISTRY (relative to where the command runs), else
    checkpoints_manifest.yaml at the top of `project` (a folder; default: hpcsweep's own repository,
    whose studies keep theirs there)."""
    return absolute(os.environ.get("HPCSWEEP_REGISTRY") or Path(project or REPO) / FILE_NAME)


# what a stage that starts from a named checkpoint needs of its entry, to find it and check its sha256
NEEDED = {"run_id": str, "run_dir": str, "step": int, "path": str, "sha256": str}


def problem(entry) -> str:
    """What makes a registry entry unusable ("" : nothing)."""
    if not isinstance(entry, dict):
        return f"expected a mapping ({', '.join(NEEDED)}, ...), got {type(entry).__name__} {str(entry)[:60]!r}"
    for key, kind in NEEDED.items():
        value = entry.get(key)
        if value is None:
            return f"no {key}"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key}: expected {'an integer' if kind is int else 'a string'}, got {value!r}"
    if entry["step"] < 0:
        return f"step: expected a step >= 0, got {entry['step']}"
    if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        return f"sha256: expected 64 hex digits, got {entry['sha256'][:70]!r}"
    return ""


def read(where=None) -> dict:
    """name -> entry ({} when there is no registry yet). An entry that cannot be used (no sha256, a
    step that is not one, not a mapping: a hand edit) is, in place of the entry, the text saying
    so, naming the file and the entry: an error only for a spec that asks for that name."""
    where = Path(where or path())
    entries = _read(where)
    for name, entry in entries.items():
        why = problem(entry)
        if why:
            entries[name] = (f"{where}: checkpoint {name!r}: {why}; register it again with "
                             f"`python main.py export SPEC --name {name} --replace`")
    return entries


def _read(where: Path) -> dict:
    """name -> entry as the file holds them."""
    try:
        doc = yaml.safe_load(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise RegistryError(f"{where}: cannot read the checkpoint registry ({e})")
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoints", {}), dict):
        raise RegistryError(f"{where}: expected a mapping {{checkpoints: {{name: entry}}}}")
    return dict(doc.get("checkpoints") or {})


def register(name: str, entry: dict, replace: bool = False, where=None) -> Path:
    """Add `name` -> `entry`; refuse a name already taken unless `replace`. The registry's path."""
    where = Path(where or path())
    with FileLock(str(where) + ".lock"):
        entries = _read(where)
        if name in entries and not replace:
            old = entries[name] if isinstance(entries[name], dict) else {}
            raise RegistryError(f"{where}: {name!r} is already registered ({old.get('sweep')} {old.get('label') or old.get('run_id')}, "
                                f"step {old.get('step')}); pick another name or pass --replace")
        entries[name] = entry
        atomic.write_text(where, "# named checkpoints: `python main.py export`; a stage uses one with `from_manifest: NAME`\n"
                          + yaml.safe_dump({"checkpoints": entries}, sort_keys=True, default_flow_style=False))
    return where
