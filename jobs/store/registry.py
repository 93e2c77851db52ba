"""The checkpoint registry: checkpoints_manifest.yaml at the repository root, named checkpoints that
any later sweep can start from (`from_manifest: NAME` in a stage), whoever trained them and when.

    register("adm_60k", {...})   # main.py export does this
    read()                       # name -> entry

An entry: {sweep, sweep_dir, stage, run_id, label, task, varied, run_dir, step, path, bytes, sha256,
exported}. The file is rewritten atomically under a lock, so exports from several shells at once lose
nothing. $HPCSWEEP_REGISTRY points elsewhere (another lab's file, or a test's).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from filelock import FileLock

import jobs.store.atomic as atomic
from jobs.store.sweepdir import absolute

REPO = Path(__file__).resolve().parents[2]
FILE_NAME = "checkpoints_manifest.yaml"


class RegistryError(Exception):
    pass


def path() -> Path:
    """The registry file, absolute (a relative $HPCSWEEP_REGISTRY is relative to where the command runs)."""
    return absolute(os.environ.get("HPCSWEEP_REGISTRY") or REPO / FILE_NAME)


def read(where=None) -> dict:
    """name -> entry ({} when there is no registry yet)."""
    where = Path(where or path())
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
        entries = read(where)
        if name in entries and not replace:
            old = entries[name]
            raise RegistryError(f"{where}: {name!r} is already registered ({old.get('sweep')} {old.get('label') or old.get('run_id')}, "
                                f"step {old.get('step')}); pick another name or pass --replace")
        entries[name] = entry
        atomic.write_text(where, "# named checkpoints: `python main.py export`; a stage uses one with `from_manifest: NAME`\n"
                          + yaml.safe_dump({"checkpoints": entries}, sort_keys=True, default_flow_style=False))
    return where
