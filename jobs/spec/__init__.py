"""The spec language: read a YAML sweep spec, check it, expand it into runs; typed settings.

    from jobs.spec import load_sweep, SpecError
    sweep = load_sweep("sweeps/depth_ladder.yaml")      # sweep.runs[i].run_id / .label / .config

Imports nothing else of the repository (and neither torch nor pandas): `plan` stays fast.
"""
from jobs.spec.errors import SpecError, did_you_mean
from jobs.spec.grammar import DEFAULT_MAX_RUNS, Run, Sweep, format_value, load_sweep, task_schema
from jobs.spec.selection import matches, select
from jobs.spec.settings import Checkpoint, ClusterProfile, Logging, Resources

__all__ = ["SpecError", "did_you_mean", "DEFAULT_MAX_RUNS", "Run", "Sweep", "format_value", "load_sweep",
           "task_schema", "matches", "select", "Checkpoint", "ClusterProfile", "Logging", "Resources"]
